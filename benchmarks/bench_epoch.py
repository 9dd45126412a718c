"""CPU time per training epoch of the default model, where it goes, and what the variants cost
in the fair score.

Each variant runs the whole held-out recovery (50 % hidden) in this process with one CPU thread;
the time of every epoch is read at the engine's per-epoch metric event (process CPU time, which
other programs on the machine disturb far less than wall time). Variants: the optimiser
(``single``: torch's per-tensor loop, the earlier default; ``foreach``; ``fused``) and the batch
size. Prints one row per variant and seed with CPU s per epoch, epochs, mean PCC and the best
kNN's PCC; ``--profile`` adds the top operators of two epochs of the default variant.

    python benchmarks/bench_epoch.py --quick                 # synthetic sample
    python benchmarks/bench_epoch.py --seeds 0,1 --variants single:64,fused:64,fused:256
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import SHARED_DATA, load_sample, print_table


def _patch_optimiser(kind: str):
    """Make training build Adam as ``kind`` ('single', 'foreach', 'fused'); returns an undo."""
    import torch

    from napari_trihrge.model.network import training

    original = training._adam

    def adam(model, tc, device):
        flags = {"single": {"foreach": False, "fused": False},
                 "foreach": {"foreach": True, "fused": False},
                 "fused": {"fused": True}}[kind]
        return torch.optim.Adam(training._param_groups(model, tc), lr=tc.lr,
                                weight_decay=tc.weight_decay, **flags)

    training._adam = adam
    return lambda: setattr(training, "_adam", original)


def run_variant(adata, kind: str, batch_size: int, seed: int, genes: int, max_epochs: int | None,
                cache_dir: str) -> dict:
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl import RunConfig, recovery

    marks: list[tuple[float, float]] = []

    def on_event(event):
        if event.get("event") == "stage" and event.get("stage") == "training":
            marks.append((time.process_time(), time.perf_counter()))
        elif event.get("event") == "metric" and "train_loss" in event:
            marks.append((time.process_time(), time.perf_counter()))

    train = {"batch_size": batch_size}
    if max_epochs:
        train["max_epochs"] = max_epochs
    cfg = RunConfig(n_top_genes=genes, seed=seed, device="cpu", threads=1, cache_dir=cache_dir,
                    train=train)
    undo = _patch_optimiser(kind)
    try:
        result = recovery(adata, holdout_fraction=0.5, seed=seed, config=cfg,
                          progress=Progress(on_event=on_event))
    finally:
        undo()
    cpu = [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)]
    wall = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)]
    m = result.metrics
    return {"optimiser": kind, "batch": batch_size, "seed": seed, "epochs": len(cpu),
            "CPU s/epoch (median)": sorted(cpu)[len(cpu) // 2] if cpu else float("nan"),
            "wall s/epoch (median)": sorted(wall)[len(wall) // 2] if wall else float("nan"),
            "PCC": m.get("pcc_mean"), "best kNN PCC": m.get("baseline_knn_pcc_mean")}


def profile_epochs(adata, genes: int, cache_dir: str, n_epochs: int = 2) -> None:
    """Top operators (self CPU time) of ``n_epochs`` epochs of the default training."""
    from torch.profiler import ProfilerActivity, profile

    from napari_trihrge.tl import RunConfig, recovery

    cfg = RunConfig(n_top_genes=genes, device="cpu", threads=1, cache_dir=cache_dir,
                    train={"max_epochs": n_epochs, "val_fraction": 0.1})
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        recovery(adata, holdout_fraction=0.5, seed=0, config=cfg)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="synthetic sample, 100 genes, 8 epochs")
    p.add_argument("--sample", default=None, help="default dlpfc_151673 (or synthetic, --quick)")
    p.add_argument("--variants", default="single:64,fused:64,fused:128,fused:256",
                   help="comma-separated OPTIMISER:BATCH (optimiser single, foreach or fused)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--genes", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--profile", action="store_true", help="also profile two default epochs")
    p.add_argument("--cache-dir", default="/tmp/trihrge-bench-cache")
    args = p.parse_args(argv)
    genes = args.genes or (100 if args.quick else 1000)
    max_epochs = args.max_epochs or (8 if args.quick else None)
    sample = args.sample or ("synthetic" if args.quick else str(SHARED_DATA / "dlpfc_151673"))

    import os

    adata = load_sample(sample)
    print(f"sample {sample}, {genes} genes, one CPU thread, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for v in args.variants.split(","):
            kind, batch = v.split(":")
            row = run_variant(adata, kind, int(batch), seed, genes, max_epochs, args.cache_dir)
            row["load 1 min"] = round(os.getloadavg()[0], 1)
            print(row, flush=True)
            rows.append(row)
    print_table(rows)
    if args.profile:
        profile_epochs(adata, genes, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
