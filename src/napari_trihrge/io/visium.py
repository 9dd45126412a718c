"""10x Visium: read a Space Ranger ``outs/`` folder into the sample data model."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TrihrgeInputError
from ..geometry import resolve_pixel_size
from ._common import array_index_of, match_ids, read_table
from .image import image_size_px, read_rgb

OUTS_HINT = (
    "a Space Ranger outs/ folder contains filtered_feature_bc_matrix.h5 (or the folder "
    "filtered_feature_bc_matrix/ with matrix.mtx.gz, barcodes.tsv.gz and features.tsv.gz) and "
    "a spatial/ folder "
    "with tissue_positions.csv (or tissue_positions_list.csv / tissue_positions.parquet), "
    "scalefactors_json.json and tissue_hires_image.png and/or tissue_lowres_image.png; pass "
    "that folder (or its parent)")

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres"]
POSITION_FILES = ("tissue_positions.csv", "tissue_positions.parquet",
                  "tissue_positions_list.csv")
#: Space Ranger's count matrix as a folder (Market Exchange format), read when the .h5 is absent
MATRIX_FOLDER = "filtered_feature_bc_matrix"


def find_outs(path: str | os.PathLike) -> Path:
    """Return the Space Ranger ``outs/`` folder for ``path``.

    ``path`` is the folder itself, its parent, or the matrix file inside it.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(".h5"):
        return path.parent
    if not path.is_dir():
        raise TrihrgeInputError(f"Space Ranger folder not found: {path}", OUTS_HINT)
    if not _matrix_candidates(path) and (path / "outs").is_dir():
        return path / "outs"
    return path


def _matrix_candidates(outs: Path) -> list[Path]:
    exact = outs / "filtered_feature_bc_matrix.h5"
    if exact.is_file():
        return [exact]
    found = sorted(outs.glob("*filtered_feature_bc_matrix.h5"))
    if found:
        return found
    folder = outs / MATRIX_FOLDER
    if any((folder / name).is_file() for name in ("matrix.mtx.gz", "matrix.mtx")):
        return [folder]
    return []


def is_visium_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a Space Ranger outs/ folder (or holds one in outs/)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return bool(_matrix_candidates(path)) or ((path / "outs").is_dir()
                                               and bool(_matrix_candidates(path / "outs")))


def find_matrix(outs: Path) -> Path:
    """Return the one count matrix in ``outs``; raise when none or several.

    That is ``filtered_feature_bc_matrix.h5``, else the folder ``filtered_feature_bc_matrix/``.
    """
    cands = _matrix_candidates(outs)
    if len(cands) == 1:
        return cands[0]
    if len(cands) > 1:
        raise TrihrgeInputError(
            f"several count matrices in {outs}: {', '.join(p.name for p in cands)}",
            "keep one filtered_feature_bc_matrix.h5 in the folder")
    raise TrihrgeInputError(f"filtered_feature_bc_matrix.h5 not found in {outs}", OUTS_HINT)


def read_positions(spatial: Path) -> pd.DataFrame:
    """Spot positions indexed by barcode with the standard Space Ranger columns.

    Handles ``tissue_positions.csv`` (with header, Space Ranger >= 2), the legacy headerless
    ``tissue_positions_list.csv`` and ``tissue_positions.parquet``.
    """
    if spatial.is_file():
        files = [spatial]
    else:
        files = [spatial / f for f in POSITION_FILES if (spatial / f).is_file()]
    if not files:
        raise TrihrgeInputError(
            f"no spot positions file (tissue_positions.csv, tissue_positions_list.csv or "
            f"tissue_positions.parquet) in {spatial}", OUTS_HINT)
    path = files[0]
    if path.name.endswith(".parquet"):
        df = read_table(path, what="spot positions")
    else:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        has_header = first.split(",")[0].strip().strip('"').lower() == "barcode"
        df = read_table(path, header=0 if has_header else None, what="spot positions")
        if not has_header:
            if df.shape[1] != 6:
                raise TrihrgeInputError(
                    f"{path.name} has {df.shape[1]} columns; a headerless positions file must "
                    f"have 6 ({', '.join(POSITION_COLUMNS)})", OUTS_HINT)
            df.columns = POSITION_COLUMNS
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise TrihrgeInputError(f"{path.name} lacks the column(s) {missing}",
                                f"expected the columns {POSITION_COLUMNS}")
    df = df.copy()
    df["barcode"] = df["barcode"].astype(str)
    df = df.set_index("barcode")
    df.index.name = None
    if not df.index.is_unique:
        raise TrihrgeInputError(f"{path.name} lists some barcodes twice",
                                "use the positions file Space Ranger wrote")
    df.attrs["path"] = str(path)
    return df


