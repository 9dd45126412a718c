"""How small can a map store's per-location factors be, and at what error?

Reads a map store written with float32 factors (``trihrge enhance ... --out RUN`` before the
store's float16 default, or ``io.write_map_store(maps, path, factor_dtype=np.float32)``) and
prints, on every gene:

* the largest difference between its maps (values and spread) and the same maps with the
  dense factors rounded to float16, against the spread between the fold networks;
* the effective rank of the fold networks' last hidden layers (concatenated over the networks):
  the share of their variance the first r principal directions leave out;
* the compression ratio and the compression / decompression speed of Blosc variants on the
  float16 factors of the first location chunk;
* the bytes of the store with float32 and float16 factors (written to a temporary folder) and,
  with ``--materialise``, of every gene's materialised maps (``export-maps``).

    python benchmarks/bench_store_precision.py RUN/maps.store.zarr --materialise
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def rounded(factors, dtype):
    from napari_trihrge.io.map_store import LocationFactors

    return LocationFactors(
        knn=factors.knn,
        ridge=None if factors.ridge is None else factors.ridge.astype(dtype).astype(np.float32),
        hidden=None if factors.hidden is None
        else factors.hidden.astype(dtype).astype(np.float32))


def precision(maps, block: int = 64) -> dict[str, float]:
    """Largest |float16 - float32| over every gene, and the fold networks' spread."""
    from napari_trihrge.io.map_store import FactorMaps

    exact = FactorMaps(maps.weights, maps.factors, maps.mask, maps.stride_um, maps.origin_rc_um)
    half = FactorMaps(maps.weights, rounded(exact.factors, np.float16), maps.mask,
                      maps.stride_um, maps.origin_rc_um)
    inside = maps.mask
    worst_v = worst_s = 0.0
    spread_median, spread_p5 = [], []
    for g0 in range(0, len(maps.gene_names), block):
        genes = range(g0, min(len(maps.gene_names), g0 + block))
        v32, s32 = exact.compute(genes, with_std=True)
        v16, s16 = half.compute(genes, with_std=True)
        worst_v = max(worst_v, float(np.abs(v16[:, inside] - v32[:, inside]).max()))
        if s32 is not None:
            worst_s = max(worst_s, float(np.abs(s16[:, inside] - s32[:, inside]).max()))
            # the spread between fold networks, per gene (median and 5th percentile over the
            # locations), divided by the gene's network weight (the networks' own spread)
            w_net = maps.weights.blend_weights[list(genes),
                                               maps.weights.candidates.index("network")] \
                if maps.weights.blend_weights is not None else np.ones(len(genes))
            raw = s32[:, inside] / np.maximum(w_net, 1e-12)[:, None]
            spread_median.extend(np.median(raw, axis=1))
            spread_p5.extend(np.percentile(raw, 5, axis=1))
    return {"max_abs_error_values": worst_v, "max_abs_error_spread": worst_s,
            "fold_spread_median_of_gene_medians": float(np.median(spread_median))
            if spread_median else float("nan"),
            "fold_spread_smallest_gene_median": float(np.min(spread_median))
            if spread_median else float("nan"),
            "fold_spread_median_of_gene_p5": float(np.median(spread_p5))
            if spread_p5 else float("nan")}


def effective_rank(hidden: np.ndarray, ranks=(64, 128, 256, 512, 1024, 1536)) -> list[dict]:
    """Share of the variance of the concatenated hidden layers left out by r directions."""
    n, m, h = hidden.shape
    x = np.concatenate([hidden[i] for i in range(n)], axis=1).astype(np.float64)
    x -= x.mean(axis=0)
    ev = np.clip(np.linalg.eigvalsh(x.T @ x)[::-1], 0, None)
    left = 1.0 - np.cumsum(ev) / ev.sum()
    return [{"rank": r, "of": n * h, "variance_left_out": float(left[r - 1])}
            for r in ranks if r <= n * h]


def compressors(arrays: dict[str, np.ndarray], repeats: int = 3) -> list[dict]:
    from numcodecs import Blosc

    rows = []
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr)
        for cname, levels in (("zstd", (1, 3, 5)), ("lz4", (5,)), ("blosclz", (5,))):
            for shuffle, sname in ((Blosc.SHUFFLE, "shuffle"), (Blosc.BITSHUFFLE, "bitshuffle"),
                                   (Blosc.NOSHUFFLE, "none")):
                for level in levels:
                    codec = Blosc(cname=cname, clevel=level, shuffle=shuffle)
                    enc_s, dec_s = [], []
                    for _ in range(repeats):
                        t0 = time.process_time()
                        enc = codec.encode(raw)
                        t1 = time.process_time()
                        codec.decode(enc)
                        dec_s.append(time.process_time() - t1)
                        enc_s.append(t1 - t0)
                    mb = raw.nbytes / 2**20
                    rows.append({"array": name, "codec": f"{cname} {level} {sname}",
                                 "ratio": round(raw.nbytes / len(enc), 3),
                                 "compress_MB_per_cpu_s": round(mb / max(min(enc_s), 1e-9)),
                                 "decompress_MB_per_cpu_s": round(mb / max(min(dec_s), 1e-9))})
    return rows


