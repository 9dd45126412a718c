"""Dense maps: today's direct prediction of every gene against the factorised map store.

On one section (her2st C3 by default), one model is trained (``enhance`` with the blend, no trust
split) and its maps are made both ways on the same grid:

* **before**: every gene predicted at every location and streamed to ``maps.ome.zarr`` and
  ``maps_std.ome.zarr`` (``predict_maps(factorised=False)``, what ``trihrge enhance`` writes);
* **after**: the per-location factors kept (``factorised=True``, the enhance run's own maps
  stage), written as a store (float32 and float16 dense factors), one gene computed on demand,
  and every gene materialised to OME-Zarr from the store (``export-maps``).

Printed: the maps stage time, bytes on disk, peak memory, time to compute one gene, the largest
difference between the store's maps (values and spread) and the direct ones, a compressor
comparison (Blosc zstd / lz4, shuffle / bitshuffle / none) on the store's factors and on
materialised maps, and the read time of one gene for the whole section and of one 256 x 256
tile for all genes in the old and new chunking.

``--scale`` instead runs the factorised maps stage on synthetic sections of growing area (the
sizes given, each in its own process) and prints how each stage grows.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_map_store.py --stride-um 16
    python benchmarks/bench_map_store.py --sample synthetic --genes 100 --stride-um 16
    python benchmarks/bench_map_store.py --scale --sizes-um 1200,1697 --genes 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


class Peak:
    """Peak RSS (MiB) of this process during a block, sampled by a thread."""

    def __enter__(self):
        import threading

        from bench_e2e import rss_mb

        self.peak = rss_mb()
        self._stop = threading.Event()

        def run():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, rss_mb())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()


def compare_compressors(arrays: dict[str, np.ndarray]) -> list[dict]:
    """Compression ratio and speed of Blosc variants on sample arrays."""
    from numcodecs import Blosc

    rows = []
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr)
        for cname in ("zstd", "lz4"):
            for shuffle, sname in ((Blosc.SHUFFLE, "shuffle"), (Blosc.BITSHUFFLE, "bitshuffle"),
                                   (Blosc.NOSHUFFLE, "none")):
                for clevel in (1, 3, 5):
                    if cname == "lz4" and clevel != 5:
                        continue
                    codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffle)
                    t0 = time.perf_counter()
                    enc = codec.encode(raw)
                    t1 = time.perf_counter()
                    codec.decode(enc)
                    t2 = time.perf_counter()
                    rows.append({"array": name, "dtype": str(raw.dtype), "codec": cname,
                                 "level": clevel, "shuffle": sname,
                                 "ratio": raw.nbytes / len(enc),
                                 "compress_MBps": raw.nbytes / 2**20 / (t1 - t0),
                                 "decompress_MBps": raw.nbytes / 2**20 / (t2 - t1)})
    return rows


def read_timings(path: Path, tile_px: int = 256) -> dict[str, float]:
    """Seconds to read one gene for the whole section and one tile for all genes."""
    import zarr

    arr = zarr.open_group(str(path), mode="r")["0"]
    g, rows, cols = arr.shape
    t0 = time.perf_counter()
    arr[g // 2]
    t1 = time.perf_counter()
    r0, c0 = max(0, rows // 2 - tile_px // 2), max(0, cols // 2 - tile_px // 2)
    arr[:, r0:r0 + tile_px, c0:c0 + tile_px]
    t2 = time.perf_counter()
    return {"one_gene_s": t1 - t0, "one_tile_all_genes_s": t2 - t1,
            "chunks": "x".join(str(c) for c in arr.chunks)}


def section(args) -> None:
    from _common import load_sample, print_table

    from napari_trihrge import geometry
    from napari_trihrge.io import map_store
    from napari_trihrge.tl import RunConfig, enhance
    from napari_trihrge.tl._maps import predict_maps
    from napari_trihrge.tl._shared import _encoder_and_image, sample_geometry

    adata = load_sample(args.sample)
    adata.uns.pop("truth", None)
    # training is not what is measured here: --max-epochs bounds it on a busy machine
    train = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    cfg = RunConfig(n_top_genes=args.genes, device="cpu", train=train)
    work = Path(tempfile.mkdtemp(prefix="bench_map_store_", dir=args.tmp))
    rows: list[dict] = []
    try:
        with Peak() as run:
            result = enhance(adata, factor=2, stride_um=args.stride_um, config=cfg,
                             trust=False, map_store=True)
        maps = result.maps
        n_loc = int(maps.mask.sum())
        print(f"{args.sample}: {result.spots.n_vars} genes, map {maps.mask.shape[0]} x "
              f"{maps.mask.shape[1]} at {args.stride_um:g} um, {n_loc} locations, "
              f"{maps.weights.n_networks} networks of width "
              f"{maps.weights.network_weight.shape[2]}, ridge inputs "
              f"{maps.factors.ridge.shape[1]}; enhance {run.wall_s:.1f} s, peak {run.peak:.0f} "
              f"MiB; timings {json.dumps({k: round(v, 1) for k, v in result.timings_s.items()})}",
              flush=True)
        rows.append({"step": "after: maps stage (factors, in memory)",
                     "wall_s": result.timings_s["maps"], "peak_MiB": run.peak})
        print(rows[-1], flush=True)

        image, encoder = _encoder_and_image(adata, cfg)
        rc_um, _, _ = sample_geometry(result.spots)
        grid = geometry.DenseGrid(maps.origin_rc_um, maps.stride_um, maps.mask)
        windows = (float(cfg.local_window_um), *cfg.windows_um)
        before = work / "before" / "maps.ome.zarr"
        with Peak() as m:
            predict_maps(result.model, image, encoder, rc_um,
                         np.asarray(result.spots.X), windows, args.stride_um, cfg,
                         genes=list(result.spots.var_names), grid=grid,
                         map_path=str(before))
        rows.append({"step": "before: maps stage (every gene predicted, OME-Zarr written)",
                     "wall_s": m.wall_s, "peak_MiB": m.peak,
                     "disk_MiB": float(_mb(folder_bytes(before.parent)))})
        print(rows[-1], flush=True)
        # the factorised maps stage again, now that the encoder's image cache is as warm as
        # for the direct prediction above (the enhance run paid it)
        with Peak() as m:
            predict_maps(result.model, image, encoder, rc_um, np.asarray(result.spots.X),
                         windows, args.stride_um, cfg, genes=list(result.spots.var_names),
                         grid=grid, factorised=True)
        rows.append({"step": "after: maps stage again (factors, in memory, same cache)",
                     "wall_s": m.wall_s, "peak_MiB": m.peak})
        print(rows[-1], flush=True)

        for dtype in (np.float32, np.float16):
            path = work / f"after_{np.dtype(dtype).name}" / map_store.STORE_NAME
            with Peak() as m:
                map_store.write_map_store(maps, path, factor_dtype=dtype)
            rows.append({"step": f"after: store written ({np.dtype(dtype).name} factors)",
                         "wall_s": m.wall_s, "peak_MiB": m.peak,
                         "disk_MiB": float(_mb(folder_bytes(path)))})
            print(rows[-1], flush=True)

        # equality, gene block by gene block, against the written direct maps
        import zarr

        ref_v = zarr.open_group(str(before), mode="r")["0"]
        std_path = before.with_name("maps_std.ome.zarr")
        ref_s = zarr.open_group(str(std_path), mode="r")["0"] if std_path.exists() else None
        inside = maps.mask
        for dtype, n_genes in (("float32", len(maps.gene_names)),
                               ("float16", min(len(maps.gene_names), args.half_genes))):
            opened = map_store.open_map_store(work / f"after_{dtype}" / map_store.STORE_NAME)
            worst_v = worst_s = 0.0
            for g0 in range(0, n_genes, 64):
                idx = range(g0, min(n_genes, g0 + 64))
                v, s = opened.compute(idx, with_std=True)
                ref = np.asarray(ref_v[g0:g0 + len(v)])
                worst_v = max(worst_v, float(np.abs(v[:, inside] - ref[:, inside]).max()))
                if s is not None and ref_s is not None:
                    refs = np.asarray(ref_s[g0:g0 + len(s)])
                    worst_s = max(worst_s, float(np.abs(s[:, inside] - refs[:, inside]).max()))
            print(f"max |store - direct| with {dtype} factors over {n_genes} genes: values "
                  f"{worst_v:.3g}, spread {worst_s:.3g}", flush=True)
        del opened

        # one gene on demand from the float32 store
        opened = map_store.open_map_store(work / "after_float32" / map_store.STORE_NAME)
        with Peak() as m:
            opened.gene(opened.gene_names[0])
        first = m.wall_s
        t0 = time.perf_counter()
        for g in opened.gene_names[1:6]:
            opened.gene(g)
        per_gene = (time.perf_counter() - t0) / 5
        rows.append({"step": "after: first gene from the store (factors read)",
                     "wall_s": first, "peak_MiB": m.peak})
        rows.append({"step": "after: each further gene", "wall_s": per_gene})

        out = work / "export" / "maps.ome.zarr"
        with Peak() as m:
            map_store.materialise_ome_zarr(opened, out)
        rows.append({"step": "after: every gene materialised (export-maps)",
                     "wall_s": m.wall_s, "peak_MiB": m.peak,
                     "disk_MiB": float(_mb(folder_bytes(out.parent)))})
        print_table(rows, ["step", "wall_s", "peak_MiB", "disk_MiB"])

        reads = [{"map": "before", **read_timings(before)},
                 {"map": "after (export)", **read_timings(out)}]
        print_table(reads)
        sample = slice(0, min(n_loc, map_store.LOCATION_CHUNK))
        factors = opened.factors
        arrays = {"network_hidden f32": factors.hidden[0, sample],
                  "network_hidden f16": factors.hidden[0, sample].astype(np.float16),
                  "ridge_inputs f32": factors.ridge[sample],
                  "map 8 genes f32": np.asarray(ref_v[:8])}
        print_table(compare_compressors(arrays))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scale_one(size_um: float, genes: int, stride_um: float, json_path: str) -> None:
    import torch
    from bench_e2e import make_recorder, rss_mb

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.tl import RunConfig, enhance

    torch.set_num_threads(1)
    adata = synthetic_sample(seed=0, size_um=(size_um, size_um), n_genes=genes)
    adata.uns.pop("truth", None)
    base = rss_mb()
    cfg = RunConfig(n_top_genes=genes, device="cpu", train={"max_epochs": 5, "patience": 10**6})
    rec = make_recorder()
    result = enhance(adata, factor=2, stride_um=stride_um, config=cfg, trust=False,
                     map_store=True, progress=rec)
    rec.close()
    maps = result.maps
    t0 = time.perf_counter()
    maps.gene(maps.gene_names[0])
    first = time.perf_counter() - t0
    Path(json_path).write_text(json.dumps({
        "size_um": size_um, "locations": int(maps.mask.sum()),
        "stages": {k: {"wall_s": v["wall_s"], "peak_above_mb": max(0.0, v["peak_mb"] - base)}
                   for k, v in rec.stages.items()},
        "first_gene_s": first}))


def scale(args) -> None:
    from _common import print_table

    rows = []
    for size in (float(s) for s in args.sizes_um.split(",")):
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            subprocess.run([sys.executable, __file__, "--_scale-one", str(size), "--genes",
                            str(args.genes), "--stride-um", str(args.stride_um), "--_json",
                            fh.name], check=True)
            rec = json.loads(Path(fh.name).read_text())
        row = {"size_um": size, "locations": rec["locations"], "first_gene_s": rec["first_gene_s"]}
        for k in ("features", "training", "prediction", "maps"):
            st = rec["stages"].get(k, {})
            row[f"{k}_s"] = st.get("wall_s")
            row[f"{k}_peak_MiB"] = st.get("peak_above_mb")
        rows.append(row)
        print(row, flush=True)  # each size as it finishes
    print_table(rows)


def main(argv: list[str] | None = None) -> int:
    from _common import SHARED_DATA

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", default=str(SHARED_DATA / "her2st" / "C3"))
    ap.add_argument("--stride-um", type=float, default=16.0)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="cap the training epochs (the maps do not depend on how well it is "
                    "trained; default: the usual early stopping)")
    ap.add_argument("--half-genes", type=int, default=128,
                    help="genes compared for the float16 store (all for float32)")
    ap.add_argument("--tmp", default=None, help="folder for the written maps (deleted after)")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--sizes-um", default="1200,1697,2400")
    ap.add_argument("--_scale-one", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._scale_one is not None:
        scale_one(args._scale_one, args.genes, args.stride_um, args._json)
    elif args.scale:
        scale(args)
    else:
        section(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