def read_scalefactors(spatial: Path) -> dict[str, float]:
    """Read ``scalefactors_json.json`` as numbers (numeric strings accepted).

    A scale factor or spot diameter that is not a positive number is dropped with a warning (the
    reader then ignores that image, or measures the pixel size without the spot diameter).
    """
    path = spatial / "scalefactors_json.json"
    if not path.is_file():
        raise TrihrgeInputError(f"scalefactors_json.json not found in {spatial}", OUTS_HINT)
    try:
        with open(path) as fh:
            sf = json.load(fh)
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read {path}: {exc}",
                                "restore scalefactors_json.json from the Space Ranger run") from exc
    if not isinstance(sf, dict):
        raise TrihrgeInputError(f"{path.name} is not a JSON object",
                                "restore scalefactors_json.json from the Space Ranger run")
    out: dict[str, float] = {}
    for key, value in sf.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if np.isfinite(number) and number > 0:
            out[key] = number
        elif key in SCALEFACTOR_KEYS:
            warnings.warn(f"{path.name}: {key} is {value!r}, not a positive number; "
                          f"{SCALEFACTOR_KEYS[key]}", stacklevel=3)
    return out


SCALEFACTOR_KEYS = {
    "spot_diameter_fullres": "the pixel size comes from the spot lattice instead",
    "tissue_hires_scalef": "the hires image is ignored",
    "tissue_lowres_scalef": "the lowres image is ignored",
}


def read_counts_h5(path: Path) -> Any:
    """10x HDF5 count matrix -> AnnData (unique gene symbols, ``var['gene_ids']``)."""
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = sc.read_10x_h5(str(path))
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read the count matrix {path.name}: {exc}",
                                "pass the filtered_feature_bc_matrix.h5 Space Ranger wrote "
                                "(10x HDF5, Cell Ranger v3 layout)") from exc
    adata.var_names_make_unique()
    return adata


def read_counts_mex(folder: Path) -> Any:
    """Read Space Ranger's ``filtered_feature_bc_matrix/`` folder as :func:`read_counts_h5`.

    The folder holds ``matrix.mtx.gz``, ``barcodes.tsv.gz`` and ``features.tsv.gz``.
    """
    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = sc.read_10x_mtx(str(folder), var_names="gene_symbols", make_unique=True)
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read the count matrix folder {folder.name}/: {exc}",
                                "it must hold the matrix.mtx.gz, barcodes.tsv.gz and "
                                "features.tsv.gz Space Ranger wrote") from exc
    return adata


def read_counts(matrix: Path) -> Any:
    """Read the count matrix :func:`find_matrix` found (the 10x HDF5 file or the folder)."""
    return read_counts_mex(matrix) if matrix.is_dir() else read_counts_h5(matrix)


def place_in_tissue(adata, positions: pd.DataFrame, what: str, pos_name: str):
    """Keep the observations marked ``in_tissue`` in Space Ranger's positions table.

    They get ``obs`` array_row / array_col and ``obsm['spatial']`` (x/y full-resolution pixels).
    """
    in_tissue = positions.index[positions["in_tissue"].astype(int) == 1]
    keep = adata.obs_names[adata.obs_names.isin(in_tissue)]
    if len(keep) == 0:
        raise TrihrgeInputError(f"none of the {adata.n_obs} {what} is marked in_tissue in "
                                f"{pos_name}", "check that the positions file belongs to this "
                                "sample")
    if len(keep) < adata.n_obs:
        adata = adata[keep].copy()
    pos = positions.loc[adata.obs_names]
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].astype(int).to_numpy()
    adata.obsm["spatial"] = np.stack([pos["pxl_col_in_fullres"].to_numpy(np.float64),
                                      pos["pxl_row_in_fullres"].to_numpy(np.float64)], axis=1)
    return adata


def on_visium_lattice(array_index: np.ndarray, what: str) -> bool:
    """Whether the spots' (array_row, array_col) lie on Visium's hexagonal lattice.

    On a Visium slide array_row + array_col is even for every spot; a folder in the Space
    Ranger layout from another platform (a square grid) is not, and gets a warning: the
    lattice and the 55 um spot of Visium then do not apply.
    """
    odd = int(np.count_nonzero(np.round(array_index).astype(np.int64).sum(axis=1) % 2))
    if odd:
        warnings.warn(f"{what}: {odd} of {len(array_index)} spots have an odd array_row + "
                      "array_col, which no Visium slide has: the spots are not on Visium's "
                      "hexagonal lattice (another platform in the Space Ranger layout?), so the "
                      "pixel size is not fitted on it; pass --um-per-px and "
                      "--spot-diameter-um with the platform's values", stacklevel=4)
    return odd == 0


