"""Accuracy benchmark: does the image add information that the spots alone do not have?

One command reruns the suite on ``../shared/data`` (or on samples given by path, same layouts):

    python benchmarks/bench_accuracy.py                 # all parts, 3 seeds
    python benchmarks/bench_accuracy.py --quick         # 2 seeds, no DLPFC dense map
    python benchmarks/bench_accuracy.py --parts recovery --sample path/to/outs --sample sec_dir

Parts
-----
recovery   50 % of the spots hidden (seeded permutation), scored on the hidden spots only with
           the project's one score (metrics.spot_scores: mean per-gene PCC over every gene that
           varies among the hidden spots, a constant prediction counting as 0), mean ± sd over
           seeds. Rows per sample: inverse-distance kNN k=6 and k=12, ridge on the image
           statistics (the default encoder's features), ridge on image + neighbour expression,
           the shipped model (per-gene blend of network, ridge and kNN) and ablations (blend
           without the network, the network alone, image only, neighbours only, ReLU output).
           'x best kNN' / '- best kNN': mean ± sd over seeds of the paired ratio / difference to
           the better kNN of the same split; top-100 PCC (most expressed genes), genes predicted
           as a constant, share of genes better than the best kNN. ARI of k-means clusters
           against the layer annotation when the sample folder has a ``*_truth.txt``.
           ``--levers``: the levers of issue 21 item 4 instead (count losses, gene programs,
           denoised targets, neighbour images; LEVER_VARIANTS), each with the blend and with the
           network alone.
transfer   every her2st section predicted from its image alone after training on the others
           (tasks.transfer); baselines: ridge on the same features, mean training expression (MSE).
synthetic  the embedded sample with truth: enhance at 16 um with a 3-model ensemble; dense map vs
           truth per gene class (PCC, SSIM) next to interpolated spot values; map/spot
           consistency; spread-vs-error correlation; structure of the noise-gene maps.
maps       DLPFC enhance at 16 um stride: consistency of the map with the measured spots.
references (``--with-references``) her2st recovery with the other sections of the study as
           references (``tl.recovery(reference=...)``): C5 with C2-C4, each of C2-C4 with the
           other two (C5 is never a reference of C2-C4); the model alone and with references on
           the same split, genes and spots, next to the better kNN and the noise ceiling.

Wall time and peak resident memory (whole process) are recorded for every run. her2st C5 was kept
out of every tuning decision: it is reported in its own rows ('untouched').
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    SHARED_DATA,
    annotation_file,
    limit_threads,
    load_sample,
    mean_sd,
    measure,
    print_table,
    shared_samples,
)

DEFAULT_SEEDS = (1234, 1, 2)
UNTOUCHED = {"her2st/C5"}  # never used for tuning


#: TrainConfig overrides for every model run (``--max-epochs`` for smoke tests); empty = defaults
TRAIN_OVERRIDES: dict = {}
#: RunConfig overrides for every run (``--encoder``); empty = defaults
RUN_OVERRIDES: dict = {}


def _config(cache_dir: str, **kw):
    from napari_trihrge.tl import RunConfig

    train = {**TRAIN_OVERRIDES, **kw.pop("train", {})}
    return RunConfig(cache_dir=cache_dir, train=train, **{**RUN_OVERRIDES, **kw})


#: recovery rows that train a model: label -> RunConfig overrides (default = the shipped model)
MODEL_VARIANTS: dict[str, dict] = {
    "model: blend of network + ridge + kNN (default)": {},
    "ablation: blend without the network (ridge + kNN)": {"stacking": ("knn6", "knn12", "ridge")},
    "ablation: network alone": {"stacking": ()},
    "ablation: network alone, image only": {"stacking": (), "neighbour_input": False},
    "ablation: network alone, neighbours only": {"stacking": (), "image_input": False},
}
#: ``--sweep``: the earlier choices re-decided on the fair score (issue 9), with the blend on and
#: off: neighbour-skip initialisation, the epoch count, k of the neighbour input
SWEEP_VARIANTS: dict[str, dict] = {
    "blend (default)": {},
    "blend, no neighbour skip": {"neighbour_skip": False},
    "blend, neighbour input k=6": {"n_neighbours": 6},
    "blend, 10 epochs": {"train": {"max_epochs": 10}},
    "blend, 40 epochs": {"train": {"max_epochs": 40}},
    "network alone": {"stacking": ()},
    "network alone, no neighbour skip": {"stacking": (), "neighbour_skip": False},
    "network alone, neighbour input k=6": {"stacking": (), "n_neighbours": 6},
    "network alone, 10 epochs": {"stacking": (), "train": {"max_epochs": 10}},
    "network alone, 40 epochs": {"stacking": (), "train": {"max_epochs": 40}},
}
#: ``--levers``: the levers of issue 21 item 4 (RunConfig fields), each with the blend (the
#: default model) and with the network alone, next to the defaults of the same mode
LEVER_VARIANTS: dict[str, dict] = {
    "blend (default)": {},
    "blend, Poisson loss": {"loss": "poisson"},
    "blend, negative binomial loss": {"loss": "negative_binomial"},
    "blend, 32 gene programs": {"output_rank": 32},
    "blend, 64 gene programs": {"output_rank": 64},
    "blend, targets denoised w=0.25": {"target_smoothing": 0.25},
    "blend, targets denoised w=0.5": {"target_smoothing": 0.5},
    "network alone": {"stacking": ()},
    "network alone, Poisson loss": {"stacking": (), "loss": "poisson"},
    "network alone, negative binomial loss": {"stacking": (), "loss": "negative_binomial"},
    "network alone, 32 gene programs": {"stacking": (), "output_rank": 32},
    "network alone, 64 gene programs": {"stacking": (), "output_rank": 64},
    "network alone, targets denoised w=0.25": {"stacking": (), "target_smoothing": 0.25},
    "network alone, targets denoised w=0.5": {"stacking": (), "target_smoothing": 0.5},
    "blend, neighbour images k=6": {"neighbour_images": 6},
    "network alone, neighbour images k=6": {"stacking": (), "neighbour_images": 6},
    "blend, neighbour images k=6, all windows": {"neighbour_images": 6,
                                                  "neighbour_images_windows": "all"},
    "network alone, neighbour images k=6, all windows": {
        "stacking": (), "neighbour_images": 6, "neighbour_images_windows": "all"},
}
#: with ``--with-relu``: the network alone with the earlier ReLU output (dead outputs)
RELU_VARIANT = {"ablation: network alone, ReLU output (before)": {
    "stacking": (), "model": {"output_activation": "relu"}}}


def _scores(pred: np.ndarray, true: np.ndarray, genes: list[str], knn: dict) -> dict:
    """The fair score of ``pred`` next to the better kNN on the same genes and spots."""
    from napari_trihrge.metrics import best_baseline, spot_scores

    summary, table = spot_scores(pred, true, genes, baselines=knn)
    return {**summary, **best_baseline(summary, table, list(knn), "knn")}


def recovery_suite(name: str, path, seeds, cache_dir: str, variants: dict | None = None,
                   linear: bool = True) -> tuple[list[dict], dict]:
    """Rows (one per method) for one sample; raw per-seed numbers in the second value.

    Every row is scored with ``metrics.spot_scores`` on the same hidden spots and genes as the
    better inverse-distance kNN (k=6/12) of the same split."""
    from napari_trihrge.metrics import kmeans_ari, noise_ceiling
    from napari_trihrge.model.stacking import RidgeHead
    from napari_trihrge.neighbours import idw_interpolate
    from napari_trihrge.pp import prepare_expression
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl import BASELINE_KS, recovery, sample_geometry
    from napari_trihrge.tl._shared import _encoder_and_image, _features, _holdout_split

    adata = load_sample(path)
    annotation = annotation_file(path) if str(path) != "synthetic" else "domain"
    variants = MODEL_VARIANTS if variants is None else variants
    raw: dict[str, dict[str, list]] = {}
    cfg0 = _config(cache_dir)
    expr = prepare_expression(adata, n_top_genes=cfg0.n_top_genes)
    genes = list(expr.var_names)
    rc_um, _, _ = sample_geometry(expr)
    y = np.asarray(expr.X, dtype=np.float32)
    image, encoder = _encoder_and_image(adata, cfg0)
    feats = _features(image, encoder, rc_um, cfg0.windows_um, cfg0, Progress())
    labels = None
    if annotation is not None:
        from napari_trihrge.tl._shared import _annotation_labels

        labels = _annotation_labels(expr, str(annotation)).to_numpy()

    split_ceiling: dict[str, float] = {}  # the noise ceiling of the current split's hidden spots

    def record(label: str, s: dict, m=None, ari=None, epochs=None) -> None:
        r = raw.setdefault(label, {})
        ratio = s["pcc_mean"] / s["baseline_knn_pcc_mean"]
        if split_ceiling:
            r.setdefault("ceiling", []).append(split_ceiling["pcc"])
            r.setdefault("of_ceiling", []).append(s["pcc_mean"] / split_ceiling["pcc"])
        for key, v in (("pcc", s["pcc_mean"]), ("ratio", ratio),
                       ("diff", s["pcc_mean"] - s["baseline_knn_pcc_mean"]),
                       ("top100", s["pcc_top100"]), ("constant", s["n_genes_constant_prediction"]),
                       ("better", s["fraction_genes_better_than_baseline"]), ("mse", s["mse"]),
                       ("best_knn", s["baseline_knn_pcc_mean"]), ("ari", ari), ("epochs", epochs),
                       ("wall_s", m.wall_s if m else None),
                       ("peak_mb", m.peak_rss_mb if m else None)):
            if v is not None:
                r.setdefault(key, []).append(float(v))

    for seed in seeds:
        hidden, visible = _holdout_split(len(y), 0.5, seed)
        yv, yh = y[visible], y[hidden]
        split_ceiling["pcc"] = noise_ceiling(adata, genes, spots=expr.obs_names[hidden])[0][
            "noise_ceiling_pcc_mean"]
        knn = {f"knn{k}": idw_interpolate(rc_um[visible], yv, rc_um[hidden], k)
               for k in BASELINE_KS}
        for k in BASELINE_KS:
            ari = kmeans_ari(knn[f"knn{k}"], labels[hidden], seed=0) if labels is not None else None
            record(f"kNN baseline k={k}", _scores(knn[f"knn{k}"], yh, genes, knn), ari=ari)
        nb_v = idw_interpolate(rc_um[visible], yv, rc_um[visible], cfg0.n_neighbours,
                               exclude_self=True)
        nb_h = idw_interpolate(rc_um[visible], yv, rc_um[hidden], cfg0.n_neighbours)
        for label, use_nb in ((("ridge on image statistics", False),
                               ("ridge on image statistics + neighbour expression", True))
                              if linear else ()):
            with measure() as m:
                head = RidgeHead.fit(feats[visible], nb_v if use_nb else None, yv)
                pred = head.predict(feats[hidden], nb_h if use_nb else None)
            record(label, _scores(pred, yh, genes, knn), m)
        for label, kw in variants.items():
            with measure() as m:
                res = recovery(adata, holdout_fraction=0.5, seed=seed, annotation=annotation,
                               config=_config(cache_dir, **kw))
            record(label, res.metrics, m, ari=res.metrics.get("ari"),
                   epochs=sum(len(h) for h in res.history))
            print(f"  {name} seed {seed} {label}: PCC {res.metrics['pcc_mean']:.4f} vs kNN "
                  f"{res.metrics['baseline_knn_pcc_mean']:.4f} "
                  f"({res.metrics['n_genes_constant_prediction']} constant; {m.wall_s:.0f} s)",
                  flush=True)
        if labels is not None:
            raw.setdefault("measured expression", {}).setdefault("ari", []).append(
                kmeans_ari(yh, labels[hidden], seed=0))
    return recovery_rows(name, raw), raw


def recovery_rows(name: str, raw: dict, paired_to: str | None = None) -> list[dict]:
    """Table rows of one sample from the per-seed numbers of :func:`recovery_suite`;
    ``paired_to``: a row label whose per-seed PCC every row with as many seeds is compared to
    (mean ± sd over seeds of the paired difference, seeds in the same order)."""
    rows = []
    ref = raw.get(paired_to, {}).get("pcc") if paired_to else None
    for label, r in raw.items():
        row = {"sample": name + (" (untouched)" if name in UNTOUCHED else ""), "method": label}
        if r.get("pcc"):
            row["PCC (hidden spots)"] = mean_sd(r["pcc"])
            row["x best kNN"] = mean_sd(r["ratio"], 2)
            row["- best kNN"] = mean_sd(r["diff"])
            row["top-100 PCC"] = mean_sd(r["top100"])
            row["constant genes"] = f"{np.mean(r['constant']):.0f}"
            row["genes > best kNN"] = f"{np.mean(r['better']):.0%}"
            row["MSE"] = f"{np.mean(r['mse']):.3f}"
            if r.get("ceiling"):
                row["noise ceiling"] = mean_sd(r["ceiling"])
                row["of ceiling"] = mean_sd(r["of_ceiling"], 2)
            if ref is not None and len(ref) == len(r["pcc"]) and label != paired_to:
                row[f"- {paired_to}"] = mean_sd(np.subtract(r["pcc"], ref), 4)
        if r.get("ari"):
            row["ARI"] = mean_sd(r["ari"])
        if r.get("wall_s"):
            row["wall s / seed"] = f"{np.mean(r['wall_s']):.1f}"
        rows.append(row)
    return rows


def references_of(name: str, samples: dict[str, Path], untouched_too: bool = False) -> list[str]:
    """Return the reference sections of a her2st section.

    The other her2st sections; C5 is not one for the others (it is held out of every tuning
    decision) unless ``untouched_too`` (an extra row, never used to decide anything).
    """
    return [n for n in samples if n.startswith("her2st/") and n != name
            and (n not in UNTOUCHED or name in UNTOUCHED or untouched_too)]


def references_suite(name: str, samples: dict[str, Path], seeds, cache_dir: str,
                     weight: float | None = None, untouched_too: bool = False,
                     as_model: bool = False) -> dict:
    """Per-seed numbers of recovery of ``name`` alone and with its references.

    ``as_model``: the references are not passed as sections but as one image-only model trained
    on them (``tl.train(..., image_only=True)``, the model folder a user would pass to
    ``--with``), which joins the blend as a candidate.

    Both runs are scored again on the genes of the run with references (the section's genes
    that every reference measures) and the same hidden spots, next to the better kNN of the
    same split on those genes: ``pcc_mean`` and ``baseline_knn_pcc_mean`` are these scores.
    The network and ridge candidates' scores are each run's own (on its own genes).
    """
    from napari_trihrge.neighbours import idw_interpolate
    from napari_trihrge.pp import prepare_expression
    from napari_trihrge.tl import BASELINE_KS, recovery, sample_geometry
    from napari_trihrge.tl._shared import _holdout_split

    adata = load_sample(samples[name])
    names = references_of(name, samples, untouched_too)
    refs = [load_sample(samples[n]) for n in names]
    raw: dict = {"references": names, "weight": weight, "as_model": as_model}
    cfg = _config(cache_dir)
    given: dict = {"reference": refs, "reference_weight": weight}
    if as_model:
        from napari_trihrge.tl import train

        with measure() as m:
            given = {"reference": [train(refs, image_only=True, config=cfg).model]}
        raw["model_train_wall_s"] = m.wall_s
        print(f"  image-only model of {', '.join(names)} trained in {m.wall_s:.0f} s",
              flush=True)
    expr = prepare_expression(adata, n_top_genes=cfg.n_top_genes)
    rc_um, _, _ = sample_geometry(expr)
    for seed in seeds:
        results = {}
        for label, kw in (("alone", {}), ("with references", given)):
            with measure() as m:
                res = recovery(adata, holdout_fraction=0.5, seed=seed, config=_config(cache_dir),
                               **kw)
            results[label] = (res, m.wall_s)
        common = list(results["with references"][0].predictions.var_names)
        y = np.asarray(expr[:, common].X, dtype=np.float32)
        hidden, visible = _holdout_split(len(y), 0.5, seed)
        knn = {f"knn{k}": idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], k)
               for k in BASELINE_KS}
        for label, (res, wall_s) in results.items():
            met = res.metrics
            pos = res.predictions.var_names.get_indexer(common)
            score = _scores(np.asarray(res.predictions.X)[:, pos], y[hidden], common, knn)
            r = raw.setdefault(label, {})
            for key, value in (("pcc_mean", score["pcc_mean"]),
                               ("baseline_knn_pcc_mean", score["baseline_knn_pcc_mean"]),
                               ("pcc_top100", score["pcc_top100"]),
                               ("n_genes", len(common)), ("seed", seed), ("wall_s", wall_s),
                               *((k, met.get(k)) for k in (
                                   "noise_ceiling_pcc_mean", "baseline_network_pcc_mean",
                                   "baseline_ridge_pcc_mean", "blend_weight_network_mean",
                                   "blend_weight_ridge_mean", "baseline_model_pcc_mean",
                                   "blend_weight_model_mean"))):
                if value is not None:
                    r.setdefault(key, []).append(float(value))
            print(f"  {name} seed {seed} {label}: PCC {score['pcc_mean']:.4f} on {len(common)} "
                  f"genes (network {met.get('baseline_network_pcc_mean', float('nan')):.4f}, "
                  f"ridge {met.get('baseline_ridge_pcc_mean', float('nan')):.4f}) vs kNN "
                  f"{score['baseline_knn_pcc_mean']:.4f}, ceiling "
                  f"{met['noise_ceiling_pcc_mean']:.4f}; {wall_s:.0f} s", flush=True)
    return raw


def references_rows(merged: dict[str, dict]) -> list[dict]:
    """Table rows of :func:`references_suite` outputs (per section, mean ± sd over seeds)."""
    rows = []
    for name, raw in merged.items():
        alone, withr = raw.get("alone", {}), raw.get("with references", {})
        n = min(len(alone.get("pcc_mean", [])), len(withr.get("pcc_mean", [])))
        if n == 0:
            continue
        knn = np.asarray(withr["baseline_knn_pcc_mean"][:n])
        ceiling = np.asarray(withr["noise_ceiling_pcc_mean"][:n])
        a, w = np.asarray(alone["pcc_mean"][:n]), np.asarray(withr["pcc_mean"][:n])

        def pair(key: str, alone=alone, withr=withr, n=n) -> str:
            return f"{np.mean(alone[key][:n]):.3f} / {np.mean(withr[key][:n]):.3f}"

        rows.append({
            "section": name + (" (untouched)" if name.split(" ")[0] in UNTOUCHED else ""),
            "references": ("a model of " if raw.get("as_model") else "") + ", ".join(
                r.removeprefix("her2st/") for r in raw["references"]),
            "seeds": n, "better kNN": mean_sd(knn), "model alone": mean_sd(a),
            "model with references": mean_sd(w), "- model alone": mean_sd(w - a, 4),
            "x best kNN alone": mean_sd(a / knn, 2),
            "x best kNN with references": mean_sd(w / knn, 2),
            "network alone / with refs": pair("baseline_network_pcc_mean"),
            "ridge alone / with refs": pair("baseline_ridge_pcc_mean"),
            "the model reference alone": (mean_sd(np.asarray(
                withr["baseline_model_pcc_mean"][:n])) if raw.get("as_model") else ""),
            "ceiling": mean_sd(ceiling), "fraction alone": f"{np.mean(a / ceiling):.0%}",
            "fraction with references": f"{np.mean(w / ceiling):.0%}",
            "wall s alone / with refs": (f"{np.mean(alone['wall_s'][:n]):.0f} / "
                                         f"{np.mean(withr['wall_s'][:n]):.0f}")})
    return rows


def merge_references(paths: list[str]) -> dict[str, dict]:
    """Join the per-section numbers of several ``--json`` outputs of the references part."""
    merged: dict[str, dict] = {}
    for path in paths:
        for name, raw in json.loads(Path(path).read_text()).get("references", {}).items():
            dst = merged.setdefault(name, {"references": raw["references"],
                                           "as_model": raw.get("as_model", False)})
            for label in ("alone", "with references"):
                for key, values in raw.get(label, {}).items():
                    dst.setdefault(label, {}).setdefault(key, []).extend(values)
    return merged


def merge_recovery(paths: list[str]) -> dict[str, dict]:
    """Per-sample raw numbers of several ``--json`` outputs (e.g. one process per seed) joined."""
    merged: dict[str, dict] = {}
    for path in paths:
        for name, raw in json.loads(Path(path).read_text()).get("recovery", {}).items():
            for label, r in raw.items():
                dst = merged.setdefault(name, {}).setdefault(label, {})
                for key, values in r.items():
                    dst.setdefault(key, []).extend(values)
    return merged


def transfer_suite(sections: dict[str, Path], cache_dir: str) -> tuple[list[dict], dict]:
    """Each section predicted from its image after training on all the others."""
    from napari_trihrge.tl import transfer

    adatas = {n: load_sample(p) for n, p in sections.items()}
    rows, raw = [], {}
    for target in adatas:
        train = [a for n, a in adatas.items() if n != target]
        with measure() as m:
            res = transfer(train, adatas[target], config=_config(cache_dir))
        met = res.metrics
        raw[target] = {**met, "wall_s": m.wall_s, "peak_mb": m.peak_rss_mb}
        tag = target + (" (untouched)" if target in UNTOUCHED else "")
        rows.append({"target": tag, "method": "model (image only)", "PCC": met["pcc_mean"],
                     "MSE": met["mse"], "genes better than ridge":
                     f"{met['fraction_genes_better_than_ridge']:.0%}",
                     "wall s": f"{m.wall_s:.0f}", "peak MiB": f"{m.peak_rss_mb:.0f}"})
        rows.append({"target": tag, "method": f"ridge on features (alpha {met['baseline_ridge_alpha']:.0f})",
                     "PCC": met["baseline_ridge_pcc_mean"], "MSE": met["baseline_ridge_mse"]})
        rows.append({"target": tag, "method": "mean training expression", "PCC": "undefined",
                     "MSE": met["baseline_train_mean_mse"]})
        print(f"  transfer -> {target}: PCC {met['pcc_mean']:.4f} (ridge "
              f"{met['baseline_ridge_pcc_mean']:.4f}) ({m.wall_s:.0f} s)", flush=True)
    return rows, raw


def synthetic_suite(cache_dir: str, stride_um: float = 16.0, ensemble: int = 3
                    ) -> tuple[list[dict], dict]:
    from napari_trihrge.evaluation import structure_scores, superres_scores
    from napari_trihrge.tl import enhance

    adata = load_sample("synthetic")
    with measure() as m:
        res = enhance(adata, factor=2, stride_um=stride_um,
                      config=_config(cache_dir, ensemble=ensemble))
    rc_um = np.asarray(res.spots.obsm["spatial"], dtype=float)[:, ::-1] * float(
        res.spots.uns["trihrge"]["um_per_px"])
    summary, _ = superres_scores(adata, res.maps, rc_um, np.asarray(res.spots.X))
    struct = structure_scores(adata, res.maps, rc_um, np.asarray(res.spots.X))
    rows = []
    for cls, s in summary.get("by_gene_class", {}).items():
        st = struct.get(cls, {})
        rows.append({"gene class": cls, "n": s["n_genes"], "map PCC": s["pcc_mean"],
                     "interp PCC": s["baseline_interp_pcc_mean"], "map SSIM": s["ssim_mean"],
                     "interp SSIM": s["baseline_interp_ssim_mean"],
                     "domain eta² map": st.get("eta2_map"),
                     "domain eta² interp": st.get("eta2_interp"),
                     "domain eta² truth": st.get("eta2_truth"),
                     "rel. spatial sd map": st.get("rel_sd_map"),
                     "spread-error PCC": s.get("spread_error_pcc_mean"),
                     "error ratio high/low spread": s.get("error_ratio_high_vs_low_spread")})
    raw = {"superres": summary, "structure": struct, "consistency": res.metrics["consistency"],
           "wall_s": m.wall_s, "peak_mb": m.peak_rss_mb, "stride_um": stride_um,
           "ensemble": ensemble}
    return rows, raw


def maps_suite(path, cache_dir: str, stride_um: float = 16.0) -> dict:
    from napari_trihrge.io import get_image
    from napari_trihrge.tl import enhance

    adata = load_sample(path)
    img = get_image(adata)
    with measure() as m:
        res = enhance(adata, factor=2, stride_um=stride_um, config=_config(cache_dir))
    return {"consistency": res.metrics["consistency"], "image_um_per_px": float(img.um_per_px),
            "stride_um": stride_um, "map_shape": list(res.maps.mask.shape),
            "map_pixels_in_tissue": int(res.maps.mask.sum()), "wall_s": m.wall_s,
            "peak_mb": m.peak_rss_mb}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA), help="folder with dlpfc_151673/ and her2st/")
    ap.add_argument("--sample", action="append", default=[],
                    help="a sample path (Space Ranger folder, .h5ad, her2st section folder); "
                         "repeatable; replaces the shared samples for 'recovery'")
    ap.add_argument("--parts", default="recovery,transfer,synthetic,maps",
                    help="comma-separated subset of recovery,transfer,synthetic,maps")
    ap.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                    help="held-out split seeds (comma-separated)")
    ap.add_argument("--quick", action="store_true",
                    help="2 seeds and no DLPFC dense map (about half the time)")
    ap.add_argument("--threads", type=int, default=2, help="torch/BLAS threads (default 2)")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    ap.add_argument("--only", default=None,
                    help="comma-separated shared sample names to run (e.g. dlpfc_151673,her2st/C2)")
    ap.add_argument("--no-models", action="store_true",
                    help="recovery: only the kNN and ridge rows (no network is trained)")
    ap.add_argument("--sweep", action="store_true",
                    help="recovery: the sweep rows (SWEEP_VARIANTS) instead of the model and its "
                         "ablations")
    ap.add_argument("--levers", action="store_true",
                    help="recovery: the lever rows (LEVER_VARIANTS: count losses, gene programs, "
                         "denoised targets, neighbour images) instead of the model and its "
                         "ablations")
    ap.add_argument("--variants", default=None,
                    help="recovery: only these model rows (comma-separated labels, or their "
                         "1-based positions in the list --sweep / --levers / the default list "
                         "uses)")
    ap.add_argument("--no-linear", action="store_true",
                    help="recovery: skip the ridge rows (the kNN rows are always there)")
    ap.add_argument("--with-references", action="store_true",
                    help="the references part: her2st recovery alone and with the study's other "
                         "sections as references (use --only to pick the sections recovered)")
    ap.add_argument("--model-reference", action="store_true",
                    help="with --with-references: pass the references as one image-only model "
                         "trained on them (a model folder given to --with) instead of sections")
    ap.add_argument("--untouched-as-reference", action="store_true",
                    help="with --with-references: C5 is a reference of C2-C4 too (an extra row "
                         "labelled '+ C5'; C5 stays out of every tuning decision)")
    ap.add_argument("--reference-weight", type=float, default=None,
                    help="with --with-references: tl.recovery's reference_weight (default: "
                         "every reference spot)")
    ap.add_argument("--with-relu", action="store_true",
                    help="add the network-alone row with the earlier ReLU output layer")
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="cap training epochs (smoke tests only; the numbers are then not the "
                         "benchmark's)")
    ap.add_argument("--encoder", default=None,
                    help="image encoder of every run (default: the engine's default, "
                         "'stain-texture'); e.g. stain-texture-nuclei")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print the recovery table of earlier --json outputs joined (one process "
                         "per seed or sample) and exit")
    ap.add_argument("--paired-to", default=None, metavar="LABEL",
                    help="with --merge: add each row's paired PCC difference to this row "
                         "(e.g. 'blend (default)'), mean ± sd over seeds")
    args = ap.parse_args(argv)
    if args.merge:
        merged = merge_recovery(args.merge)
        rows = [row for name, raw in merged.items()
                for row in recovery_rows(name, raw, args.paired_to)]
        if rows:
            print_table(rows, title="Held-out recovery, 50 % hidden (joined runs)")
        rows = references_rows(merge_references(args.merge))
        if rows:
            print_table(rows, title="Recovery with the study's other sections as references "
                                    "(joined runs)")
        return 0
    if args.max_epochs:
        TRAIN_OVERRIDES["max_epochs"] = args.max_epochs
    if args.encoder:
        RUN_OVERRIDES["encoder"] = args.encoder
    if args.with_relu:
        MODEL_VARIANTS.update(RELU_VARIANT)
    variants = dict(SWEEP_VARIANTS if args.sweep else LEVER_VARIANTS if args.levers
                    else MODEL_VARIANTS)
    if args.variants:
        labels = list(variants)
        wanted = [labels[int(v) - 1] if v.strip().isdigit() else v.strip()
                  for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            ap.error(f"no such variants: {unknown}; known: {labels}")
        variants = {v: variants[v] for v in wanted}
    if args.no_models:
        variants = {}
    limit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    parts = set(args.parts.split(","))
    if args.with_references:
        parts = {"references"}
    if args.quick:
        seeds = seeds[:2]
        parts.discard("maps")
    cache = args.cache_dir or tempfile.mkdtemp(prefix="trihrge_bench_")
    samples = ({Path(p).name: Path(p) for p in args.sample} if args.sample
               else shared_samples(args.data))
    every_sample = dict(samples)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = sorted(set(wanted) - set(samples))
        if missing:
            ap.error(f"no such samples: {missing}; known: {sorted(samples)}")
        samples = {n: samples[n] for n in wanted}
    out: dict = {"seeds": seeds, "parts": sorted(parts), "encoder": args.encoder or "default"}
    with measure() as total:
        if "references" in parts:
            out["references"] = {}
            for name in samples:
                if name.startswith("her2st/"):
                    print(f"references: {name}", flush=True)
                    label = name + (" + C5" if args.untouched_as_reference
                                    and name not in UNTOUCHED else "") + (
                        " [model]" if args.model_reference else "")
                    out["references"][label] = references_suite(
                        name, every_sample, seeds, cache, args.reference_weight,
                        untouched_too=args.untouched_as_reference,
                        as_model=args.model_reference)
                    if args.json:  # what is measured survives a later failure
                        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
            print_table(references_rows(out["references"]),
                        title=f"Recovery with the study's other sections as references, "
                              f"seeds {seeds}")
        if "recovery" in parts:
            rows = []
            out["recovery"] = {}
            for name, path in samples.items():
                print(f"recovery: {name}", flush=True)
                r, raw = recovery_suite(name, path, seeds, cache, variants=variants,
                                        linear=not args.no_linear)
                rows += r
                out["recovery"][name] = raw
            print_table(rows, title=f"Held-out recovery, 50 % hidden, seeds {seeds}")
        if "transfer" in parts:
            sections = {n: p for n, p in samples.items() if n.startswith("her2st/")}
            if len(sections) >= 2:
                print("transfer: her2st", flush=True)
                rows, out["transfer"] = transfer_suite(sections, cache)
                print_table(rows, title="Whole section from its image alone (train on the others)")
        if "synthetic" in parts:
            print("synthetic: enhance + truth", flush=True)
            rows, out["synthetic"] = synthetic_suite(cache)
            print_table(rows, title="Synthetic sample: dense map (16 um) vs truth, per gene class")
            s = out["synthetic"]
            print(f"\nconsistency (map averaged over spot disks vs spots): "
                  f"PCC {s['consistency']['pcc_mean']:.3f}; spread-vs-|error| PCC "
                  f"{s['superres'].get('spread_error_pcc_mean', float('nan')):.3f}; "
                  f"{s['wall_s']:.0f} s, peak {s['peak_mb']:.0f} MiB")
        if "maps" in parts and "dlpfc_151673" in samples:
            print("maps: DLPFC enhance at 16 um", flush=True)
            out["maps_dlpfc"] = d = maps_suite(samples["dlpfc_151673"], cache)
            print(f"DLPFC map (image {d['image_um_per_px']:.1f} um/px, stride {d['stride_um']} um):"
                  f" consistency PCC {d['consistency']['pcc_mean']:.3f}, "
                  f"{d['wall_s']:.0f} s, peak {d['peak_mb']:.0f} MiB")
    out["total_wall_s"] = total.wall_s
    out["peak_rss_mb"] = total.peak_rss_mb
    print(f"\ntotal {total.wall_s:.0f} s, peak {total.peak_rss_mb:.0f} MiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
