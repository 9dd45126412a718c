"""How far a format 3 map store (float16 image features) is from the maps of float32 inputs.

Runs ``tl.enhance(map_store=True)`` (the inputs kept in memory as float32: maps equal to the
direct prediction to float rounding, tests/io/test_map_store.py), writes those maps as a store
with the default float16 features (``io.write_map_store``) and compares every gene's map and
spread layer inside the tissue. Prints the largest differences and the spread layer's size.

    OMP_NUM_THREADS=2 python benchmarks/bench_store_inputs_precision.py ../shared/data/her2st/C3
    OMP_NUM_THREADS=2 python benchmarks/bench_store_inputs_precision.py synthetic
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", help="a sample path, or 'synthetic'")
    ap.add_argument("--stride-um", type=float, default=16.0)
    args = ap.parse_args(argv)

    from napari_trihrge import io, tl
    from napari_trihrge.io import map_store

    if args.sample == "synthetic":
        from napari_trihrge.datasets import synthetic_sample

        adata = synthetic_sample(seed=0)
    else:
        adata = io.read(args.sample)
    adata.uns.pop("truth", None)
    t = time.perf_counter()
    result = tl.enhance(adata, factor=2, stride_um=args.stride_um, trust=False,
                        map_store=True)
    print(f"enhance {time.perf_counter() - t:.1f} s: {result.maps}")
    exact = result.maps
    with tempfile.TemporaryDirectory() as tmp:
        half = map_store.write_map_store(exact, Path(tmp) / map_store.STORE_NAME)
        inside = exact.mask
        err = err_std = 0.0
        spread = []
        for g0 in range(0, len(exact.gene_names), 64):
            genes = range(g0, min(len(exact.gene_names), g0 + 64))
            a, a_std = exact.compute(genes, with_std=True)
            b, b_std = half.compute(genes, with_std=True)
            err = max(err, float(np.abs(a[:, inside] - b[:, inside]).max()))
            if a_std is not None:
                err_std = max(err_std, float(np.abs(a_std[:, inside] - b_std[:, inside]).max()))
                spread.append(np.median(a_std[:, inside], axis=1))
    spread = np.concatenate(spread) if spread else np.zeros(1)
    print(f"{len(exact.gene_names)} genes, {int(inside.sum())} locations: largest difference "
          f"values {err:.2e}, spread {err_std:.2e} (tolerance {map_store.FLOAT16_TOLERANCE}); "
          f"spread layer, median over locations: median gene {np.median(spread):.3f}, "
          f"smallest gene {spread[spread > 0].min() if (spread > 0).any() else 0:.3f}")


if __name__ == "__main__":
    main()
