"""How the maps stage grows with the section: a quarter, half and whole Visium capture area.

Each size runs in its own process (so peak memory is that size's own): a synthetic section
(``datasets.synthetic_sample``) of that area, whose H&E is written to disk as a tiled, pyramidal
BigTIFF at ``--um-per-px`` (0.25 um/px: a real full-resolution scan's pixel; 26,000 x 26,000
RGB pixels, 2 GB, for a whole 6.5 mm capture area) and opened lazily, as a scan would be. The
synthetic sample renders its image at ``--render-um-per-px`` (2 um/px by default, 32 MB for the
whole area), and every tile of the TIFF is that image upsampled (nearest pixel) to the TIFF's
pixel, one tile at a time, so the benchmark never holds the full-resolution image: its pixels
carry no detail finer than 2 um. The pyramid has levels at 4x and 16x the pixel (1 and 4 um/px,
as a scanner's SVS), each a tile-by-tile block mean of the 2 um image.

Then one model is trained for a few epochs, the maps stage streams the factors to a factorised
map store on disk (``enhance(map_store=PATH)``, what ``trihrge enhance --stride-um`` writes),
and one gene is computed from the store opened again. Printed per size: map locations, wall
time and peak memory (above the process's start, once the TIFF is written) of the features,
training and maps stages, the store's size on disk and the first and next gene's time
(not with ``--no-gene-timing``).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_maps_scale.py --stride-um 8 \\
        --sizes-um 3250,4596,6500 --um-per-px 0.25

``--um-per-px 0`` keeps the old form: the synthetic image held in memory at
``--render-um-per-px``.

:func:`random_factor_store` writes a store of given sizes with random inputs (for timing
the viewer's gene switch on a whole-section map, ``bench_gene_switch.py --store factorised``).
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

#: the compact CPU network's widths, the default blend's folds, the handcrafted encoder's
#: features (3 windows x 84), the ridge head's neighbour PCs and the measured spots of a her2st
#: section (C3: docs/map-store.md)
N_NETWORKS, SCALES, FEATURES, PCS, SPOTS = 5, 3, 84, 20, 600
COMPACT = {"hidden_dim": 256, "attention_dim": 128, "decoder_dims": (256, 512, 512)}


def random_factor_store(genes: list[str], mask: np.ndarray, stride_um: float,
                        origin_rc_um: np.ndarray, path: Path, *, seed: int = 0):
    """Write a map store (format 3) of a real store's sizes with random inputs and networks.

    Five randomly initialised compact networks with the neighbour input and skip path, a ridge
    head's standardisation, random image features and kNN weights; return it opened.
    """
    import torch

    from napari_trihrge.io import map_store
    from napari_trihrge.model.network import ModelConfig, TriHRGENet
    from napari_trihrge.model.stacking import RidgeHead

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_genes, n_loc = len(genes), int(mask.sum())
    cands = ["knn6", "knn12", "ridge", "network"]
    f32 = np.float32
    config = dict(in_dim=FEATURES, n_genes=n_genes, n_scales=SCALES, neighbour_input=True,
                  neighbour_skip=True, **COMPACT)
    networks = [TriHRGENet(ModelConfig(**config)).eval() for _ in range(N_NETWORKS)]
    hidden = networks[0].config.last_hidden_dim
    n_ridge = SCALES * FEATURES + PCS
    weights = map_store.GeneWeights(
        gene_names=list(genes), candidates=cands, activation="clip", skip_k=12,
        blend_weights=rng.dirichlet(np.ones(4), n_genes),
        candidate_mean=rng.uniform(0, 2, (4, n_genes)), target_mean=rng.uniform(0, 2, n_genes),
        spots_expression=rng.gamma(1.0, 1.0, (SPOTS, n_genes)).astype(f32),
        ridge_coef=rng.normal(0, 0.05, (n_genes, n_ridge)),
        ridge_intercept=rng.uniform(0, 1, n_genes),
        network_weight=rng.normal(0, 0.05, (N_NETWORKS, n_genes, hidden)).astype(f32),
        network_bias=rng.uniform(0, 1, (N_NETWORKS, n_genes)).astype(f32),
        network_skip=rng.uniform(0, 0.5, (N_NETWORKS, n_genes)).astype(f32),
        network_neighbour_mean=rng.uniform(0, 1, (N_NETWORKS, n_genes)).astype(f32))
    ridge = RidgeHead(None, np.zeros(n_ridge), np.ones(n_ridge), np.zeros(n_genes),
                      np.linalg.qr(rng.normal(size=(n_genes, PCS)))[0])
    model = map_store.FactorModel(networks=networks, ridge=ridge, neighbour_k=12)
    writer = map_store.MapStoreWriter(path, weights, mask, stride_um, origin_rc_um,
                                      factor_model=model)
    block = map_store.LOCATION_CHUNK // 4  # bounded temporaries (float32 throughout)
    for s in range(0, n_loc, block):
        m = min(block, n_loc - s)
        knn = {}
        for k in (6, 12):
            w = rng.uniform(0, 1, (m, k)).astype(f32)
            knn[k] = (rng.integers(0, SPOTS, (m, k)).astype(np.int32), w / w.sum(1, keepdims=True))
        writer.append(map_store.LocationFactors(
            knn=knn, features=rng.standard_normal((m, SCALES, FEATURES), dtype=f32)))
    return writer.finalize()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


#: tile side of the written TIFF (pixels)
TIFF_TILE_PX = 512
#: pyramid levels below full resolution, each this factor coarser than the one before
PYRAMID_STEP, PYRAMID_LEVELS = 4, 2


def _tiles(image: np.ndarray, up: int, down: int, shape: tuple[int, int]):
    """Tiles (row by row) of ``image`` upsampled ``up`` times (nearest pixel) then block-averaged
    ``down`` times, of the TIFF level of ``shape``; edge tiles padded with white."""
    from napari_trihrge.blocks import block_mean

    t = TIFF_TILE_PX
    for i in range(0, shape[0], t):
        for j in range(0, shape[1], t):
            rows = np.arange(i, min(i + t, shape[0]))
            cols = np.arange(j, min(j + t, shape[1]))
            if down > 1:  # block means of the render: rows/cols of the render, not upsampled
                src = image[rows[0] * down:(rows[-1] + 1) * down,
                            cols[0] * down:(cols[-1] + 1) * down]
                tile = block_mean(src, down, dtype=np.float32)
                tile = np.clip(tile + 0.5, 0, 255).astype(np.uint8)
            else:
                tile = image[(rows // up)[:, None], (cols // up)[None, :]]
            out = np.full((t, t, 3), 255, dtype=np.uint8)
            out[:tile.shape[0], :tile.shape[1]] = tile
            yield out


def write_scan(image: np.ndarray, render_um_per_px: float, um_per_px: float, path: Path) -> None:
    """Write ``image`` (rendered at ``render_um_per_px``) as a tiled pyramidal BigTIFF at
    ``um_per_px``, tile by tile (see the module docstring)."""
    import tifffile

    up = int(round(render_um_per_px / um_per_px))
    if up < 1 or abs(up * um_per_px - render_um_per_px) > 1e-9:
        raise SystemExit("--render-um-per-px must be an integer multiple of --um-per-px")
    h, w = image.shape[0] * up, image.shape[1] * up
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(_tiles(image, up, 1, (h, w)), shape=(h, w, 3), dtype=np.uint8,
                 tile=(TIFF_TILE_PX, TIFF_TILE_PX), photometric="rgb", subifds=PYRAMID_LEVELS,
                 metadata={"axes": "YXS", "PhysicalSizeX": um_per_px,
                           "PhysicalSizeY": um_per_px})
        for k in range(1, PYRAMID_LEVELS + 1):
            scale = PYRAMID_STEP ** k  # this level's pixel in full-resolution pixels
            shape = (-(-h // scale), -(-w // scale))
            if scale <= up:
                tiles = _tiles(image, up // scale, 1, shape)
            else:
                tiles = _tiles(image, 1, scale // up, shape)
            tw.write(tiles, shape=shape + (3,), dtype=np.uint8, subfiletype=1,
                     tile=(TIFF_TILE_PX, TIFF_TILE_PX), photometric="rgb")


def on_disk_sample(adata, render_um_per_px: float, um_per_px: float, path: Path):
    """``adata`` (synthetic, its image rendered at ``render_um_per_px``) with that image written
    to ``path`` at ``um_per_px`` as its full-resolution image; the in-memory one dropped."""
    lib = adata.uns["trihrge"]["library_id"]
    spatial = adata.uns["spatial"][lib]
    image = spatial["images"].pop("hires")
    write_scan(image, render_um_per_px, um_per_px, path)
    del image
    up = render_um_per_px / um_per_px
    sf = spatial["scalefactors"]
    sf.pop("tissue_hires_scalef")
    sf["tissue_lowres_scalef"] /= up
    sf["spot_diameter_fullres"] *= up
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"]) * up
    adata.uns["trihrge"]["um_per_px"] = um_per_px
    adata.uns["trihrge"]["fullres_image_path"] = str(path)
    return adata


def one_size(size_um: float, genes: int, stride_um: float, um_per_px: float,
             render_um_per_px: float, epochs: int, json_path: str, tmp: str | None,
             gene_timing: bool = True) -> None:
    import gc

    import torch
    from bench_e2e import make_recorder, peak_rss_mb, rss_mb

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io import open_map_store
    from napari_trihrge.tl import RunConfig, enhance

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_maps_scale_", dir=tmp))
    try:
        adata = synthetic_sample(seed=0, size_um=(size_um, size_um), n_genes=genes,
                                 um_per_px=render_um_per_px)
        adata.uns.pop("truth", None)
        image_MiB = 0.0
        if um_per_px:
            t0 = time.perf_counter()
            scan = work / "scan.ome.tif"
            adata = on_disk_sample(adata, render_um_per_px, um_per_px, scan)
            write_s = time.perf_counter() - t0
            image_MiB = scan.stat().st_size / 2**20
        else:
            write_s = 0.0
        gc.collect()
        base = rss_mb()
        cfg = RunConfig(n_top_genes=genes, device="cpu",
                        train={"max_epochs": epochs, "patience": 10**6})
        rec = make_recorder()
        store = work / "maps.store.zarr"
        result = enhance(adata, factor=2, stride_um=stride_um, config=cfg, trust=False,
                         map_store=str(store), progress=rec)
        rec.close()
        n_loc = int(result.maps.mask.sum())
        del result
        first = second = None
        if gene_timing:
            maps = open_map_store(store)
            t0 = time.perf_counter()
            maps.gene(maps.gene_names[0])
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            maps.gene(maps.gene_names[1])
            second = time.perf_counter() - t0
        Path(json_path).write_text(json.dumps({
            "size_um": size_um, "locations": n_loc, "store_MiB": folder_bytes(store) / 2**20,
            "image_MiB": image_MiB, "image_write_s": write_s, "start_MiB": base,
            "stages": {k: {"wall_s": v["wall_s"], "cpu_s": v["cpu_s"],
                           "peak_above_MiB": max(0.0, v["peak_mb"] - base)}
                       for k, v in rec.stages.items()},
            "first_gene_s": first, "next_gene_s": second,
            "process_peak_MiB": peak_rss_mb()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-um", default="3250,4596,6500",
                    help="section sides (a quarter, half, whole 6.5 mm capture area)")
    ap.add_argument("--stride-um", type=float, default=8.0)
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--um-per-px", type=float, default=0.25,
                    help="the full-resolution TIFF's pixel (0: the rendered image in memory)")
    ap.add_argument("--render-um-per-px", type=float, default=2.0,
                    help="the pixel the synthetic image is rendered at")
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the stores (deleted after)")
    ap.add_argument("--no-gene-timing", dest="gene_timing", action="store_false",
                    help="skip opening the store and timing the first and next gene (at 2 um "
                         "over a large area the networks then run at every location, twice)")
    ap.add_argument("--_one", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one is not None:
        one_size(args._one, args.genes, args.stride_um, args.um_per_px,
                 args.render_um_per_px, args.max_epochs, args._json, args.tmp,
                 args.gene_timing)
        return 0
    from _common import print_table

    rows = []
    for size in (float(s) for s in args.sizes_um.split(",")):
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            cmd = [sys.executable, __file__, "--_one", str(size), "--genes", str(args.genes),
                   "--stride-um", str(args.stride_um), "--um-per-px", str(args.um_per_px),
                   "--render-um-per-px", str(args.render_um_per_px),
                   "--max-epochs", str(args.max_epochs), "--_json", fh.name]
            if args.tmp:
                cmd += ["--tmp", args.tmp]
            if not args.gene_timing:
                cmd.append("--no-gene-timing")
            subprocess.run(cmd, check=True)
            rec = json.loads(Path(fh.name).read_text())
        row = {"side_mm": size / 1000, "locations": rec["locations"],
               "image_MiB": rec["image_MiB"], "start_MiB": rec["start_MiB"]}
        for k in ("features", "training", "maps"):
            st = rec["stages"].get(k, {})
            row[f"{k}_s"] = st.get("wall_s")
            row[f"{k}_peak_MiB"] = st.get("peak_above_MiB")
        row.update(store_MiB=rec["store_MiB"], first_gene_s=rec["first_gene_s"],
                   next_gene_s=rec["next_gene_s"], process_peak_MiB=rec["process_peak_MiB"])
        print(json.dumps(rec), flush=True)  # every stage, as recorded
        rows.append(row)
        print(row, flush=True)  # each size as it finishes
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
