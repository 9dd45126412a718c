"""Builders of small sample folders (Space Ranger outs/, her2st-like legacy ST) shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

FULL_HW = (1000, 1600)  # full-resolution image size in px
SPOT_DIAMETER_PX = 100.0  # -> 0.55 um/px for a 55 um Visium spot
N_GENES = 12
ROW_STEP_PX = 50.0 * np.sqrt(3.0) / 0.55
COL_STEP_PX = 50.0 / 0.55


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """Write spots x genes ``counts`` in the Cell Ranger v3 HDF5 layout."""
    import scipy.sparse as sp

    m = sp.csc_matrix(counts.T.astype(np.int32))  # genes x spots, columns = barcodes
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data)
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("name", data=np.array(genes, dtype="S"))
        ft.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))],
                                              dtype="S"))
        ft.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes),
                                                        dtype="S"))
        ft.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))


def write_10x_mex(folder: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """Write spots x genes ``counts`` as Space Ranger's ``filtered_feature_bc_matrix/`` folder
    (``matrix.mtx.gz``, ``barcodes.tsv.gz``, ``features.tsv.gz``)."""
    import gzip

    import scipy.io
    import scipy.sparse as sp

    folder.mkdir(parents=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(counts.T.astype(np.int32)), field="integer")
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(f"{b}\n" for b in barcodes)
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.writelines(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(genes))


def make_visium_folder(root: Path, *, positions: str = "csv", images=("hires", "lowres"),
                       n_rows: int = 5, n_cols: int = 8, seed: int = 0,
                       barcode_suffix: str = "-1", xy_scale: float = 1.0,
                       zero_counts: bool = False, in_outs: bool = False,
                       matrix: str = "h5") -> Path:
    """A tiny Space Ranger outs/ folder; returns the folder to pass to the reader.

    ``matrix``: the counts as ``filtered_feature_bc_matrix.h5`` ('h5') or only as the folder
    ``filtered_feature_bc_matrix/`` ('mex')."""
    rng = np.random.default_rng(seed)
    outs = root / "sample1" / "outs" if in_outs else root / "sample1"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True)
    rows, cols, prow, pcol = [], [], [], []
    for r in range(n_rows):
        for c in range(r % 2, 2 * n_cols, 2):  # hexagonal array coordinates
            rows.append(r)
            cols.append(c)
            prow.append(150.0 + r * ROW_STEP_PX)
            pcol.append(150.0 + c * COL_STEP_PX)
    n = len(rows)
    barcodes = [f"AC{i:06d}{barcode_suffix}" for i in range(n)]
    in_tissue = np.ones(n, dtype=int)
    in_tissue[:3] = 0  # three spots off tissue
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue, "array_row": rows,
                        "array_col": cols,
                        "pxl_row_in_fullres": np.round(np.array(prow) * xy_scale).astype(int),
                        "pxl_col_in_fullres": np.round(np.array(pcol) * xy_scale).astype(int)})
    if positions == "csv":
        pos.to_csv(spatial / "tissue_positions.csv", index=False)
    elif positions == "legacy":
        pos.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    elif positions == "parquet":
        pos.to_parquet(spatial / "tissue_positions.parquet", index=False)
    scalef = {"hires": 0.2, "lowres": 0.05}
    sf = {"spot_diameter_fullres": SPOT_DIAMETER_PX, "fiducial_diameter_fullres": 150.0,
          "tissue_hires_scalef": scalef["hires"], "tissue_lowres_scalef": scalef["lowres"]}
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    for res in images:
        h, w = (int(round(s * scalef[res])) for s in FULL_HW)
        img = rng.integers(100, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(spatial / f"tissue_{res}_image.png")
    tissue = [b for b, t in zip(barcodes, in_tissue, strict=True) if t]
    counts = rng.poisson(3.0, (len(tissue), N_GENES))
    if zero_counts:
        counts[:] = 0
    genes = [f"G{i}" for i in range(N_GENES - 1)] + ["G0"]  # a duplicated symbol
    if matrix == "mex":
        write_10x_mex(outs / "filtered_feature_bc_matrix", counts, tissue, genes)
    else:
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts, tissue, genes)
    return root / "sample1"
UM_PER_PX = 0.7
STEP_PX = 200.0 / UM_PER_PX  # ST: 200 um between spot centres
IMAGE_HW = (1700, 2300)


def make_st_section(d, sid="S1", *, n_x=8, n_y=6, seed=0, zero=False, image=True):
    """A her2st-like folder: <id>.tsv.gz (ids '<x>x<y>'), <id>_selection.tsv, <id>_HE.jpg."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(1, n_x + 1), np.arange(1, n_y + 1))
    xs, ys = xs.ravel(), ys.ravel()
    sel = pd.DataFrame({
        "x": xs, "y": ys, "new_x": xs + rng.normal(0, 0.02, xs.size),
        "new_y": ys + rng.normal(0, 0.02, xs.size),
        "pixel_x": 100 + (xs - 1) * STEP_PX + rng.normal(0, 2, xs.size),
        "pixel_y": 100 + (ys - 1) * STEP_PX + rng.normal(0, 2, xs.size),
        "selected": 1})
    sel.loc[:3, "selected"] = 0  # four spots not under tissue
    sel.to_csv(d / f"{sid}_selection.tsv", sep="\t", index=False)
    ids = [f"{x}x{y}" for x, y in zip(xs, ys, strict=True)][:-2]  # two selected spots lack counts
    counts = pd.DataFrame(rng.poisson(4, (len(ids), 10)), index=ids,
                          columns=[f"GENE{i}" for i in range(10)])
    if zero:
        counts[:] = 0
    counts.to_csv(d / f"{sid}.tsv.gz", sep="\t")
    if image:
        img = np.full(IMAGE_HW + (3,), 230, np.uint8)
        img[200:1500, 200:2100] = (180, 90, 160)
        Image.fromarray(img).save(d / f"{sid}_HE.jpg", quality=90)
    return d


def make_large_jpeg_section(d, side_px: int = 6000):
    """A her2st-like section 'BIG' whose H&E is a ``side_px`` square textured JPEG (large enough
    that it is decoded in the background to be shown)."""
    make_st_section(d, "BIG", image=False)
    rng = np.random.default_rng(0)
    blocks = rng.integers(120, 240, (side_px // 64 + 1, side_px // 64 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 64, 0), 64, 1)[:side_px, :side_px]
    img ^= rng.integers(0, 16, (side_px, 1, 1), dtype=np.uint8)
    Image.fromarray(img).save(d / "BIG_HE.jpg", quality=85)
    return d
