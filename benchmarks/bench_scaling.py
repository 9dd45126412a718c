"""How cost grows: synthetic samples whose area (spots and dense-map locations) doubles from one
size to the next, enhanced with the default encoder on the CPU (virtual spots + an 8 um dense
map streamed to Zarr). Prints, per stage, wall time and peak memory above the process's
baseline, and their growth ratio from one size to the next (linear growth: about 2.0).

Each size runs in its own process, so memory figures do not carry over. Training runs a fixed
number of epochs (no early stopping) so its cost reflects the data size, not the stopping epoch.

Example::

    python benchmarks/bench_scaling.py                        # 4 sizes, about 5 minutes on 2 cores
    python benchmarks/bench_scaling.py --sizes-um 1200,1697,2400 --genes 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("features", "training", "prediction", "maps", "writing")


def one(size_um: float, genes: int, epochs: int, stride_um: float, json_path: str) -> None:
    """Run one size in this process and write its record to ``json_path``."""
    sys.path.insert(0, str(HERE))
    import torch
    from bench_e2e import make_recorder, rss_mb

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.runs import run_enhance

    torch.set_num_threads(1)  # the network is small: one thread avoids oversubscription
    os.environ["TRIHRGE_THREADS"] = "1"  # the engine sizes its pools from it (threads.py)
    t0 = time.perf_counter()
    adata = synthetic_sample(seed=0, size_um=(size_um, size_um), n_genes=genes)
    adata.uns.pop("truth", None)  # scoring is not part of the measured run
    gen_s = time.perf_counter() - t0
    base = rss_mb()
    cfg = RunConfig(n_top_genes=genes, device="cpu",
                    train={"max_epochs": epochs, "patience": 10 ** 6})
    rec = make_recorder()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        t1 = time.perf_counter()
        summary = run_enhance(adata, Path(tmp) / "run", factor=4, stride_um=stride_um,
                              config=cfg, progress=rec)
        wall = time.perf_counter() - t1
    rec.close()
    Path(json_path).write_text(json.dumps({
        "size_um": size_um, "n_spots": int(adata.n_obs),
        "n_virtual": summary["enhance"]["n_virtual_spots"],
        "map_locations": summary["enhance"]["map_locations"], "generate_s": gen_s,
        "wall_s": wall, "baseline_mb": base,
        "stages": {k: {"wall_s": v["wall_s"], "cpu_s": v["cpu_s"],
                       "peak_above_mb": max(0.0, v["peak_mb"] - base)}
                   for k, v in rec.stages.items()},
        "timings_s": summary["timings_s"]}))


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}" if a > 1e-9 else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-um", default="1200,1697,2400,3394",
                   help="sample sides in um (each step doubles the area)")
    p.add_argument("--genes", type=int, default=200)
    p.add_argument("--epochs", type=int, default=8, help="fixed training epochs")
    p.add_argument("--stride-um", type=float, default=8.0)
    p.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write all records to this JSON file")
    args = p.parse_args(argv)
    if args.one is not None:
        one(args.one, args.genes, args.epochs, args.stride_um, args.out_json)
        return 0
    records = []
    for size in [float(s) for s in args.sizes_um.split(",")]:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            path = fh.name
        cmd = [sys.executable, __file__, "--one", str(size), "--out-json", path,
               "--genes", str(args.genes), "--epochs", str(args.epochs),
               "--stride-um", str(args.stride_um)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        rec = json.loads(Path(path).read_text())
        Path(path).unlink()
        records.append(rec)
        print(f"size {size:.0f} um: {rec['n_spots']} spots, {rec['map_locations']} map "
              f"locations, run {rec['wall_s']:.1f} s (process {time.perf_counter() - t0:.1f} s)",
              flush=True)

    print(f"\n{args.genes} genes, {args.epochs} epochs, stain-texture encoder, 4x virtual spots, "
          f"{args.stride_um:g} um map; time in s, memory = peak RSS above the baseline in MiB")
    head = f"{'size um':>8} {'spots':>6} {'map loc':>8} {'total s':>8}"
    for s in STAGES:
        head += f" {s[:8] + ' s':>10} {s[:4] + ' MiB':>9}"
    print(head)
    for r in records:
        line = f"{r['size_um']:>8.0f} {r['n_spots']:>6} {r['map_locations']:>8} {r['wall_s']:>8.1f}"
        for s in STAGES:
            st = r["stages"].get(s, {"wall_s": 0.0, "peak_above_mb": 0.0})
            line += f" {st['wall_s']:>10.2f} {st['peak_above_mb']:>9.0f}"
        print(line)
    print("growth ratios from the previous size (area x2):")
    for a, b in zip(records, records[1:], strict=False):
        line = (f"{b['size_um']:>8.0f} {_ratio(a['n_spots'], b['n_spots']):>6} "
                f"{_ratio(a['map_locations'], b['map_locations']):>8} "
                f"{_ratio(a['wall_s'], b['wall_s']):>8}")
        for s in STAGES:
            sa, sb = a["stages"].get(s), b["stages"].get(s)
            if sa and sb:
                line += (f" {_ratio(sa['wall_s'], sb['wall_s']):>10} "
                         f"{_ratio(sa['peak_above_mb'], sb['peak_above_mb']):>9}")
            else:
                line += f" {'n/a':>10} {'n/a':>9}"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