def read_visium(path: str | os.PathLike, *, fullres_image: str | os.PathLike | None = None,
                image: str | os.PathLike | None = None, library_id: str | None = None,
                load_images: bool = True, um_per_px: float | None = None,
                spot_diameter_px: float | None = None, spot_diameter_um: float | None = None,
                platform: str | None = None) -> Any:
    """Read a Space Ranger ``outs/`` folder (or its parent) into an AnnData.

    Keeps the in-tissue spots that are in the count matrix. ``obsm['spatial']`` holds x/y in
    full-resolution pixels, ``uns['spatial'][library_id]`` the hires/lowres images (when present)
    and scalefactors, ``uns['trihrge']`` the pixel size: ``um_per_px`` when given, else fitted on
    the spot lattice (``array_row`` / ``array_col``), else from the spot diameter
    (``spot_diameter_px`` or ``spot_diameter_fullres``; see
    :func:`napari_trihrge.geometry.resolve_pixel_size`). ``fullres_image`` (or its alias
    ``image``) is an optional path to the full-resolution H&E. ``platform`` may only be 'visium'.
    """
    from .sample import validate_sample

    if platform not in (None, "visium"):
        raise TrihrgeInputError(
            f"a Space Ranger folder holds a Visium sample, not platform {platform!r}",
            "leave out --platform for Space Ranger folders (or pass --platform visium)")
    if image is not None and fullres_image is not None and Path(image) != Path(fullres_image):
        raise TrihrgeInputError("two different full-resolution images were given",
                                "pass the H&E image once (--image)")
    fullres_image = fullres_image if fullres_image is not None else image
    outs = find_outs(path)
    matrix = find_matrix(outs)
    spatial = outs / "spatial"
    if not spatial.is_dir():
        raise TrihrgeInputError(f"spatial/ folder not found in {outs}", OUTS_HINT)
    adata = read_counts(matrix)
    positions = read_positions(spatial)
    pos_name = Path(positions.attrs["path"]).name
    match_ids(adata.obs_names, positions.index, matrix.name, pos_name,
              "the positions and the matrix must come from the same Space Ranger run (check "
              "the '-1' barcode suffix and that both files belong to this sample)")
    adata = place_in_tissue(adata, positions, f"spots of {matrix.name}", pos_name)

    scalefactors = read_scalefactors(spatial)
    images: dict[str, np.ndarray] = {}
    image_files = {}
    for res in ("hires", "lowres"):
        f = spatial / f"tissue_{res}_image.png"
        if f.is_file() and f"tissue_{res}_scalef" in scalefactors:
            image_files[res] = f
            if load_images:
                images[res] = read_rgb(f)
    sample = outs.parent.name if outs.name == "outs" else outs.name
    lib = str(library_id) if library_id is not None else sample
    sample_what = f"sample {sample}"
    array_index = array_index_of(adata.obs, "visium")
    if array_index is not None and not on_visium_lattice(array_index, sample_what):
        array_index = None  # a lattice fit would assume Visium's steps
    pixel_size = resolve_pixel_size(
        adata.obsm["spatial"], "visium", array_index=array_index,
        um_per_px=um_per_px, spot_diameter_um=spot_diameter_um, what=sample_what,
        spot_diameter_px=spot_diameter_px if spot_diameter_px is not None
        else scalefactors.get("spot_diameter_fullres"))
    if "spot_diameter_fullres" not in scalefactors:  # scanpy/squidpy plot spots with it
        scalefactors["spot_diameter_fullres"] = pixel_size.spot_diameter_um / pixel_size.um_per_px
    adata.uns["spatial"] = {lib: {"images": images, "scalefactors": scalefactors}}
    info: dict[str, Any] = {
        "library_id": lib, "sample": sample, "platform": "visium", **pixel_size.record(),
        "source": str(outs.resolve()),
    }
    if fullres_image is not None:
        fpath = Path(fullres_image)
        image_size_px(fpath)  # fails early (missing/unreadable) before anything else
        info["fullres_image_path"] = str(fpath.resolve())
    adata.uns["trihrge"] = info
    if not load_images and image_files and fullres_image is None:
        _check_extent_from_files(adata, image_files, scalefactors)
    return validate_sample(adata)


def _check_extent_from_files(adata: Any, image_files: dict[str, Path],
                             scalefactors: dict[str, float]) -> None:
    """Spots-inside-image check when the PNGs were not loaded (reads their headers only)."""
    from ._common import check_inside

    res, f = next(iter(image_files.items()))
    scalef = scalefactors[f"tissue_{res}_scalef"]
    h, w = image_size_px(f)
    check_inside(adata.obsm["spatial"], adata.obs_names, (h / scalef, w / scalef),
                 tol_px=2.0 / scalef, image_what=f"{res} image (scalefactor {scalef:g})")