#: chunkings (genes x rows x cols; cols None: every column) compared with the export's own
CHUNKINGS = ((32, 32, None), (8, 128, 128), (16, 128, 128), (8, 256, 256))


def chunk_reads(path: Path, work: Path, repeats: int = 5) -> list[dict]:
    """Seconds (median of ``repeats``) to read one gene for the whole section and one
    256 x 256 tile of every gene, for the export's chunks and for :data:`CHUNKINGS` (the first:
    enhance's direct maps), on the same values."""
    import zarr
    from bench_map_store import read_timings

    from napari_trihrge.io.map_store import compressor

    src = zarr.open_group(str(path), mode="r")["0"]
    g, n_rows, n_cols = src.shape
    targets = [path]
    for i, (cg, cr, cc) in enumerate(CHUNKINGS):
        other = work / f"chunks_{i}.zarr"
        dst = zarr.open_group(str(other), mode="w", zarr_format=2).create_array(
            "0", shape=src.shape, chunks=(min(cg, g), min(cr, n_rows), cc or n_cols),
            dtype=src.dtype, compressors=compressor(),
            chunk_key_encoding={"name": "v2", "separator": "/"})
        for g0 in range(0, g, 32):
            dst[g0:g0 + 32] = src[g0:g0 + 32]
        targets.append(other)
    rows = []
    for where in targets:
        runs = [read_timings(where) for _ in range(repeats)]
        rows.append({"chunks": runs[0]["chunks"],
                     "one_gene_s": float(np.median([r["one_gene_s"] for r in runs])),
                     "one_tile_all_genes_s": float(np.median([r["one_tile_all_genes_s"]
                                                              for r in runs])),
                     "MB": folder_mb(where)})
    return rows


def main(argv=None) -> int:
    from _common import print_table

    from napari_trihrge.io import map_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a map store with float32 factors")
    ap.add_argument("--materialise", action="store_true",
                    help="also materialise every gene (export-maps) for its bytes")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--export", default=None,
                    help="an export of the store's maps (export-maps) to time chunkings on, "
                    "instead of the rest")
    args = ap.parse_args(argv)

    if args.export:
        work = Path(tempfile.mkdtemp(prefix="bench_store_chunks_", dir=args.tmp))
        try:
            print_table(chunk_reads(Path(args.export), work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    maps = map_store.open_map_store(args.store)
    dtype = dict(maps._group.attrs).get("factor_dtype")
    if dtype != "float32":
        raise SystemExit(f"{args.store} has {dtype} factors; the reference needs float32")
    factors = maps.factors
    print(f"{maps}; {maps.weights.n_networks} networks x {factors.hidden.shape[2]} hidden, "
          f"{0 if factors.ridge is None else factors.ridge.shape[1]} ridge inputs; hidden "
          f"values at 0: {float((factors.hidden == 0).mean()):.3f}", flush=True)
    print(precision(maps), flush=True)
    print_table(effective_rank(factors.hidden))
    first = slice(0, min(len(factors), map_store.LOCATION_CHUNK))
    print_table(compressors({"network_hidden f16": factors.hidden[0, first].astype(np.float16),
                             "ridge_inputs f16": factors.ridge[first].astype(np.float16)}))
    work = Path(tempfile.mkdtemp(prefix="bench_store_precision_", dir=args.tmp))
    try:
        rows = []
        for dt in (np.float32, np.float16):
            path = work / f"{np.dtype(dt).name}.zarr"
            t0 = time.perf_counter()
            written = map_store.write_map_store(maps, path, factor_dtype=dt)
            rows.append({"what": f"store, {np.dtype(dt).name} factors", "MB": folder_mb(path),
                         "write_s": time.perf_counter() - t0})
            t0 = time.perf_counter()
            written.location_chunk(0)
            rows[-1]["read_first_chunk_s"] = time.perf_counter() - t0
        if args.materialise:
            t0 = time.perf_counter()
            map_store.materialise_ome_zarr(maps, work / "maps.ome.zarr")
            mb = folder_mb(work / "maps.ome.zarr") + folder_mb(work / "maps_std.ome.zarr")
            rows.append({"what": "every gene materialised, float32 (maps + spread)", "MB": mb,
                         "write_s": time.perf_counter() - t0})
            for r in rows[:-1]:
                r["of_materialised"] = r["MB"] / mb
            print_table(rows)
            print_table(chunk_reads(work / "maps.ome.zarr", work))
        else:
            print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
