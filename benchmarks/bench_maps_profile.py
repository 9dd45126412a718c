"""Where the maps stage of ``enhance`` spends its time (cProfile), on one section.

Trains one model (few epochs: training is not measured), then runs the maps stage (the
factorised store written to a temporary folder) under cProfile and prints the stage timings
of the run and the functions that take most of the maps stage.

``--trunk`` then times the networks' trunks (and the ridge inputs) at every map location,
before (each network's own ``last_hidden`` on the kNN interpolation, as ``FactorModel.factors``
ran them up to main b0cd3a5) and after (``FactorModel.factors``: the fused trunks), and the
consistency score both ways, and prints what bounds them: the multiply-adds per location, the
GMAC/s achieved and the machine's sgemm peak (a 4096^3 ``torch.matmul``) on the same threads.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/bench_maps_profile.py --stride-um 8
    python benchmarks/bench_maps_profile.py --stride-um 8 --trunk --top 0
    python benchmarks/bench_maps_profile.py --sample synthetic --stride-um 8 --trunk --top 0
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
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
    ap.add_argument("--trunk", action="store_true",
                    help="time the networks' trunks at every map location, before and after")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of the trunk timings (default: the free cores)")
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
        if args.top > 0:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
            print(out.getvalue())
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
        if args.trunk:
            trunk_timings(result, threads=args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def unfused_factors(model, inputs, spots_expression):
    """``FactorModel.factors`` as it was before the fused trunk (main b0cd3a5): the neighbour
    input built (locations x genes), each network's own ``last_hidden``, in batches of 4096."""
    import numpy as np
    import torch

    from napari_trihrge.io.map_store import LocationFactors
    from napari_trihrge.neighbours import idw_apply
    from napari_trihrge.threads import cpu_threads

    nb = None
    if model.neighbour_k is not None:
        nb = idw_apply(*inputs.knn[int(model.neighbour_k)], spots_expression)
    feats = inputs.features if model.image_input else None
    out = LocationFactors(knn=dict(inputs.knn))
    if model.ridge is not None:
        out.ridge = model.ridge.standardised_inputs(feats, nb).astype(np.float32)
    if model.networks:
        n = len(inputs)
        out.hidden = np.empty((len(model.networks), n, model.networks[0].config.last_hidden_dim),
                              dtype=np.float32)
        with cpu_threads(model.threads), torch.inference_mode():
            for s in range(0, n, 4096):
                x = None if feats is None else torch.from_numpy(
                    np.ascontiguousarray(feats[s:s + 4096], dtype=np.float32))
                v = None if nb is None else torch.from_numpy(nb[s:s + 4096])
                for i, net in enumerate(model.networks):
                    net.eval()
                    out.hidden[i, s:s + 4096] = net.last_hidden(
                        x if net.config.n_scales > 0 else None,
                        v if net.config.neighbour_input else None).numpy()
    return out


def trunk_macs(config, *, fused: bool, k: int) -> int:
    """Multiply-adds per location of one network's trunk (up to its last hidden layer)."""
    c, h, a = config, config.hidden_dim, config.attention_dim
    macs = c.n_scales * (c.in_dim * h + h * h)  # the image MLP's two Linear layers
    if c.neighbour_input:  # its first layer on the interpolation, or the spots' values
        macs += (k * h if fused else int(c.neighbour_dim) * h) + h * h
    macs += c.n_tokens * (2 * h * a + a)  # attention V, U and w on every bag element
    prev = h
    for width in (*c.decoder_dims, *((c.output_rank,) if c.output_rank else ())):
        macs += prev * width
        prev = width
    return macs


def sgemm_gmacs(threads: int, n: int = 4096) -> tuple[float, float]:
    """Multiply-adds of a large float32 matrix product per wall second and per CPU second (all
    threads), each the best of 3."""
    import torch

    from napari_trihrge.threads import cpu_threads

    a, b = torch.randn(n, n), torch.randn(n, n)
    wall = cpu = float("inf")
    with cpu_threads(threads), torch.inference_mode():
        torch.matmul(a, b)
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.matmul(a, b)
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
    return n ** 3 / wall / 1e9, n ** 3 / cpu / 1e9


def trunk_timings(result, *, threads: int | None) -> None:
    """Print the trunks' time at every map location and the consistency score, before/after."""
    import numpy as np

    from napari_trihrge.io import map_store
    from napari_trihrge.threads import choose_threads
    from napari_trihrge.tl._maps import map_spot_consistency
    from napari_trihrge.tl._shared import sample_geometry

    maps = result.maps
    model = maps.factor_model
    n_threads = choose_threads(threads)
    model.threads = n_threads
    k = int(model.neighbour_k or 0)
    spots = maps.weights.spots_expression
    chunks = [maps.input_chunk(c) for c in range(maps.n_chunks)]
    n = sum(len(c) for c in chunks)
    largest = {"hidden": 0.0, "ridge": 0.0}
    spent = {False: [0.0, 0.0], True: [0.0, 0.0]}  # fused -> wall s, CPU s
    for part in chunks:  # chunk by chunk, both ways: one chunk's factors held at a time
        got = {}
        for fused in (False, True):
            t0, c0 = time.perf_counter(), time.process_time()
            got[fused] = (model.factors(part, spots) if fused
                          else unfused_factors(model, part, spots))
            spent[fused][0] += time.perf_counter() - t0
            spent[fused][1] += time.process_time() - c0
        for key in largest:
            a, b = getattr(got[True], key), getattr(got[False], key)
            if a is not None:
                largest[key] = max(largest[key], float(np.abs(a - b).max()))
    peak_wall, peak_cpu = sgemm_gmacs(n_threads)
    print(f"\ntrunks of {len(model.networks)} networks + ridge inputs at all {n} map locations, "
          f"{n_threads} threads (load average {os.getloadavg()[0]:.1f}); GMAC/s per wall "
          "second and per CPU second (all threads), against a 4096^3 sgemm's on the same threads:")
    print(f"| | wall s | CPU s | MACs per location (all networks) | GMAC per wall s "
          f"(sgemm {peak_wall:.1f}) | GMAC per CPU s (sgemm {peak_cpu:.1f}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, fused in (("before (each network's last_hidden)", False),
                        ("after (FactorModel.factors, fused)", True)):
        wall, cpu = spent[fused]
        macs = sum(trunk_macs(net.config, fused=fused, k=k) for net in model.networks)
        per_wall, per_cpu = macs * n / wall / 1e9, macs * n / cpu / 1e9
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {macs / 1e6:.2f} M | {per_wall:.1f} "
              f"({per_wall / peak_wall:.0%}) | {per_cpu:.1f} ({per_cpu / peak_cpu:.0%}) |")
    print(f"largest difference after - before: hidden layers {largest['hidden']:.2e}, "
          f"ridge inputs {largest['ridge']:.2e}")
    rc_um, _, diameter_um = sample_geometry(result.spots)
    y = np.asarray(result.spots.X, dtype=np.float32)
    fused_factors = map_store.FactorModel.factors
    for name, method in (("before", unfused_factors), ("after", fused_factors)):
        map_store.FactorModel.factors = method
        try:
            t0 = time.perf_counter()
            score = map_spot_consistency(maps, rc_um, y, diameter_um)
            print(f"consistency score {name}: {time.perf_counter() - t0:.2f} s "
                  f"(pcc_mean {score['pcc_mean']:.6f}, {score['n_spots']} spots)")
        finally:
            map_store.FactorModel.factors = fused_factors


if __name__ == "__main__":
    raise SystemExit(main())
