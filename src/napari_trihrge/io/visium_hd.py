"""10x Visium HD: read Space Ranger's ``binned_outputs/square_XXXum/`` folders, and write one.

A binned folder holds ``filtered_feature_bc_matrix.h5`` and ``spatial/`` with
``tissue_positions.parquet`` (barcode, in_tissue, array_row, array_col, pxl_row_in_fullres,
pxl_col_in_fullres), ``scalefactors_json.json`` (``bin_size_um``, ``microns_per_pixel``,
``spot_diameter_fullres`` = one bin side in full-resolution pixels, ``tissue_hires_scalef``,
``tissue_lowres_scalef``) and the hires/lowres images (also found in ``outs/spatial/``).

Each bin becomes one observation of the sample data model (``docs/architecture.md``); its
"spot diameter" is the bin side. The pixel size is Space Ranger's ``microns_per_pixel`` checked
against the bin lattice (one ``array_row`` / ``array_col`` step is one bin side).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import geometry
from ..errors import TrihrgeInputError

BIN_FOLDER_RE = re.compile(r"^square_(\d{3})um$")
HD_HINT = (
    "pass a Visium HD Space Ranger outs/ folder (with binned_outputs/square_008um/ ...) or one "
    "binned folder (square_002um, square_008um or square_016um) holding "
    "filtered_feature_bc_matrix.h5 and spatial/tissue_positions.parquet + "
    "scalefactors_json.json")

#: Relative disagreement between Space Ranger's pixel size and the bin lattice that warns.
PIXEL_SIZE_TOLERANCE = geometry.PIXEL_SIZE_DISAGREEMENT


def bin_folder_size_um(path: str | os.PathLike) -> int | None:
    """Return the bin size of a ``square_XXXum`` folder name, None for other names."""
    m = BIN_FOLDER_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def _binned_outputs(path: Path) -> Path | None:
    for cand in (path / "binned_outputs", path / "outs" / "binned_outputs"):
        if cand.is_dir():
            return cand
    if path.name == "binned_outputs" and path.is_dir():
        return path
    return None


def available_bin_sizes_um(path: str | os.PathLike) -> list[int]:
    """Return the bin sizes (micrometres) with a folder under ``path``.

    ``path`` is an outs/ or binned_outputs/ folder, or one bin folder.
    """
    path = Path(path)
    size = bin_folder_size_um(path)
    if size is not None:
        return [size]
    binned = _binned_outputs(path)
    if binned is None:
        return []
    return sorted(s for s in (bin_folder_size_um(p) for p in binned.iterdir() if p.is_dir())
                  if s is not None)


def is_visium_hd_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Visium HD outs/ folder or one of its ``square_XXXum`` folders."""
    path = Path(path)
    if not path.is_dir():
        return False
    if bin_folder_size_um(path) is not None:
        return (path / "spatial").is_dir()
    return bool(available_bin_sizes_um(path))


def find_bin_folder(path: str | os.PathLike, bin_size_um: int | None = None) -> Path:
    """Return the ``square_XXXum`` folder for ``path`` and ``bin_size_um``.

    The default is 8 um when there, else the only one.
    """
    path = Path(path)
    if not path.is_dir():
        raise TrihrgeInputError(f"Visium HD folder not found: {path}", HD_HINT)
    own = bin_folder_size_um(path)
    if own is not None:
        if bin_size_um is not None and int(bin_size_um) != own:
            raise TrihrgeInputError(f"{path.name} holds {own} um bins, not {bin_size_um} um",
                                    "pass the square_XXXum folder of the bin size you want, or "
                                    "the outs/ folder with --bin-um")
        return path
    sizes = available_bin_sizes_um(path)
    if not sizes:
        raise TrihrgeInputError(f"no binned_outputs/square_XXXum folder in {path}", HD_HINT)
    if bin_size_um is None:
        if 8 in sizes:
            bin_size_um = 8
        elif len(sizes) == 1:
            bin_size_um = sizes[0]
        else:
            raise TrihrgeInputError(f"{path} holds several bin sizes: {sizes} um",
                                    "choose one with bin_size_um=... (--bin-um)")
    if int(bin_size_um) not in sizes:
        raise TrihrgeInputError(f"no {bin_size_um} um bins in {path} (available: {sizes} um)",
                                "choose an available bin size (--bin-um)")
    binned = _binned_outputs(path)
    assert binned is not None
    return binned / f"square_{int(bin_size_um):03d}um"


