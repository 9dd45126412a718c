"""How the maps stage grows with the section: a quarter, half and whole Visium capture area.

Each size runs in its own process (so peak memory is that size's own): a synthetic section
(``datasets.synthetic_sample``) of that area, one model trained for a few epochs, then the
maps stage streamed to a factorised map store on disk (``enhance(map_store=PATH)``, what
``trihrge enhance --stride-um`` writes), then one gene computed from the store opened again.
Printed per size: map locations, wall time and peak memory (above the process's start) of
the features, training and maps stages, the store's size on disk and the first and next
gene's time.

A Visium capture area is 6.5 mm square; its full-resolution scan is about 0.25 um/px, i.e.
26,000 x 26,000 RGB pixels (2 GB in memory). ``--um-per-px`` sets the synthetic image's pixel
size (the image is held in memory by the synthetic sample: use what fits the machine).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_maps_scale.py --stride-um 8 \\
        --sizes-um 3250,4596,6500 --um-per-px 1

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


def one_size(size_um: float, genes: int, stride_um: float, um_per_px: float, epochs: int,
             json_path: str, tmp: str | None) -> None:
    import torch
    from bench_e2e import make_recorder, rss_mb

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io import open_map_store
    from napari_trihrge.tl import RunConfig, enhance

    torch.set_num_threads(1)
    adata = synthetic_sample(seed=0, size_um=(size_um, size_um), n_genes=genes,
                             um_per_px=um_per_px)
    adata.uns.pop("truth", None)
    base = rss_mb()
    cfg = RunConfig(n_top_genes=genes, device="cpu",
                    train={"max_epochs": epochs, "patience": 10**6})
    work = Path(tempfile.mkdtemp(prefix="bench_maps_scale_", dir=tmp))
    try:
        rec = make_recorder()
        store = work / "maps.store.zarr"
        result = enhance(adata, factor=2, stride_um=stride_um, config=cfg, trust=False,
                         map_store=str(store), progress=rec)
        rec.close()
        n_loc = int(result.maps.mask.sum())
        del result
        maps = open_map_store(store)
        t0 = time.perf_counter()
        maps.gene(maps.gene_names[0])
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps.gene(maps.gene_names[1])
        second = time.perf_counter() - t0
        Path(json_path).write_text(json.dumps({
            "size_um": size_um, "locations": n_loc, "store_MiB": folder_bytes(store) / 2**20,
            "stages": {k: {"wall_s": v["wall_s"],
                           "peak_above_MiB": max(0.0, v["peak_mb"] - base)}
                       for k, v in rec.stages.items()},
            "first_gene_s": first, "next_gene_s": second, "peak_MiB": rss_mb()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-um", default="3250,4596,6500",
                    help="section sides (a quarter, half, whole 6.5 mm capture area)")
    ap.add_argument("--stride-um", type=float, default=8.0)
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--um-per-px", type=float, default=1.0)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the stores (deleted after)")
    ap.add_argument("--_one", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one is not None:
        one_size(args._one, args.genes, args.stride_um, args.um_per_px, args.max_epochs,
                 args._json, args.tmp)
        return 0
    from _common import print_table

    rows = []
    for size in (float(s) for s in args.sizes_um.split(",")):
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            cmd = [sys.executable, __file__, "--_one", str(size), "--genes", str(args.genes),
                   "--stride-um", str(args.stride_um), "--um-per-px", str(args.um_per_px),
                   "--max-epochs", str(args.max_epochs), "--_json", fh.name]
            if args.tmp:
                cmd += ["--tmp", args.tmp]
            subprocess.run(cmd, check=True)
            rec = json.loads(Path(fh.name).read_text())
        row = {"side_mm": size / 1000, "locations": rec["locations"]}
        for k in ("features", "training", "maps"):
            st = rec["stages"].get(k, {})
            row[f"{k}_s"] = st.get("wall_s")
            row[f"{k}_peak_MiB"] = st.get("peak_above_MiB")
        row.update(store_MiB=rec["store_MiB"], first_gene_s=rec["first_gene_s"],
                   next_gene_s=rec["next_gene_s"])
        rows.append(row)
        print(row, flush=True)  # each size as it finishes
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
