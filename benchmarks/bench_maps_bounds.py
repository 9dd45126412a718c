"""What bounds each part of the maps stage and of ``export-maps``, and how close it gets.

Measures the machine first, on the threads the run uses: sgemm GFLOP/s (a large
``torch.matmul``), memory bandwidth (a large numpy copy), Blosc zstd / lz4 compression MB/s (on
a block of real map values), and disk write MB/s (a file written and fsync'ed). Then trains one
model on a section (few epochs: training is not measured), runs ``enhance``'s maps stage
(the factorised store written to a temporary folder) and materialises every gene's map from the
store (``export-maps``), with timers around each part: the image features of the map
locations, their kNN weights, the store written, the networks' trunks, the per-gene products,
the pyramid levels, compression, and the writes. Prints, per part, the work done (multiply-adds,
bytes), its time, the machine's rate for the resource that bounds it and the fraction of that
rate reached; and a compressor table (zstd / lz4 x shuffle / bitshuffle x level, bytes and
seconds) on the materialised maps, in float32 and float16.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/bench_maps_bounds.py --stride-um 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# -----------------------------------------------------------------------------------------
# The machine's rates
# -----------------------------------------------------------------------------------------
def _best_rate(work: float, fn, *, min_s: float = 1.0, repeats: int = 3) -> float:
    """Work per second of ``fn`` (best of ``repeats`` runs of at least ``min_s`` each)."""
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        best = max(best, n * work / dt)
    return best


def sgemm_gflops(n: int = 2048) -> float:
    """float32 matrix product GFLOP/s (2 flops per multiply-add) on torch's CPU threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return _best_rate(2.0 * n ** 3 / 1e9, lambda: torch.matmul(a, b, out=out))


def memory_gbps(mib: int = 512) -> float:
    """numpy copy bandwidth GB/s (bytes read + written), one thread."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return _best_rate(2.0 * src.nbytes / 1e9, lambda: np.copyto(dst, src))


def codec(cname: str, clevel: int, shuffle: str):
    from numcodecs import Blosc

    return Blosc(cname=cname, clevel=clevel, shuffle={"noshuffle": Blosc.NOSHUFFLE,
                                                      "shuffle": Blosc.SHUFFLE,
                                                      "bitshuffle": Blosc.BITSHUFFLE}[shuffle])


def compress_rate(chunks: list[np.ndarray], cname: str, clevel: int, shuffle: str
                  ) -> tuple[float, float]:
    """(MB/s of raw data, compression ratio) of a Blosc codec on ``chunks``, one thread."""
    from numcodecs import blosc

    blosc.set_nthreads(1)
    c = codec(cname, clevel, shuffle)
    raw = sum(x.nbytes for x in chunks)
    packed = sum(len(c.encode(x)) for x in chunks)
    rate = _best_rate(raw / 1e6, lambda: [c.encode(x) for x in chunks], min_s=0.5)
    return rate, raw / packed


def disk_write_mbps(folder: Path, mib: int = 256) -> float:
    """MB/s of writing a file in 4 MiB blocks and fsync'ing it."""
    block = np.random.default_rng(0).integers(0, 255, 4 * 2**20, dtype=np.uint8).tobytes()
    path = folder / "disk_rate.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(mib // 4):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return mib * 2**20 / 1e6 / dt


