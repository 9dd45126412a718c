"""Visium HD check on the synthetic sample: the dense map vs the measured 8 um bins.

The synthetic sample's truth is written as a Visium HD-like folder (Poisson counts per 8 um bin,
``datasets.write_visium_hd``); ``workflows.runs.run_validate_hd`` builds pseudo-Visium spots from the
bins, enhances them with 8 um map pixels and scores the map against the bins inside the tissue
(per-gene PCC with a constant map as 0, SSIM, RMSE) next to the pseudo-spots interpolated onto
the same pixels (inverse-distance kNN, k = n_neighbours). Mean ± sd over seeds (sample, bins and
model all change with the seed).

    python benchmarks/bench_validate_hd.py --seeds 0 1 2
    python benchmarks/bench_validate_hd.py --hd path/to/visium_hd/outs    # real data, one run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, mean_sd, measure, print_table  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hd", type=Path, default=None, help="a real Visium HD outs/ folder")
    ap.add_argument("--bin-um", type=int, default=8)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=None, help="cap on training epochs")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    limit_threads(args.threads)

    from napari_trihrge import io
    from napari_trihrge.datasets import synthetic_sample, write_visium_hd
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.runs import run_validate_hd

    work = Path(tempfile.mkdtemp(prefix="bench-hd-"))
    rows, runs = [], []
    for seed in ([0] if args.hd else args.seeds):
        if args.hd:
            outs = args.hd
        else:
            outs = write_visium_hd(synthetic_sample(seed=seed), work / f"hd{seed}" / "outs",
                                   bin_sizes_um=(args.bin_um,), seed=seed)
        bins = io.read(outs, bin_size_um=args.bin_um)
        train = {"max_epochs": args.epochs} if args.epochs else {}
        cfg = RunConfig(n_top_genes=args.genes, seed=seed, train=train)
        with measure() as m:
            summary = run_validate_hd(bins, work / f"run{seed}", config=cfg)
        hd = summary["validate_hd"]
        runs.append(hd)
        rows.append({"seed": seed, "pseudo-spots": hd["n_pseudo_spots"],
                     "pixels scored": hd["n_pixels_scored"],
                     "PCC map": f"{hd['pcc_mean']:.3f}",
                     "PCC interp": f"{hd['baseline_interp_pcc_mean']:.3f}",
                     "SSIM map": f"{hd['ssim_mean']:.3f}",
                     "SSIM interp": f"{hd['baseline_interp_ssim_mean']:.3f}",
                     "RMSE map": f"{hd['rmse']:.3f}",
                     "RMSE interp": f"{hd['baseline_interp_rmse']:.3f}",
                     "wall s": f"{m.wall_s:.0f}"})
    print_table(rows, title=f"map vs measured {args.bin_um} um bins, per seed")
    if len(runs) > 1:
        keys = ("pcc_mean", "baseline_interp_pcc_mean", "ssim_mean", "baseline_interp_ssim_mean",
                "rmse", "baseline_interp_rmse")
        print_table([{k: mean_sd([r[k] for r in runs]) for k in keys}],
                    title="mean ± sd over seeds")


if __name__ == "__main__":
    main()
