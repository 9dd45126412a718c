"""Do the images of the neighbouring spots add to a spot's own? A ridge-only check (issue 21 item 4).

For each her2st section and encoder: ridge on the image features of each spot (the windows the
engine uses) against ridge on those plus the mean features of the spot's nearest spots (their
images are known for hidden spots too), 50 % of the spots hidden, scored with the fair score on
the hidden spots, paired over seeds. No network is trained: an indication, not the model.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_neighbour_images.py --cache-dir cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, load_sample, mean_sd, print_table  # noqa: E402
from bench_accuracy import DEFAULT_SEEDS, _scores  # noqa: E402


def neighbour_mean(features: np.ndarray, rc_um: np.ndarray, k: int) -> np.ndarray:
    """Mean features ``(N, S, D)`` of each location's ``k`` nearest other locations."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(rc_um).query(rc_um, k=k + 1)
    return features[idx[:, 1:]].mean(axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="C2,C3,C4", help="her2st sections (comma-separated)")
    ap.add_argument("--encoders", default="stain-texture,stain-texture-nuclei")
    ap.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    ap.add_argument("--k", type=int, default=4, help="nearest spots averaged (default 4)")
    ap.add_argument("--cache-dir", default=None, help="feature cache")
    ap.add_argument("--neighbour-windows", choices=("all", "smallest"), default="all",
                    help="the neighbours' windows added: all (one extra per window) or the "
                         "smallest only (one extra window, as RunConfig.neighbour_images)")
    args = ap.parse_args(argv)
    from napari_trihrge.model.stacking import RidgeHead
    from napari_trihrge.neighbours import idw_interpolate
    from napari_trihrge.pp import prepare_expression
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl import BASELINE_KS, RunConfig, sample_geometry
    from napari_trihrge.tl._shared import _encoder_and_image, _features, _holdout_split

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for section in args.sections.split(","):
        adata = load_sample(SHARED_DATA / "her2st" / section)
        for name in args.encoders.split(","):
            cfg = RunConfig(encoder=name, cache_dir=args.cache_dir)
            expr = prepare_expression(adata, n_top_genes=cfg.n_top_genes)
            genes, y = list(expr.var_names), np.asarray(expr.X, dtype=np.float32)
            rc_um, _, _ = sample_geometry(expr)
            image, encoder = _encoder_and_image(adata, cfg)
            own = _features(image, encoder, rc_um, cfg.windows_um, cfg, Progress())
            # the neighbours' mean features as extra windows: (N, 2S, D), or (N, S + 1, D)
            # with the smallest window only
            added = own if args.neighbour_windows == "all" else own[:, :1]
            both = np.concatenate([own, neighbour_mean(added, rc_um, args.k)], axis=1)
            pcc: dict[str, list[float]] = {"own": [], "both": []}
            for seed in seeds:
                hidden, visible = _holdout_split(len(y), 0.5, seed)
                knn = {f"knn{k}": idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], k)
                       for k in BASELINE_KS}
                for label, x in (("own", own), ("both", both)):
                    head = RidgeHead.fit(x[visible], None, y[visible])
                    pred = head.predict(x[hidden], None)
                    pcc[label].append(_scores(pred, y[hidden], genes, knn)["pcc_mean"])
            a, b = np.asarray(pcc["own"]), np.asarray(pcc["both"])
            rows.append({"section": f"her2st {section}", "encoder": name, "seeds": len(seeds),
                         "ridge, own images": mean_sd(a),
                         f"ridge, own + {args.k} nearest spots' images": mean_sd(b),
                         "- own": mean_sd(b - a, 4)})
    print_table(rows, title="Image-only ridge with the neighbouring spots' images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
