"""Where the maps stage of ``enhance`` spends its time (cProfile), on one section.

Trains one model (few epochs: training is not measured), then runs the maps stage (the
factorised store written to a temporary folder) under cProfile and prints the stage timings
of the run and the functions that take most of the maps stage.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/bench_maps_profile.py --stride-um 8
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    from _common import SHARED_DATA, load_sample

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", default=str(SHARED_DATA / "her2st" / "C3"))
    ap.add_argument("--stride-um", type=float, default=8.0)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)

    from bench_e2e import make_recorder

    from napari_trihrge.tl import RunConfig, enhance

    adata = load_sample(args.sample)
    adata.uns.pop("truth", None)
    cfg = RunConfig(n_top_genes=args.genes, device="cpu", train={"max_epochs": args.max_epochs})
    work = Path(tempfile.mkdtemp(prefix="bench_maps_profile_", dir=args.tmp))
    prof = cProfile.Profile()
    rec = make_recorder()
    orig_stage = rec.stage

    def stage(name, total=None):  # profile the maps stage only
        if name == "maps":
            prof.enable()
        else:
            prof.disable()
        orig_stage(name, total)

    rec.stage = stage
    try:
        t0 = time.perf_counter()
        result = enhance(adata, factor=2, stride_um=args.stride_um, config=cfg, trust=False,
                         map_store=str(work / "maps.store.zarr"), progress=rec)
        prof.disable()
        rec.close()
        wall = time.perf_counter() - t0
        maps = result.maps
        print(f"{args.sample} at {args.stride_um:g} um: {len(maps.gene_names)} genes, map "
              f"{maps.mask.shape[0]} x {maps.mask.shape[1]}, {int(maps.mask.sum())} locations; "
              f"enhance {wall:.1f} s")
        for name, st in rec.stages.items():
            print(f"  stage {name:12s} wall {st['wall_s']:7.1f} s  cpu {st['cpu_s']:7.1f} s  "
                  f"peak {st['peak_mb']:6.0f} MiB")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