# -----------------------------------------------------------------------------------------
# Timers around the engine's parts
# -----------------------------------------------------------------------------------------
class Timers:
    """Wall seconds and counters per part, from wrappers patched around engine functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, float] = defaultdict(float)
        self._patched: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, part: str, count=None) -> None:
        original = getattr(owner, name)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                self.seconds[part] += time.perf_counter() - t0
                if count is not None:
                    self.count[part] += count(*args, **kw)

        self._patched.append((owner, name, original))
        setattr(owner, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.count.clear()

    def restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()


def trunk_macs_per_location(networks) -> int:
    """Multiply-adds per location of the networks up to their last hidden layer (Linear layers
    but the output layer; the pooling's few products are not counted)."""
    import torch

    from napari_trihrge.io.map_store import _output_layer_keys

    total = 0
    for net in networks:
        skip = {k.rsplit(".", 1)[0] for k in _output_layer_keys(net)}
        for name, mod in net.named_modules():
            if isinstance(mod, torch.nn.Linear) and name not in skip:
                total += mod.in_features * mod.out_features
    return total


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def row(part: str, work: str, seconds: float, rate: float | None, unit: str, bound: str,
        peak: float | None) -> dict:
    reached = (rate / peak) if (rate is not None and peak) else None
    return {"part": part, "work": work, "s": f"{seconds:.2f}",
            "rate": "" if rate is None else f"{rate:.1f} {unit}",
            "bound (machine rate)": bound if peak is None else f"{bound} ({peak:.1f} {unit})",
            "fraction": "" if reached is None else f"{reached:.2f}"}


def main(argv: list[str] | None = None) -> int:
    from _common import SHARED_DATA, limit_threads, load_sample, print_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", default=str(SHARED_DATA / "her2st" / "C3"))
    ap.add_argument("--stride-um", type=float, default=8.0)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--max-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)
    limit_threads(args.threads)

    import torch

    from napari_trihrge.io import map_store, writers
    from napari_trihrge.tl import RunConfig, _maps, enhance
    from napari_trihrge.tl import _shared as shared

    work = Path(tempfile.mkdtemp(prefix="bench_maps_bounds_", dir=args.tmp))
    try:
        threads = torch.get_num_threads()
        gflops = sgemm_gflops()
        gbps = memory_gbps()
        disk = disk_write_mbps(work)
        print(f"machine ({threads} torch threads): sgemm {gflops:.1f} GFLOP/s, memory copy "
              f"{gbps:.1f} GB/s (1 thread), disk write + fsync {disk:.0f} MB/s; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)

        adata = load_sample(args.sample)
        adata.uns.pop("truth", None)
        cfg = RunConfig(n_top_genes=args.genes, device="cpu",
                        train={"max_epochs": args.max_epochs})
        timers = Timers()
        macs: dict[str, float] = defaultdict(float)
        state: dict[str, object] = {}

        def count_trunk(model, inputs, *a, **k):
            per = state.setdefault("trunk_macs", trunk_macs_per_location(model.networks))
            macs["trunks"] += len(inputs) * int(per)
            return len(inputs)

        def count_genes(weights, factors, genes, *a, **k):
            n, g = len(factors), len(np.atleast_1d(genes))
            per = (weights.n_networks * (0 if weights.network_weight is None
                                         else weights.network_weight.shape[2])
                   + (0 if weights.ridge_coef is None else weights.ridge_coef.shape[1]))
            macs["gene products"] += n * g * per
            return n * g

        timers.wrap(shared, "_features", "features", lambda image, enc, rc, *a, **k: len(rc))
        timers.wrap(_maps, "_features", "features", lambda image, enc, rc, *a, **k: len(rc))
        timers.wrap(_maps, "_location_inputs", "kNN weights",
                    lambda fm, w, feats, pts, *a, **k: len(pts))
        timers.wrap(map_store.MapStoreWriter, "append", "store written",
                    lambda self, f: len(f))
        timers.wrap(map_store.MapStoreWriter, "finalize", "store written")
        timers.wrap(map_store.FactorModel, "factors", "trunks", count_trunk)
        timers.wrap(map_store, "gene_block_values", "gene products", count_genes)

        from bench_e2e import make_recorder

        rec = make_recorder()
        orig_stage = rec.stage

        def stage(name, total=None):  # time the maps stage's parts only
            if name == "maps":
                timers.reset()
                macs.clear()
            orig_stage(name, total)

        rec.stage = stage
        store_path = work / "maps.store.zarr"
        result = enhance(adata, factor=2, stride_um=args.stride_um, config=cfg, trust=False,
                         map_store=str(store_path), progress=rec)
        rec.close()
        maps_stage = rec.stages["maps"]
        maps_parts = dict(timers.seconds), dict(timers.count), dict(macs)
        maps = result.maps
        n_loc, n_genes = maps.n_locations, len(maps.gene_names)
        print(f"{args.sample} at {args.stride_um:g} um: {n_genes} genes, map "
              f"{maps.mask.shape[0]} x {maps.mask.shape[1]}, {n_loc} locations; maps stage "
              f"{maps_stage['wall_s']:.1f} s wall, {maps_stage['cpu_s']:.1f} s CPU", flush=True)

        # export every gene from the store opened again (the networks run once per chunk)
        timers.reset()
        macs.clear()
        encoded = defaultdict(float)
        base_compressor = map_store.compressor

        timers.wrap(writers.ZarrMapWriter, "write_band", "writer thread (compress + write)")
        timers.wrap(writers, "coarsen_half", "pyramid levels",
                    lambda block, valid=None: block.nbytes)
        opened = map_store.open_map_store(store_path)
        out = work / "export.ome.zarr"
        t0, c0 = time.perf_counter(), time.process_time()
        map_store.compressor = lambda: _wrap_blosc(base_compressor(), encoded)
        try:
            map_store.materialise_ome_zarr(opened, out)
        finally:
            map_store.compressor = base_compressor
        export_wall, export_cpu = time.perf_counter() - t0, time.process_time() - c0
        export_parts = dict(timers.seconds), dict(timers.count), dict(macs)
        timers.restore()
        written = folder_bytes(out) + folder_bytes(out.with_name("export_std.ome.zarr"))
        print(f"export-maps of every gene: {export_wall:.1f} s wall, {export_cpu:.1f} s CPU, "
              f"{written / 1e6:.0f} MB written", flush=True)

        # the two reads the chunks are chosen for (median of 5 each, level 0)
        import zarr

        arr = zarr.open_group(str(out), mode="r")["0"]
        reads = []
        for what, key in (("one gene, whole section", (n_genes // 2,)),
                          ("one 256 x 256 tile, every gene",
                           (slice(None), slice(arr.shape[1] // 2 - 128, arr.shape[1] // 2 + 128),
                            slice(arr.shape[2] // 2 - 128, arr.shape[2] // 2 + 128)))):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                np.asarray(arr[key])
                times.append(time.perf_counter() - t0)
            reads.append({"read": what, "median s": f"{np.median(times):.3f}",
                          "chunks": str(arr.chunks)})
        print_table(reads, title="Reading the materialised maps")

        # compression rates on the materialised maps' own chunks
        g = min(arr.shape[0], 16)
        sample = [np.ascontiguousarray(arr[0:g, r:r + 128, c:c + 128])
                  for r in range(0, arr.shape[1], 128) for c in range(0, arr.shape[2], 128)]
        sample = [x for x in sample if np.isfinite(x).any()][:24]
        codec_rows, rates = [], {}
        for dtype in ("float32", "float16"):
            data = [x.astype(dtype) for x in sample]
            for cname, clevel, shuffle in [("zstd", 1, "shuffle"), ("zstd", 1, "bitshuffle"),
                                           ("zstd", 1, "noshuffle"), ("zstd", 3, "shuffle"),
                                           ("zstd", 5, "shuffle"), ("lz4", 5, "shuffle"),
                                           ("lz4", 5, "bitshuffle"), ("lz4", 5, "noshuffle"),
                                           ("lz4", 9, "shuffle")]:
                rate, ratio = compress_rate(data, cname, clevel, shuffle)
                rates[(dtype, cname, clevel, shuffle)] = rate
                codec_rows.append({"dtype": dtype, "codec": f"{cname} {clevel} {shuffle}",
                                   "ratio": f"{ratio:.2f}",
                                   "compress MB/s (1 thread)": f"{rate:.0f}",
                                   "MB of the export (est.)":
                                   f"{encoded['raw'] * x_bytes(dtype) / 4 / ratio / 1e6:.0f}"})
        print_table(codec_rows, title="Compressors on the materialised maps' chunks "
                    f"({len(sample)} chunks of {g} x 128 x 128)")

        zstd = rates[("float32", "zstd", 1, "shuffle")]
        parts_s, parts_n, parts_macs = maps_parts
        rows = []
        fl = 2.0  # flops per multiply-add
        rows.append(row("maps: image features", f"{int(parts_n.get('features', 0))} locations",
                        parts_s.get("features", 0.0), None, "", "arithmetic of the image "
                        "filters (not counted)", None))
        spots = maps.weights.spots_expression
        rows.append(row("maps: kNN weights", f"{int(parts_n.get('kNN weights', 0))} locations "
                        f"x {0 if spots is None else len(spots)} spots",
                        parts_s.get("kNN weights", 0.0), None, "", "small", None))
        store_bytes = folder_bytes(store_path)
        rows.append(row("maps: store written", f"{store_bytes / 1e6:.0f} MB",
                        parts_s.get("store written", 0.0),
                        store_bytes / 1e6 / max(parts_s.get("store written", 0.0), 1e-9),
                        "MB/s", "compression zstd", zstd))
        for label, (ps, pm) in (("maps", (parts_s, parts_macs)),
                                ("export", (export_parts[0], export_parts[2]))):
            for part in ("trunks", "gene products"):
                if ps.get(part):
                    gf = pm.get(part, 0.0) * fl / 1e9
                    rows.append(row(f"{label}: {part}", f"{pm.get(part, 0.0) / 1e9:.1f} G MACs",
                                    ps[part], gf / ps[part], "GFLOP/s", "sgemm", gflops))
        es, en, _ = export_parts
        rows.append(row("export: pyramid levels", f"{en.get('pyramid levels', 0) / 1e6:.0f} MB",
                        es.get("pyramid levels", 0.0),
                        en.get("pyramid levels", 0) / 1e9 / max(es.get("pyramid levels", 0),
                                                               1e-9),
                        "GB/s", "memory copy", gbps))
        rows.append(row("export: compression (zarr's threads)",
                        f"{encoded['raw'] / 1e6:.0f} MB -> {encoded['packed'] / 1e6:.0f} MB",
                        encoded["s"], encoded["raw"] / 1e6 / max(encoded["s"], 1e-9), "MB/s",
                        "zstd 1 shuffle, 1 thread", zstd))
        writer_s = es.get("writer thread (compress + write)", 0.0)
        rows.append(row("export: writer thread (compress + write, beside the products)",
                        f"{written / 1e6:.0f} MB", writer_s,
                        written / 1e6 / max(writer_s, 1e-9), "MB/s", "disk write + fsync",
                        disk))
        rows.append(row("export: whole", f"{n_genes} genes", export_wall, None, "", "", None))
        print_table(rows, title=f"What bounds each part ({threads} threads)")
        print(f"maps stage {maps_stage['wall_s']:.1f} s + export-maps {export_wall:.1f} s = "
              f"{maps_stage['wall_s'] + export_wall:.1f} s; load average now "
              f"{os.getloadavg()[0]:.1f} (wall seconds and fractions are of a shared machine)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def x_bytes(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def _wrap_blosc(inner, encoded):
    """A Blosc codec whose encode is timed into ``encoded`` (seconds, raw and packed bytes)."""
    from numcodecs import Blosc

    class TimedBlosc(Blosc):
        def encode(self, buf):
            t0 = time.perf_counter()
            out = super().encode(buf)
            encoded["s"] += time.perf_counter() - t0
            encoded["raw"] += np.asarray(buf).nbytes
            encoded["packed"] += len(out)
            return out

    return TimedBlosc(cname=inner.cname, clevel=inner.clevel, shuffle=inner.shuffle)


if __name__ == "__main__":
    raise SystemExit(main())
