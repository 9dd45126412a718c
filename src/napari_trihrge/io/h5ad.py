"""AnnData ``.h5ad`` files in the scanpy/squidpy spatial convention."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrihrgeInputError
from ..geometry import resolve_pixel_size
from ._common import array_index_of, platform_info


def read_h5ad(path: str | os.PathLike, *, library_id: str | None = None,
              um_per_px: float | None = None, spot_diameter_um: float | None = None,
              platform: str | None = None, fullres_image: str | os.PathLike | None = None,
              image: str | os.PathLike | None = None, spot_diameter_px: float | None = None
              ) -> Any:
    """Read an ``.h5ad`` with ``obsm['spatial']`` (x/y full-resolution pixels).

    ``uns['spatial'][library]['images'|'scalefactors']`` is read when present.

    An existing ``uns['trihrge']`` (our own outputs) is trusted; the keyword arguments override
    it. Otherwise the platform is 'visium' when ``spot_diameter_fullres`` is present (unless
    ``platform`` says otherwise) and the pixel size comes from ``um_per_px``, the spot lattice
    (``obs`` ``array_row``/``array_col`` for Visium, ``array_x``/``array_y`` for ST), the spot
    diameter, or the measured spot spacing. ``image`` is an alias of ``fullres_image``.
    """
    import anndata as ad

    from .image import image_size_px
    from .sample import validate_sample

    fullres_image = fullres_image if fullres_image is not None else image
    path = Path(path)
    if not path.is_file():
        raise TrihrgeInputError(f"h5ad file not found: {path}", "check the path")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read {path.name}: {exc}",
                                "pass an AnnData .h5ad file written by anndata/scanpy") from exc
    _use_raw_counts(adata, path.name)
    if "spatial" not in adata.obsm:
        raise TrihrgeInputError(
            f"{path.name} has no spot coordinates (obsm['spatial'])",
            "store x/y spot centres in full-resolution pixels in obsm['spatial'] (the scanpy / "
            "squidpy convention)")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise TrihrgeInputError(f"obsm['spatial'] in {path.name} has shape {xy.shape}",
                                "store one x and one y full-resolution pixel per spot")
    adata.obsm["spatial"] = xy[:, :2].copy()

    spatial = dict(adata.uns.get("spatial", {}) or {})
    previous = dict(adata.uns.get("trihrge", {}) or {})
    lib = library_id if library_id is not None else previous.get("library_id")
    if lib is None:
        if len(spatial) > 1:
            raise TrihrgeInputError(
                f"{path.name} holds several libraries in uns['spatial']: {sorted(spatial)}",
                "choose one with library_id=... (--library-id)")
        lib = next(iter(spatial)) if spatial else path.stem
    lib = str(lib)
    if spatial and lib not in spatial:
        raise TrihrgeInputError(f"library {lib!r} not found in uns['spatial'] of {path.name}",
                                f"available: {sorted(spatial)}")
    scalefactors = dict((spatial.get(lib, {}) or {}).get("scalefactors", {}) or {})

    if previous.get("um_per_px") is not None and um_per_px is None and platform is None \
            and spot_diameter_um is None and spot_diameter_px is None:
        info = previous  # our own output: trust it
        info["library_id"] = lib
    else:
        plat = platform or previous.get("platform") or (
            "visium" if "spot_diameter_fullres" in scalefactors else None)
        if plat is None:
            raise TrihrgeInputError(
                f"{path.name} does not say which platform it comes from or its pixel size",
                "pass platform='visium' or 'st' (--platform), or the pixel size (--um-per-px)")
        platform_info(plat)
        pixel_size = resolve_pixel_size(
            xy, plat, array_index=array_index_of(adata.obs, plat),
            um_per_px=um_per_px if um_per_px is not None else previous.get("um_per_px"),
            spot_diameter_px=spot_diameter_px if spot_diameter_px is not None
            else _number_or_none(scalefactors.get("spot_diameter_fullres")),
            spot_diameter_um=spot_diameter_um if spot_diameter_um is not None
            else (previous.get("spot_diameter_um") if previous.get("platform") == plat else None),
            what=path.name)
        info = {**previous, "library_id": lib, "platform": plat, **pixel_size.record()}
    info.setdefault("sample", path.stem)
    info.setdefault("platform", "generic")
    info.setdefault("source", str(path.resolve()))
    if fullres_image is not None:
        image_size_px(fullres_image)
        info["fullres_image_path"] = str(Path(fullres_image).resolve())
    if "spot_diameter_um" not in info:
        plat_info = platform_info(str(info["platform"]))
        if plat_info is None:
            raise TrihrgeInputError(f"the spot diameter of {path.name} is unknown",
                                    "pass spot_diameter_um=... (--spot-diameter-um)")
        info["spot_diameter_um"] = float(plat_info["spot_diameter_um"])
    adata.uns["trihrge"] = info
    if spatial and "spot_diameter_fullres" not in scalefactors:
        scalefactors["spot_diameter_fullres"] = float(info["spot_diameter_um"]) / float(
            info["um_per_px"])
        spatial[lib] = {**spatial.get(lib, {}), "scalefactors": scalefactors}
        adata.uns["spatial"] = spatial
    adata.var_names_make_unique()
    return validate_sample(adata)


def _number_or_none(value: Any) -> float | None:
    """Return a stored scale factor as a positive float, or None when it is not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _use_raw_counts(adata: Any, what: str) -> None:
    """Put raw counts in ``X`` when ``X`` is normalised and raw counts are kept beside it.

    When ``layers['counts']`` or ``.raw`` holds the raw counts (the scanpy habit) they go to ``X``
    with a warning; otherwise ``X`` is left for the checks.
    """
    from .sample import raw_counts_problem

    problem = raw_counts_problem(adata.X)
    if not problem:
        return
    candidates = []
    if "counts" in adata.layers:
        candidates.append(("layers['counts']", adata.layers["counts"]))
    if adata.raw is not None and list(adata.raw.var_names) == list(adata.var_names):
        candidates.append((".raw.X", adata.raw.X))
    for name, X in candidates:
        if raw_counts_problem(X) is None:
            warnings.warn(f"{what}: X is not raw counts ({problem}); using {name}",
                          stacklevel=3)
            adata.X = X
            return
