"""What a map store's factor cache would cost as float16 instead of float32, and how far apart.

Opens a map store, computes every location chunk's factors once (the networks; kept as
float32), rounds a copy of the hidden layers and ridge inputs to float16 (what a float16 cache
would keep), and prints: the bytes of each, the largest difference over every gene and map
pixel inside the tissue between the maps (values and spread) from the two, and the seconds of
one gene's map and spread from each (median of a few genes; the float16 one converts each
chunk back to float32 first, as a product in float16 is slow on a CPU).

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
    from napari_trihrge.io.map_store import LocationFactors, as_dtype, gene_block_values

    maps = map_store.open_map_store(args.store)
    maps.cache_bytes = 2**62  # every chunk kept as float32
    t = time.perf_counter()
    maps.warm()
    t_warm = time.perf_counter() - t
    exact = [maps.location_chunk(c) for c in range(maps.n_chunks)]

    def half(f: LocationFactors) -> LocationFactors:
        return LocationFactors(knn=f.knn, ridge=as_dtype(f.ridge, np.float16),
                               hidden=as_dtype(f.hidden, np.float16))

    def widen(f: LocationFactors) -> LocationFactors:
        return LocationFactors(knn=f.knn, ridge=as_dtype(f.ridge, np.float32),
                               hidden=as_dtype(f.hidden, np.float32))

    rounded = [half(f) for f in exact]
    weights = maps.weights
    n_genes = args.genes or len(maps.gene_names)
    worst = {"values": 0.0, "spread": 0.0}
    for f32, f16 in zip(exact, rounded, strict=True):
        back = widen(f16)
        for g0 in range(0, n_genes, map_store.GENE_BLOCK):
            block = np.arange(g0, min(n_genes, g0 + map_store.GENE_BLOCK))
            a_val, a_std = gene_block_values(weights, f32, block)
            b_val, b_std = gene_block_values(weights, back, block)
            worst["values"] = max(worst["values"], float(np.abs(a_val - b_val).max()))
            if a_std is not None:
                worst["spread"] = max(worst["spread"], float(np.abs(a_std - b_std).max()))

    def one_gene(chunks, convert) -> float:
        times = []
        for g in np.linspace(0, len(maps.gene_names) - 1, args.timed).astype(int):
            t = time.perf_counter()
            for f in chunks:
                gene_block_values(weights, convert(f), np.array([g]))
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    def nbytes(chunks) -> int:
        return sum(a.nbytes for f in chunks for a in f.arrays().values())

    print(f"{args.store}: {maps.n_locations} locations, {len(maps.gene_names)} genes "
          f"({n_genes} compared), {maps.n_chunks} chunks; networks over every location "
          f"{t_warm:.1f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'cache':8s} {'MB':>8s} {'KB/location':>12s} {'one gene s':>11s}")
    for name, chunks, convert in (("float32", exact, lambda f: f),
                                  ("float16", rounded, widen)):
        print(f"{name:8s} {nbytes(chunks) / 1e6:8.1f} {nbytes(chunks) / maps.n_locations / 1e3:12.2f} "
              f"{one_gene(chunks, convert):11.3f}")
    print(f"largest difference float16 - float32 cache: values {worst['values']:.2e}, spread "
          f"{worst['spread']:.2e} (tolerance {map_store.FLOAT16_TOLERANCE:g})")


if __name__ == "__main__":
    main()
