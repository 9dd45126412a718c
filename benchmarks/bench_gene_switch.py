"""How fast does the Gene explorer switch the displayed gene on a 1000 x 1000 map?

Builds a (genes, 1000, 1000) float32 map over the synthetic sample (stored as an OME-Zarr chunked
one gene per chunk, as ``trihrge enhance`` writes it, or in memory), opens a real napari viewer
with the H&E, the spots and the map, then switches through the genes the way the Gene explorer
does (``Session.show_gene``: read the gene, one shared colour scale, swap the map layer's data,
recolour the spots) and times each step: wall time, and the process's CPU time (all its
threads, the software renderer's included), which other jobs on the machine disturb less.
``--profile N`` prints the N costliest functions of the switches. Needs a display (run under
``xvfb-run`` on a server).

    xvfb-run -a python benchmarks/bench_gene_switch.py --genes 200 --size 1000
    xvfb-run -a python benchmarks/bench_gene_switch.py --store factorised --genes 1000 \
        --size 852 --locations 115000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_maps(genes: list[str], size: int, extent_um: float, store: str, tmp: Path,
              locations: int | None = None):
    """Smooth random maps (compressible like real ones) with a round tissue mask (of about
    ``locations`` map pixels when given)."""
    from napari_trihrge.tl import DenseMaps

    stride = extent_um / size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    radius = 0.45 if locations is None else min(0.5, np.sqrt(locations / np.pi) / size)
    mask = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < radius**2
    origin = np.array([stride / 2, stride / 2])

    def plane(k: int) -> np.ndarray:
        f = rng.uniform(1, 6, 4)
        p = (np.sin(f[0] * 6.28 * yy + f[1]) * np.cos(f[2] * 6.28 * xx + f[3]) + 1.2) * (1 + k % 3)
        p = p.astype(np.float32)
        p[~mask] = np.nan
        return p

    if store == "factorised":
        from bench_maps_scale import random_factor_store

        return random_factor_store(genes, mask, stride, origin, tmp / "maps.store.zarr")
    if store == "memory":
        values = np.stack([plane(k) for k in range(len(genes))])
    else:
        from napari_trihrge.io import open_ome_zarr_map

        path = tmp / "maps.ome.zarr"
        with open_ome_zarr_map(path, (len(genes), size, size), um_per_px=stride,
                               gene_names=genes, origin_rc_um=origin, fill_value=np.nan) as w:
            for k in range(len(genes)):
                w[k] = plane(k)
        from napari_trihrge.napari._reader import read_maps

        values = read_maps(path).values
    return DenseMaps(values=values, stride_um=stride, origin_rc_um=origin, gene_names=genes,
                     mask=mask)


def factor_floor(maps) -> dict:
    """What bounds a gene of a map store, each a step timed like the switch: reading every
    cached hidden value once (memory bandwidth), the networks' output layer alone (one
    gene, every location) and everything else of the gene's map and spread."""
    import torch

    from napari_trihrge.io import map_store

    chunks = [maps.location_chunk(c) for c in range(maps.n_chunks)]  # cached: no disk
    hidden = [torch.from_numpy(c.hidden) for c in chunks]
    weights = maps.weights

    def stream(i):
        for h in hidden:
            h.sum()

    def output_layer(i):
        for c in chunks:
            map_store._networks_linear(c.hidden, weights.network_weight[:, [i]])

    def whole_gene(i):
        for c in chunks:
            map_store.gene_block_values(weights, c, np.array([i]))

    n_bytes = sum(h.numel() * h.element_size() for h in hidden)
    return {f"stream the factors once ({n_bytes / 2**30:.2f} GiB)": stream,
            "networks' output layer, 1 gene": output_layer,
            "gene's map + spread (engine)": whole_gene}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--size", type=int, default=1000, help="map rows = cols")
    ap.add_argument("--locations", type=int, default=None,
                    help="map pixels inside the tissue (default: a disk of 0.9 x the size)")
    ap.add_argument("--store", choices=("zarr", "memory", "factorised"), default="zarr",
                    help="factorised: a map store (random factors of a real store's sizes)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N costliest functions (cProfile, cumulative) of the "
                         "switches (show_gene + redraw) after the table")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._sample_data import synthetic_adata, synthetic_sample

    adata = synthetic_adata(0)
    genes = [str(g) for g in adata.var_names[: args.genes]]
    extent = float(adata.uns["spatial"]["synthetic"]["images"]["hires"].shape[0]) * float(
        adata.uns["trihrge"]["um_per_px"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        maps = make_maps(genes, args.size, extent, args.store, Path(tmp), args.locations)
        t_build = time.perf_counter() - t0
        t_warm = None
        if hasattr(maps, "warm"):  # a store: its networks run first (the viewer's worker,
            from napari_trihrge.tl._maps import display_cache_bytes  # with its cache)

            maps.cache_bytes = max(maps.cache_bytes, display_cache_bytes())
            t0 = time.perf_counter()
            maps.warm()
            t_warm = time.perf_counter() - t0

        viewer = napari.Viewer(show=True)
        viewer.window.resize(1400, 900)
        for data, kw, kind in synthetic_sample():
            getattr(viewer, f"add_{kind}")(data, **kw)
        ge = GeneExplorer(viewer)
        s = ge.session
        from types import SimpleNamespace

        s.enhance = SimpleNamespace(maps=maps, virtual=None, spots=adata)
        t = time.perf_counter()
        s.show_gene(genes[0])  # creates the map layer (a store: reads its factors)
        viewer.reset_view()
        QApplication.processEvents()
        t_first = time.perf_counter() - t

        rows = {"read + scale (engine)": [], "show_gene (layers updated)": [],
                "show_gene + redraw": [], "screenshot after it": [],
                "redraw, nothing changed": []}
        # the floor reads every chunk's factors from the cache: only where it holds them all
        floor = factor_floor(maps) if args.store == "factorised" and maps.ready() else {}
        rows.update({k: [] for k in floor})
        canvas = viewer.window._qt_viewer.canvas
        import cProfile

        profiler = cProfile.Profile() if args.profile else None
        # the engine's read and the switch on different genes: a map store keeps a gene it
        # computed, so showing a gene just read would not compute it again
        engine_order, shown_order = genes[1::2], genes[2::2] + genes[:1]
        cpu = {k: [] for k in rows}  # CPU seconds of this process, all its threads
        for i, (ge_gene, g) in enumerate(zip(engine_order, shown_order, strict=False)):
            t, c = time.perf_counter(), time.process_time()
            vals = L.map_values(maps, ge_gene)
            L.map_display_data(vals, L.shared_contrast_limits(vals))
            rows["read + scale (engine)"].append(time.perf_counter() - t)
            cpu["read + scale (engine)"].append(time.process_time() - c)
            if profiler is not None:
                profiler.enable()
            t, c = time.perf_counter(), time.process_time()
            s.show_gene(g)
            t1, c1 = time.perf_counter(), time.process_time()
            QApplication.processEvents()
            t2, c2 = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.disable()
            rows["show_gene (layers updated)"].append(t1 - t)
            rows["show_gene + redraw"].append(t2 - t)
            cpu["show_gene (layers updated)"].append(c1 - c)
            cpu["show_gene + redraw"].append(c2 - c)
            t, c = time.perf_counter(), time.process_time()
            canvas.native.update()  # the same canvas drawn again: what any redraw costs
            QApplication.processEvents()
            rows["redraw, nothing changed"].append(time.perf_counter() - t)
            cpu["redraw, nothing changed"].append(time.process_time() - c)
            for name, step in floor.items():
                t, c = time.perf_counter(), time.process_time()
                step(i)
                rows[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
            if i % 5 == 0:  # a screenshot renders the canvas for sure (slower: GPU readback)
                t = time.perf_counter()
                viewer.screenshot(canvas_only=True, flash=False)
                rows["screenshot after it"].append(time.perf_counter() - t)
        viewer.close()

    print(f"gene switch on a {args.size} x {args.size} map ({int(maps.mask.sum())} inside the "
          f"tissue), {args.genes} genes, store={args.store} (maps built in {t_build:.1f} s; "
          f"first gene shown in {t_first:.2f} s)")
    if t_warm is not None:
        print(f"the store's networks over every location (FactorMaps.warm, what the viewer's "
              f"worker does first): {t_warm:.1f} s; factor cache {maps._cached_bytes / 1e9:.2f} "
              f"GB of {maps.cache_bytes / 1e9:.1f} GB, {len(maps._cache)} of {maps.n_chunks} "
              "chunks kept")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end (the "
          "CPU column: this process's CPU time, all threads, p50: less sensitive to other jobs)")
    print(f"{'step':30s} {'n':>4s} {'mean ms':>8s} {'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>7s} "
          f"{'CPU ms':>7s}")
    for name, ts in rows.items():
        ms = np.asarray(ts) * 1000
        cpu_ms = np.median(cpu[name]) * 1000 if cpu.get(name) else np.nan
        print(f"{name:30s} {len(ms):4d} {ms.mean():8.1f} {np.median(ms):7.1f} "
              f"{np.percentile(ms, 95):7.1f} {ms.max():7.1f} {cpu_ms:7.1f}")
    if profiler is not None:
        import pstats

        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