def _find_image(bin_folder: Path, res: str) -> Path | None:
    name = f"tissue_{res}_image.png"
    for cand in (bin_folder / "spatial" / name, bin_folder.parent.parent / "spatial" / name):
        if cand.is_file():
            return cand
    return None


def lattice_um_per_px(array_index: np.ndarray, xy_px: np.ndarray, step_um: float,
                      max_points: int = 20000) -> float | None:
    """Measure the pixel size on a square bin lattice (one array step = ``step_um``).

    Measured on a contiguous block of at most ``max_points`` bins; None when the indices do not fit
    a lattice.

    Uses :func:`napari_trihrge.geometry.fit_array_lattice` (least squares of pixel positions on
    array indices).
    """
    idx = np.asarray(array_index, dtype=np.float64)
    xy = np.asarray(xy_px, dtype=np.float64)
    if len(idx) > max_points:  # a square block of indices around the median bin
        centre = np.median(idx, axis=0)
        half = int(np.sqrt(max_points)) // 2
        near = np.all(np.abs(idx - centre) <= half, axis=1)
        if near.sum() >= 3:
            idx, xy = idx[near], xy[near]
    result = geometry.fit_array_lattice(idx, xy, (float(step_um), float(step_um)))
    return None if result is None else float(result.um_per_px)


def check_pixel_size(um_per_px: float, measured_um_per_px: float | None, what: str) -> None:
    """Warn when a recorded pixel size and the one measured on the lattice disagree."""
    if measured_um_per_px is None:
        warnings.warn(f"{what}: the array indices do not fit a regular lattice; the recorded "
                      f"pixel size {um_per_px:.4g} um/px could not be checked", stacklevel=3)
        return
    gap = abs(um_per_px - measured_um_per_px) / min(um_per_px, measured_um_per_px)
    if gap > PIXEL_SIZE_TOLERANCE:
        warnings.warn(f"{what}: the recorded pixel size {um_per_px:.4g} um/px and the bin lattice "
                      f"({measured_um_per_px:.4g} um/px) are {gap:.0%} apart; pass --um-per-px "
                      "if you know the right one", stacklevel=3)


