"""The sample contract: the best image of a sample and checks every reader runs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import TrihrgeInputError
from ..geometry import validate_um_per_px, xy_px_to_rc_um
from ._common import check_inside
from .image import TissueImage, blank_at_spots, image_size_px, open_image, to_rgb_uint8

_SCALEF = {"hires": "tissue_hires_scalef", "lowres": "tissue_lowres_scalef"}


def _library(adata: Any) -> tuple[str | None, dict]:
    """(library_id, uns['spatial'][library_id] or {})."""
    info = adata.uns.get("trihrge", {})
    spatial = adata.uns.get("spatial", {}) or {}
    lib = info.get("library_id")
    if lib is None and len(spatial) == 1:
        lib = next(iter(spatial))
    return lib, (spatial.get(lib, {}) if lib is not None else {})


def trihrge_info(adata: Any) -> dict:
    """``uns['trihrge']`` or an actionable error when the sample was not read by napari-trihrge."""
    info = adata.uns.get("trihrge")
    if not info or "um_per_px" not in info:
        raise TrihrgeInputError(
            "the sample has no uns['trihrge'] with its pixel size",
            "read it with napari_trihrge.io.read(...) (or io.read_h5ad) so that the pixel size "
            "and platform are set")
    return info


def available_images(adata: Any) -> list[str]:
    """Image sources present, best first: among 'fullres', 'hires', 'lowres'."""
    info = adata.uns.get("trihrge", {})
    _, lib = _library(adata)
    out = []
    if info.get("spatialdata", {}).get("image"):
        out.append("spatialdata")  # the H&E in the SpatialData store the sample came from
    if info.get("fullres_image_path"):
        out.append("fullres")
    images = lib.get("images", {}) or {}
    scalefactors = lib.get("scalefactors", {}) or {}
    for res in ("hires", "lowres"):
        if res in images and is_positive_number(scalefactors.get(_SCALEF[res])):
            out.append(res)
    return out


def is_positive_number(value: Any) -> bool:
    """Whether ``value`` reads as a finite number above 0 (numbers or numeric strings)."""
    try:
        return bool(np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        return False


def get_image(adata: Any, resolution: str | None = None) -> TissueImage:
    """Return the best image of the sample.

    The full-resolution file (lazy), else hires, else lowres, each with its own pixel size
    (``fullres_um_per_px / scalef``); for a sample read from a SpatialData store, its image there
    (lazy). ``resolution`` forces one of 'spatialdata', 'fullres', 'hires', 'lowres'.
    """
    info = trihrge_info(adata)
    um_full = float(info["um_per_px"])
    _, lib = _library(adata)
    options = available_images(adata)
    if resolution is None and "fullres" in options and \
            not Path(str(info["fullres_image_path"])).is_file():
        if len(options) > 1:
            warnings.warn(f"full-resolution image {info['fullres_image_path']} not found; "
                          f"using the {options[1]} image instead", stacklevel=2)
        options = options[1:] if len(options) > 1 else options
    if resolution is not None:
        if resolution not in options:
            raise TrihrgeInputError(f"the sample has no {resolution!r} image",
                                    f"available: {options or 'none'}")
        options = [resolution]
    if not options:
        raise TrihrgeInputError(
            "the sample has no H&E image (no full-resolution image path and no hires/lowres "
            "image in uns['spatial'])",
            "pass the full-resolution H&E image (--image / fullres_image=...) or read a Space "
            "Ranger folder that contains spatial/tissue_hires_image.png")
    rc_um = None
    if "spatial" in adata.obsm:
        rc_um = xy_px_to_rc_um(np.asarray(adata.obsm["spatial"])[:, :2], um_full)
    blank: list[str] = []
    for res in options:
        img = _open_resolution(adata, res, info, lib, um_full)
        if rc_um is None or not blank_at_spots(img, rc_um):
            if blank:
                warnings.warn(f"the {' and '.join(blank)} image of the sample is blank (one flat "
                              f"colour under the spots); using the {res} image instead",
                              stacklevel=2)
            return img
        img.close()
        blank.append(res)
    raise TrihrgeInputError(
        f"the {' and '.join(blank)} image of the sample is blank (one flat colour under the "
        "spots: all black, all white or transparent), so there is no tissue to learn from",
        "pass the H&E the spots were measured on (--image / fullres_image=...), or re-export "
        "the image (some tools write an empty PNG)")


def _open_resolution(adata: Any, res: str, info: dict, lib: dict, um_full: float) -> TissueImage:
    """Return the sample's image at one resolution.

    ``res`` is one of 'spatialdata', 'fullres', 'hires' or 'lowres'.
    """
    if res == "spatialdata":
        from .spatialdata import open_store_image

        return open_store_image(info)
    if res == "fullres":
        return open_image(str(info["fullres_image_path"]), um_full)
    scalef = float(lib["scalefactors"][_SCALEF[res]])
    arr = to_rgb_uint8(lib["images"][res], f"the {res} image")
    return TissueImage.from_array(arr, um_full / scalef,
                                  source=f"{info.get('source', 'sample')} [{res}]")


def image_extent_px(adata: Any) -> tuple[tuple[float, float], float, str] | None:
    """Extent of the best image in full-resolution pixels without decoding it.

    ``((height, width), one_image_px_in_fullres_px, description)``; None when no image.
    """
    info = adata.uns.get("trihrge", {})
    _, lib = _library(adata)
    for res in available_images(adata):
        if res == "spatialdata":
            from .spatialdata import store_image_extent

            scale = float(info["spatialdata"]["image_scale"])
            return store_image_extent(info), scale, f"image {info['spatialdata']['image']!r}"
        if res == "fullres":
            path = Path(str(info["fullres_image_path"]))
            if not path.is_file():
                continue
            h, w = image_size_px(path)
            return (float(h), float(w)), 1.0, f"full-resolution image {path.name}"
        scalef = float(lib["scalefactors"][_SCALEF[res]])
        h, w = np.shape(lib["images"][res])[:2]
        return (h / scalef, w / scalef), 1.0 / scalef, f"{res} image (scalefactor {scalef:g})"
    return None


def check_counts(X: Any, what: str = "the counts") -> None:
    """Raise unless the count matrix is non-empty, finite, non-negative and not all zero."""
    if X is None or X.shape[0] == 0 or X.shape[1] == 0:
        shape = None if X is None else X.shape
        raise TrihrgeInputError(f"{what} are empty (shape {shape})",
                                "check that the counts file holds spots x genes")
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size and not np.all(np.isfinite(data)):
        raise TrihrgeInputError(f"{what} contain NaN or infinite values",
                                "pass raw counts (integers >= 0)")
    if data.size and float(np.min(data)) < 0:
        raise TrihrgeInputError(f"{what} contain negative values",
                                "pass raw counts (integers >= 0), not scaled or centred data")
    if not data.size or float(np.max(data)) == 0:
        raise TrihrgeInputError(f"{what} are all zero ({X.shape[0]} spots x {X.shape[1]} genes)",
                                "check that the counts file is the right one and not empty")
    problem = raw_counts_problem(X)
    if problem:
        raise TrihrgeInputError(
            f"{what} are not raw counts: {problem}",
            "pass the raw UMI counts per spot (for an .h5ad, the layer or .raw that holds them; "
            "for Space Ranger, filtered_feature_bc_matrix.h5); gene selection (seurat_v3) and "
            "normalisation need them")


#: Share of non-zero values allowed to be fractional in raw counts (ambient-corrected counts
#: carry a few).
MAX_FRACTIONAL_SHARE = 0.001


def raw_counts_problem(X: Any) -> str | None:
    """Why ``X`` does not look like raw counts (log-normalised, scaled, CPM), or None."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    data = data[data != 0]
    if data.size > 1_000_000:
        data = data[:: data.size // 1_000_000 + 1]
    if data.size:
        fractional = float(np.mean(np.abs(data - np.round(data)) > 1e-3))
        if fractional > MAX_FRACTIONAL_SHARE:
            return (f"{fractional:.0%} of the non-zero values are not whole numbers "
                    "(log-normalised or scaled data?)")
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    totals = totals[totals > 0]
    if len(totals) >= 10 and np.std(totals) <= 1e-4 * np.mean(totals):
        return (f"every spot has the same total ({np.mean(totals):.6g}): normalised to a "
                "constant sum (CPM or normalize_total)?")
    return None


def validate_sample(adata: Any) -> Any:
    """Check a sample against the data model.

    Plausible pixel size, spot coordinates present and inside the image, counts non-empty. Returns
    ``adata``; raises TrihrgeInputError.
    """
    info = trihrge_info(adata)
    validate_um_per_px(float(info["um_per_px"]), what="of the sample")
    if "spatial" not in adata.obsm:
        raise TrihrgeInputError("the sample has no spot coordinates (obsm['spatial'])",
                                "store x/y in full-resolution pixels in obsm['spatial']")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise TrihrgeInputError(f"obsm['spatial'] must be (n_spots, 2), got {xy.shape}",
                                "store one x and one y full-resolution pixel per spot")
    check_counts(adata.X)
    n_places = len(np.unique(np.round(xy, 3), axis=0))
    if adata.n_obs >= 3 and n_places < max(3, 0.5 * adata.n_obs):
        raise TrihrgeInputError(
            f"the {adata.n_obs} spots sit at only {n_places} distinct position(s)",
            "check the spot coordinates (x/y in full-resolution pixels, one place per spot)")
    extent = image_extent_px(adata)
    if extent is not None:
        (h, w), img_px, what = extent
        check_inside(xy, adata.obs_names, (h, w), tol_px=2.0 * img_px, image_what=what)
    return adata
