"""Leave-one-section-out on her2st patient C: train on three of C2-C5 with ``tl.train``
(image-only), predict the fourth from its image alone with ``tl.predict``, score at its measured
spots with the fair score (:func:`napari_trihrge.metrics.spot_scores`).

    python benchmarks/bench_transfer.py                      # seeds 0,1,2, default training
    python benchmarks/bench_transfer.py --seeds 0 --max-epochs 10

Rows per target section: the model with the target's feature statistics taken over its spots
(the default when a target has spots), the same model with the statistics taken over a
spot-spaced lattice inside the tissue mask (what a bare H&E slide gets), ridge regression on the
same per-section standardised features (RidgeCV, all training spots), and the mean training
expression (a constant: PCC 0 by the fair score; its MSE is the level baseline). 'PCC top-100':
the 100 most expressed scored genes; 'constant': scored genes predicted as a constant (PCC 0).
Mean ± sd over seeds. her2st C5 was kept out of every tuning decision: its rows are marked 'untouched'.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, limit_threads, load_sample, mean_sd, measure, print_table  # noqa: E402

SECTIONS = ("C2", "C3", "C4", "C5")
UNTOUCHED = {"C5"}


def _ridge(train_adatas, target, genes, cfg):
    """Ridge on the per-section standardised dense feature bags at the spots (same features as
    the model; the feature cache makes them free after training)."""
    from sklearn.linear_model import RidgeCV

    from napari_trihrge.features import create_encoder
    from napari_trihrge.io import get_image
    from napari_trihrge.tl import sample_geometry
    from napari_trihrge.tl._shared import _features, _log_expression, _nonzero_spots, _standardise

    enc = create_encoder(cfg.encoder, device=cfg.device)
    windows = (cfg.local_window_um, *cfg.windows_um)

    def bag(a):
        a = _nonzero_spots(a)
        rc, _, _ = sample_geometry(a)
        z, _, _ = _standardise(_features(get_image(a), enc, rc, windows, cfg, None, dense=True))
        return z.reshape(len(z), -1), _log_expression(a, genes)

    xs, ys = zip(*(bag(a) for a in train_adatas), strict=True)
    x_t, _ = bag(target)
    model = RidgeCV(alphas=np.logspace(0, 5, 11)).fit(np.concatenate(xs), np.concatenate(ys))
    return np.maximum(model.predict(x_t), 0.0), float(model.alpha_)


def run(data: Path, seeds, cache_dir: str, max_epochs: int | None,
        json_path: str | None = None, targets=SECTIONS) -> tuple[list[dict], dict]:
    from napari_trihrge.metrics import spot_scores
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.tl.inference import predict, train

    adatas = {s: load_sample(data / "her2st" / s) for s in SECTIONS}
    raw: dict = {}
    for target in targets:
        raw[target] = {k: [] for k in ("model", "model_tissue", "ridge", "mean",
                                       "mse_model", "mse_tissue", "mse_ridge", "mse_mean",
                                       "better_than_ridge", "n_genes_scored", "n_spots",
                                       "wall_s", "epochs", "heldout_pcc",
                                       "heldout_knn_pcc", "top_model", "top_tissue",
                                       "top_ridge", "const_model", "const_tissue",
                                       "const_ridge")}
    # seeds outermost: a run cut short still has every target once
    for seed in seeds:
        for target in targets:
            train_set = [a for s, a in adatas.items() if s != target]
            r = raw[target]
            cfg = RunConfig(seed=seed, cache_dir=cache_dir,
                            train={"max_epochs": max_epochs} if max_epochs else {})
            with measure() as m:
                res = train(train_set, image_only=True, config=cfg)
                pred = predict(res.model, adatas[target], factor=1, cache_dir=cache_dir)
                pred_t = predict(res.model, adatas[target], factor=1, cache_dir=cache_dir,
                                 reference="tissue")
            genes = res.model.genes
            y = np.asarray(pred.spots.X)
            keep = ~np.isnan(y).any(axis=0)
            y = y[:, keep]
            g = [x for x, k in zip(genes, keep, strict=True) if k]
            p_model = np.asarray(pred.virtual.X)[:, keep]
            p_tissue = np.asarray(pred_t.virtual.X)[:, keep]
            ridge, alpha = _ridge(train_set, adatas[target], genes, cfg)
            tm = res.model.gene_table["train_mean"].to_numpy()[keep]
            s, _ = spot_scores(p_model, y, g, baselines={
                "tissue": p_tissue, "ridge": ridge[:, keep],
                "mean": np.broadcast_to(tm, y.shape)})
            r["model"].append(s["pcc_mean"])
            r["model_tissue"].append(s["baseline_tissue_pcc_mean"])
            r["ridge"].append(s["baseline_ridge_pcc_mean"])
            r["mean"].append(s["baseline_mean_pcc_mean"])
            r["mse_model"].append(s["mse"])
            r["mse_tissue"].append(s["baseline_tissue_mse"])
            r["mse_ridge"].append(s["baseline_ridge_mse"])
            r["mse_mean"].append(s["baseline_mean_mse"])
            r["better_than_ridge"].append(s["fraction_genes_better_than_ridge"])
            r["top_model"].append(s["pcc_top100"])
            r["const_model"].append(s["n_genes_constant_prediction"])
            for name in ("tissue", "ridge"):
                r[f"top_{name}"].append(s[f"baseline_{name}_pcc_top100"])
                r[f"const_{name}"].append(s[f"baseline_{name}_n_genes_constant_prediction"])
            r["n_genes_scored"].append(s["n_genes_scored"])
            r["n_spots"].append(int(len(y)))
            r["wall_s"].append(m.wall_s)
            r["epochs"].append(sum(len(h) for h in res.history))
            r["heldout_pcc"].append(res.metrics["heldout"]["pcc_mean"])
            r["heldout_knn_pcc"].append(res.metrics["heldout"]["baseline_knn_pcc_mean"])
            r.setdefault("ridge_alpha", []).append(alpha)
            print(f"  {target} seed {seed}: model {s['pcc_mean']:.3f} (tissue-lattice stats "
                  f"{s['baseline_tissue_pcc_mean']:.3f}), ridge {s['baseline_ridge_pcc_mean']:.3f}"
                  f"; MSE {s['mse']:.3f} / ridge {s['baseline_ridge_mse']:.3f} / mean "
                  f"{s['baseline_mean_mse']:.3f}; top-100 {s['pcc_top100']:.3f} / ridge "
                  f"{s['baseline_ridge_pcc_top100']:.3f}; constant {s['n_genes_constant_prediction']}"
                  f" / ridge {s['baseline_ridge_n_genes_constant_prediction']} of "
                  f"{s['n_genes_scored']}; {m.wall_s:.0f} s", flush=True)
            if json_path:  # every number so far, should the run be cut short
                Path(json_path).write_text(json.dumps(raw, indent=1, default=float))
    rows = []
    for target, r in raw.items():
        tag = target + (" (untouched)" if target in UNTOUCHED else "")
        common = {"spots": r["n_spots"][0], "genes scored": r["n_genes_scored"][0]}
        rows.append({"target": tag, "method": "model, image only (stats over spots)",
                     "PCC": mean_sd(r["model"]), "PCC top-100": mean_sd(r["top_model"]),
                     "constant": mean_sd(r["const_model"], 0), "MSE": mean_sd(r["mse_model"]),
                     "genes better than ridge": mean_sd(r["better_than_ridge"], 2), **common,
                     "wall s / seed": f"{np.mean(r['wall_s']):.0f}"})
        rows.append({"target": tag, "method": "model, stats over a tissue lattice (bare slide)",
                     "PCC": mean_sd(r["model_tissue"]), "PCC top-100": mean_sd(r["top_tissue"]),
                     "constant": mean_sd(r["const_tissue"], 0), "MSE": mean_sd(r["mse_tissue"])})
        rows.append({"target": tag, "method": "ridge on the same features",
                     "PCC": mean_sd(r["ridge"]), "PCC top-100": mean_sd(r["top_ridge"]),
                     "constant": mean_sd(r["const_ridge"], 0), "MSE": mean_sd(r["mse_ridge"])})
        rows.append({"target": tag, "method": "mean training expression",
                     "PCC": mean_sd(r["mean"]), "MSE": mean_sd(r["mse_mean"])})
    return rows, raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA), help="folder holding her2st/C2..C5")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="cap training epochs (default: the package's schedule)")
    ap.add_argument("--targets", default=",".join(SECTIONS),
                    help="sections to predict, each from the other three (default C2,C3,C4,C5; "
                         "leave C5 out of any experiment that informs a tuning decision)")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "her2st" / "C5").is_dir():
        print(f"her2st C2-C5 not found under {data}; nothing to do")
        return 0
    limit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cache = args.cache_dir or tempfile.mkdtemp(prefix="trihrge_transfer_")
    with measure() as total:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        unknown = sorted(set(targets) - set(SECTIONS))
        if unknown:
            ap.error(f"unknown target(s) {unknown}: choose among {', '.join(SECTIONS)}")
        rows, raw = run(data, seeds, cache, args.max_epochs, args.json, targets)
    print_table(rows, title=f"her2st leave-one-section-out, image only, seeds {seeds}"
                + (f", max {args.max_epochs} epochs" if args.max_epochs else ""))
    print(f"\ntotal {total.wall_s:.0f} s, peak {total.peak_rss_mb:.0f} MiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