def read_visium_hd(path: str | os.PathLike, *, bin_size_um: int | None = None,
                   fullres_image: str | os.PathLike | None = None, um_per_px: float | None = None,
                   library_id: str | None = None, load_images: bool = True) -> Any:
    """Read one bin size of a Visium HD Space Ranger output into an AnnData.

    One observation per in-tissue bin; ``obs`` keeps ``array_row``/``array_col``;
    ``uns['trihrge']['bin_size_um']`` records the bin size.

    ``path`` is the outs/ folder (``bin_size_um`` picks the bins, default 8 um) or a
    ``square_XXXum`` folder.
    """
    from ._common import match_ids
    from .image import image_size_px, read_rgb
    from .sample import validate_sample
    from .visium import place_in_tissue, read_counts_h5, read_positions, read_scalefactors

    folder = find_bin_folder(path, bin_size_um)
    size_um = float(bin_folder_size_um(folder))  # type: ignore[arg-type]
    spatial = folder / "spatial"
    matrix = folder / "filtered_feature_bc_matrix.h5"
    if not matrix.is_file():
        raise TrihrgeInputError(f"filtered_feature_bc_matrix.h5 not found in {folder}", HD_HINT)
    if not spatial.is_dir():
        raise TrihrgeInputError(f"spatial/ folder not found in {folder}", HD_HINT)
    adata = read_counts_h5(matrix)
    positions = read_positions(spatial)
    match_ids(adata.obs_names, positions.index, matrix.name, "tissue_positions.parquet",
              "the positions and the matrix must come from the same bin folder")
    adata = place_in_tissue(adata, positions, f"bins of {matrix.name}",
                            "tissue_positions.parquet")
    xy = adata.obsm["spatial"]
    scalefactors = read_scalefactors(spatial)
    recorded = scalefactors.get("bin_size_um")
    if recorded is not None and abs(float(recorded) - size_um) > 1e-6:
        raise TrihrgeInputError(
            f"{folder.name} says {recorded:g} um bins in scalefactors_json.json",
            "the folder name and its scalefactors must agree; use the folder Space Ranger wrote")
    measured = lattice_um_per_px(adata.obs[["array_row", "array_col"]].to_numpy(), xy, size_um)
    if um_per_px is not None:
        um, source = geometry.validate_um_per_px(float(um_per_px), what="given"), "given"
    elif scalefactors.get("microns_per_pixel"):
        um, source = float(scalefactors["microns_per_pixel"]), "microns_per_pixel"
        check_pixel_size(um, measured, f"Visium HD {folder.name}")
    elif measured is not None:
        um, source = measured, "lattice"
    else:
        um, source = geometry.um_per_px_from_spot_diameter(
            scalefactors["spot_diameter_fullres"], size_um), "spot_diameter"
    um = geometry.validate_um_per_px(um, what=f"of {folder.name} ({source})")

    images: dict[str, np.ndarray] = {}
    for res in ("hires", "lowres"):
        f = _find_image(folder, res)
        if f is not None and f"tissue_{res}_scalef" in scalefactors and load_images:
            images[res] = read_rgb(f)
    outs = folder.parent.parent
    sample = outs.parent.name if outs.name == "outs" else outs.name
    lib = str(library_id) if library_id is not None else sample
    adata.uns["spatial"] = {lib: {"images": images, "scalefactors": scalefactors}}
    info: dict[str, Any] = {
        "library_id": lib, "sample": sample, "platform": "generic", "assay": "visium_hd",
        "bin_size_um": size_um, "um_per_px": um, "um_per_px_source": source,
        "um_per_px_lattice": measured, "spot_diameter_um": size_um,
        "source": str(folder.resolve()),
    }
    if fullres_image is not None:
        image_size_px(fullres_image)
        info["fullres_image_path"] = str(Path(fullres_image).resolve())
    adata.uns["trihrge"] = info
    return validate_sample(adata)


# -------------------------------------------------------------------------------------------
# Writing a binned folder (for synthetic data with known truth)
# -------------------------------------------------------------------------------------------
def write_10x_h5(path: str | os.PathLike, counts: Any, barcodes: list[str], genes: list[str],
                 gene_ids: list[str] | None = None) -> Path:
    """Write spots x genes ``counts`` (dense or sparse) as a Cell Ranger v3 HDF5 matrix.

    This is the layout ``scanpy.read_10x_h5`` reads.
    """
    import h5py
    import scipy.sparse as sp

    path = Path(path)
    m = sp.csc_matrix(sp.csr_matrix(counts).T.astype(np.int32))  # genes x barcodes
    gene_ids = gene_ids if gene_ids is not None else [f"GENE{i:06d}" for i in range(len(genes))]
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data, compression="gzip")
        g.create_dataset("indices", data=m.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("name", data=np.array(genes, dtype="S"))
        ft.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        ft.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes),
                                                        dtype="S"))
        ft.create_dataset("genome", data=np.array(["synthetic"] * len(genes), dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
    return path


def write_visium_hd_bins(outs: str | os.PathLike, bin_size_um: int, counts: Any,
                         barcodes: list[str], genes: list[str], positions: Any,
                         scalefactors: dict[str, float], images: dict[str, np.ndarray], *,
                         gene_ids: list[str] | None = None) -> Path:
    """Write one ``binned_outputs/square_XXXum/`` folder under ``outs`` (Space Ranger layout).

    The folder holds the matrix of the in-tissue bins, ``positions`` (a DataFrame with the six
    Space Ranger columns for every bin), the scalefactors and the hires/lowres PNGs. Returns the
    folder.
    """
    from PIL import Image

    folder = Path(outs) / "binned_outputs" / f"square_{int(bin_size_um):03d}um"
    spatial = folder / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, genes, gene_ids)
    positions.to_parquet(spatial / "tissue_positions.parquet", index=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
    for res, arr in images.items():
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(spatial / f"tissue_{res}_image.png")
    return folder
