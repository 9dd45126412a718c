"""What the factor cache of a map store costs as float32 and as float16, and how far apart.

Opens a map store, computes every location chunk's factors once (the networks; float32), then
keeps a copy of them as float16 (what ``FactorMaps`` keeps when the float32 factors exceed its
cache), and prints: the bytes of each cache, the largest difference over every gene and map
pixel inside the tissue between the maps (values and spread) from the two, and the seconds of
one gene's map and spread from each (median of a few genes; the viewer's gene switch without
the redraw).

    OMP_NUM_THREADS=2 python benchmarks/bench_factor_cache.py runs/C3/maps.store.zarr
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--genes", type=int, default=0, help="compare only the first N genes")
    ap.add_argument("--timed", type=int, default=5, help="genes timed from each cache")
    args = ap.parse_args(argv)

    from napari_trihrge.io import map_store

    exact = map_store.open_map_store(args.store)
    exact.cache_bytes = 2**62  # every chunk kept as float32
    t = time.perf_counter()
    exact.warm()
    t_warm = time.perf_counter() - t
    half = map_store.open_map_store(args.store)
    half.cache_bytes = 2**62
    half.cache_dtype = np.dtype(np.float16)
    for c in range(exact.n_chunks):  # the same factors, kept as float16 (no second network run)
        kept = half._kept(exact.location_chunk(c))
        half._cache[c] = kept
        half._cached_bytes += sum(a.nbytes for a in kept.arrays().values())
    assert exact.ready() and half.ready()

    n_genes = args.genes or len(exact.gene_names)
    inside = exact.mask
    worst = {"values": 0.0, "spread": 0.0}
    for g0 in range(0, n_genes, map_store.GENE_BLOCK):
        block = np.arange(g0, min(n_genes, g0 + map_store.GENE_BLOCK))
        a_val, a_std = exact._compute(block, True)
        b_val, b_std = half._compute(block, True)
        worst["values"] = max(worst["values"],
                              float(np.abs(a_val[:, inside] - b_val[:, inside]).max()))
        if a_std is not None:
            worst["spread"] = max(worst["spread"],
                                  float(np.abs(a_std[:, inside] - b_std[:, inside]).max()))

    def one_gene(maps, genes) -> float:
        times = []
        for g in genes:
            t = time.perf_counter()
            maps._compute(np.array([g]), True)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    timed = np.linspace(0, len(exact.gene_names) - 1, args.timed).astype(int)
    print(f"{args.store}: {exact.n_locations} locations, {len(exact.gene_names)} genes "
          f"({n_genes} compared), {exact.n_chunks} chunks; networks over every location "
          f"{t_warm:.1f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'cache':8s} {'MB':>8s} {'MB/location':>12s} {'one gene s':>11s}")
    for name, maps in (("float32", exact), ("float16", half)):
        print(f"{name:8s} {maps._cached_bytes / 1e6:8.1f} "
              f"{maps._cached_bytes / maps.n_locations / 1e6:12.5f} "
              f"{one_gene(maps, timed):11.3f}")
    print(f"largest difference float16 - float32 cache: values {worst['values']:.2e}, spread "
          f"{worst['spread']:.2e} (tolerance {map_store.FLOAT16_TOLERANCE:g})")


if __name__ == "__main__":
    main()
