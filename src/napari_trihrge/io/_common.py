"""Helpers shared by the readers: pixel size resolution, table reading, barcode matching."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TrihrgeInputError
from ..geometry import (
    PLATFORMS,
    detect_lattice,
    um_per_px_from_spot_diameter,
    validate_um_per_px,
)


def platform_info(platform: str) -> dict[str, Any] | None:
    """Known platform parameters (``geometry.PLATFORMS``), None for 'generic'; errors otherwise."""
    if platform in PLATFORMS:
        return dict(PLATFORMS[platform])
    if platform == "generic":
        return None
    raise TrihrgeInputError(f"unknown platform {platform!r}",
                            f"use one of {sorted(PLATFORMS) + ['generic']}")


def resolve_um_per_px(xy_px: np.ndarray, platform: str, *, um_per_px: float | None = None,
                      spot_diameter_px: float | None = None,
                      spot_diameter_um: float | None = None) -> tuple[float, str, float]:
    """Full-resolution pixel size from, in order: ``um_per_px``; the spot diameter in pixels and
    micrometres (micrometres default to the platform's); the spot lattice spacing measured on the
    pixel coordinates against the platform's known spacing.

    Returns ``(um_per_px, source, spot_diameter_um)`` with source 'given', 'spot_diameter' or
    'spot_spacing'.
    """
    plat = platform_info(platform)
    diam_um = spot_diameter_um if spot_diameter_um is not None else (
        float(plat["spot_diameter_um"]) if plat else None)
    if diam_um is None:
        raise TrihrgeInputError(
            f"the spot diameter is unknown for platform {platform!r}",
            "pass the spot diameter in micrometres (--spot-diameter-um), or a known platform "
            "('visium' or 'st')")
    if not np.isfinite(diam_um) or diam_um <= 0:
        raise TrihrgeInputError(f"the spot diameter must be positive, got {diam_um} um",
                                "pass --spot-diameter-um, for example 55 for Visium")
    if um_per_px is not None:
        return validate_um_per_px(float(um_per_px), what="given"), "given", float(diam_um)
    if spot_diameter_px is not None:
        return (um_per_px_from_spot_diameter(float(spot_diameter_px), diam_um), "spot_diameter",
                float(diam_um))
    if plat is None:
        raise TrihrgeInputError(
            f"cannot work out the pixel size for platform {platform!r}",
            "pass --um-per-px, or --spot-diameter-px with --spot-diameter-um")
    xy_px = np.asarray(xy_px, dtype=np.float64)
    lattice = detect_lattice(xy_px[:, ::-1], kind=str(plat["lattice"]))  # in pixel units
    um = float(plat["spot_spacing_um"]) / lattice.spacing_um
    um = validate_um_per_px(
        um, what=f"measured from the spot spacing ({lattice.spacing_um:.1f} px taken as "
                 f"{plat['spot_spacing_um']:g} um for platform {platform!r})")
    return um, "spot_spacing", float(diam_um)


def read_table(path: str | os.PathLike, *, header: Any = "infer", index_col: Any = None,
               what: str = "table") -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or parquet table with a helpful error."""
    path = Path(path)
    if not path.is_file():
        raise TrihrgeInputError(f"{what} file not found: {path}", "check the path")
    name = path.name.lower()
    for ext in (".gz", ".bz2", ".zip", ".xz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith(".csv"):
            sep: str | None = ","
        elif name.endswith((".tsv", ".txt", ".tab")):
            sep = "\t"
        else:
            sep = None
        return pd.read_csv(path, sep=sep, header=header, index_col=index_col,
                           engine="python" if sep is None else "c")
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read the {what} {path.name}: {exc}",
                                "pass a comma- or tab-separated text table (optionally .gz) "
                                "or a parquet file") from exc


def match_ids(counts_ids: pd.Index, position_ids: pd.Index, what_counts: str,
              what_positions: str, hint: str) -> pd.Index:
    """Counts ids found in the positions table; errors when fewer than half match."""
    counts_ids = pd.Index(counts_ids).astype(str)
    position_ids = pd.Index(position_ids).astype(str)
    found = counts_ids.isin(position_ids)
    n_found = int(found.sum())
    if n_found == 0 or n_found < 0.5 * len(counts_ids):
        ex_c = ", ".join(map(str, counts_ids[:2]))
        ex_p = ", ".join(map(str, position_ids[:2]))
        raise TrihrgeInputError(
            f"the spot ids in {what_counts} and {what_positions} do not match: only {n_found} of "
            f"{len(counts_ids)} matched (e.g. {ex_c!r} vs {ex_p!r})", hint)
    return counts_ids[found]


def check_inside(xy_px: np.ndarray, names: Any, extent_hw_px: tuple[float, float],
                 tol_px: float, image_what: str) -> None:
    """Raise if spot centres (x/y full-res px) fall outside ``[0, W) x [0, H)`` +- ``tol_px``."""
    xy_px = np.asarray(xy_px, dtype=np.float64)
    h, w = extent_hw_px
    x, y = xy_px[:, 0], xy_px[:, 1]
    bad = (x < -0.5 - tol_px) | (y < -0.5 - tol_px) | (x > w - 0.5 + tol_px) | \
        (y > h - 0.5 + tol_px) | ~np.isfinite(x) | ~np.isfinite(y)
    n_bad = int(bad.sum())
    if n_bad:
        i = int(np.flatnonzero(bad)[0])
        name = list(names)[i] if names is not None else i
        raise TrihrgeInputError(
            f"{n_bad} of {len(xy_px)} spots lie outside the {image_what} "
            f"({w:.0f} x {h:.0f} full-resolution px; e.g. spot {name} at x={x[i]:.0f}, "
            f"y={y[i]:.0f})",
            "the spot coordinates must be x/y in full-resolution pixels of this image: check "
            "that they are not hires/lowres pixels or swapped, that the scalefactors belong to "
            "this image, and that the image is the one the spots were measured on")
