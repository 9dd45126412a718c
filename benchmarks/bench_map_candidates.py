"""Why does the coarse map score as it does? Each candidate of enhance's model alone at the real spots.

Runs validate-coarse on a section as ``bench_validate_coarse.py`` does (one seed, the given
``--set`` settings), then from the same fitted model predicts at the real spot centres: every
candidate alone (kNN k = 6 / 12 of the pseudo-spots, the ridge head, the networks), the per-gene
blend (``map_method='blend'``, refitted on the model's out-of-fold predictions) and, in a run
with ``--set map_method=residual``, the detail transfer, scored with the fair score against the real
spots on the same genes. It prints the validate-coarse scores of the run's map, those
predictions, and the mean weights of both forms. At 32 um a DLPFC spot holds one map pixel, so
a prediction at its centre is what its map shows there.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_map_candidates.py dlpfc_151673 \\
        --threads 1 --stride-um 32 --set map_method=residual --json dlpfc_candidates.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, limit_threads, load_sample, measure, print_table  # noqa: E402
from bench_validate_coarse import _setting, section_labels  # noqa: E402


def candidate_scores(result, adata, cfg, dump: Path | None = None) -> tuple[list[dict], dict]:
    """Score each candidate and both forms at the real spots scored by ``result``."""
    import numpy as np

    from napari_trihrge.metrics import spot_scores
    from napari_trihrge.model.stacking import fit_gene_blend
    from napari_trihrge.neighbours import idw_interpolate
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl._shared import (
        _encoder_and_image,
        _features,
        _stacked_candidates,
        _stacked_predict,
        sample_geometry,
    )

    model = result.enhance.model
    spots = result.spots
    genes = list(spots.var_names)
    truth = np.asarray(spots.layers["measured"], dtype=np.float64)
    rc_um = sample_geometry(adata[spots.obs_names])[0]
    image, encoder = _encoder_and_image(adata, cfg)
    windows = (float(cfg.local_window_um), *cfg.windows_um)
    feats = _features(image, encoder, rc_um, windows, cfg, Progress(), dense=True, cache=False)
    nb = (idw_interpolate(model.src_rc_um, model.src_y, rc_um, cfg.n_neighbours)
          if cfg.neighbour_input else None)
    measured = replace(model, spots_level=None)
    parts, _ = _stacked_candidates(measured, feats, nb, rc_um, cfg)
    if dump is not None:  # what other forms need, to score them without training again
        src_feats = _features(image, encoder, model.src_rc_um, windows, cfg, Progress(),
                              dense=True, cache=False)
        nb_src = (idw_interpolate(model.src_rc_um, model.src_y, model.src_rc_um,
                                  cfg.n_neighbours) if cfg.neighbour_input else None)
        at_src, _ = _stacked_candidates(measured, src_feats, nb_src, model.src_rc_um, cfg)
        np.savez_compressed(dump, truth=truth, rc_real=rc_um, src_rc=model.src_rc_um,
                            src_y=model.src_y, genes=np.array(genes),
                            weights=model.blend.weights, names=np.array(model.blend.names),
                            **{f"real_{n}": v for n, v in parts.items()},
                            **{f"src_{n}": v for n, v in at_src.items()})
    oof = model.out_of_fold
    blend = fit_gene_blend(oof, model.src_y)
    predictions = {f"{name} alone": parts[name] for name in parts}
    predictions["blend"] = np.maximum(blend.predict(parts), 0.0)
    if model.spots_level is not None:  # a run with map_method='residual'
        predictions["residual (detail transfer)"] = _stacked_predict(model, feats, nb, rc_um,
                                                                     cfg)[0]
        predictions.update(_fixed_weight_forms(model, measured, image, encoder, windows, feats,
                                               nb, rc_um, cfg))
    rows = [{"prediction at the real spot centres": name,
             "fair PCC": spot_scores(np.asarray(pred, dtype=np.float64), truth,
                                     genes)[0]["pcc_mean"]}
            for name, pred in predictions.items()]
    weights = {**{f"blend_{n}": float(blend.weights[:, c].mean())
                  for c, n in enumerate(blend.names)},
               **({f"residual_{n}": float(model.blend.weights[:, c].mean())
                   for c, n in enumerate(model.blend.names)}
                  if model.spots_level is not None else {}),
               **{f"out_of_fold_{n}": spot_scores(np.asarray(v, dtype=np.float64),
                                                  model.src_y, genes)[0]["pcc_mean"]
                  for n, v in oof.items()}}
    return rows, weights


def _fixed_weight_forms(model, measured, image, encoder, windows, feats, nb, rc_um, cfg
                        ) -> dict:
    """The detail transfer with fixed weights instead of learned ones (every gene alike)."""
    import numpy as np

    from napari_trihrge.model.stacking import DetailTransfer, GeneBlend
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl._shared import _features, _stacked_predict, _with_detail_transfer

    src_feats = _features(image, encoder, model.src_rc_um, windows, cfg, Progress(), dense=True,
                          cache=False)
    base = next(n for c, n in enumerate(model.blend.names)
                if n.startswith("knn") and model.blend.weights[0, c] == 1.0)
    image_names = [n for n in model.blend.names if not n.startswith("knn")]
    learned = model.blend.weights[:, [model.blend.names.index(n) for n in image_names]]
    n_genes = learned.shape[0]
    forms = {f"residual, base {base}, weight 1 on {n}": (base, {n: 1.0}) for n in image_names}
    forms[f"residual, base {base}, weights 0.5 on {' and '.join(image_names)}"] = (
        base, {n: 0.5 for n in image_names})
    other = "knn6" if base != "knn6" else "knn12"
    if "ridge" in image_names:
        forms[f"residual, base {other}, weight 1 on ridge"] = (other, {"ridge": 1.0})
    out = {}
    for label, (knn, fixed) in forms.items():
        weights = np.stack([np.full(n_genes, fixed.get(n, 0.0)) for n in image_names], axis=1)
        transfer = DetailTransfer(knn, GeneBlend(image_names, weights, weights[0],
                                                 np.zeros((len(image_names), n_genes)),
                                                 np.zeros(n_genes)))
        out[label] = _stacked_predict(_with_detail_transfer(measured, cfg, src_feats, transfer,
                                                            Progress()), feats, nb, rc_um, cfg)[0]
    doubled = DetailTransfer(base, GeneBlend(image_names, 2 * learned, 2 * learned[0],
                                             np.zeros((len(image_names), n_genes)),
                                             np.zeros(n_genes)))
    out["residual, learned weights x 2"] = _stacked_predict(
        _with_detail_transfer(measured, cfg, src_feats, doubled, Progress()), feats, nb, rc_um,
        cfg)[0]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", help="e.g. dlpfc_151673 or her2st/C2")
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--stride-um", type=float, default=32.0)
    ap.add_argument("--split-counts", action="store_true")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--set", type=_setting, nargs="+", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.set = dict(args.set)
    limit_threads(args.threads)
    from _common import shared_samples

    from napari_trihrge.tl import RunConfig
    from napari_trihrge.tl.coarse_validation import validate_coarse

    path = shared_samples(args.data)[args.section]
    adata = load_sample(path)
    cfg = RunConfig(seed=args.seed, threads=args.threads,
                    cache_dir=str(args.cache_dir) if args.cache_dir else None, **args.set)
    with measure() as m:
        result = validate_coarse(adata, factor=args.factor, stride_um=args.stride_um, config=cfg,
                                 annotation=section_labels(path), split_counts=args.split_counts)
    scores = result.metrics
    run_rows = [{"section": args.section + (" split" if args.split_counts else ""),
                 "settings": " ".join(f"{k}={v}" for k, v in args.set.items()) or "defaults",
                 "map": scores["pcc_mean"], "nearest virtual": scores["nearest_virtual_pcc_mean"],
                 "pseudo-spot": scores["baseline_pseudo_spot_pcc_mean"],
                 "better kNN": scores["baseline_knn_pcc_mean"],
                 "image-only ridge": scores["baseline_ridge_image_pcc_mean"],
                 "x better simple": scores["x_better_simple"],
                 "noise ceiling": scores["noise_ceiling_pcc_mean"], "wall s": round(m.wall_s)}]
    print_table(run_rows, title="validate-coarse (fair PCC at the real spots)")
    classes = [{"genes": cls, **{k: v for k, v in row.items()}}
               for cls, row in scores["by_gene_class"].items()]
    print_table(classes, title="per gene class")
    rows, weights = candidate_scores(result, adata, cfg,
                                     args.json.with_suffix(".npz") if args.json else None)
    print_table(rows, title="the same model's candidates and forms at the real spot centres")
    print_table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in weights.items()}],
                title="mean weights; out-of-fold scores at the pseudo-spots")
    if args.json:
        args.json.write_text(json.dumps({"run": run_rows, "classes": classes,
                                         "candidates": rows, "weights": weights}, indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
