"""Helpers shared by the readers: pixel size resolution, table reading, barcode matching."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TrihrgeInputError
from ..geometry import PLATFORMS, platform_params


def platform_info(platform: str) -> dict[str, Any] | None:
    """Known platform parameters (``geometry.PLATFORMS``), None for 'generic'; errors otherwise."""
    return platform_params(platform)


def array_index_of(obs: pd.DataFrame, platform: str | None) -> np.ndarray | None:
    """Return the platform's array indices per spot from ``obs``, or None.

    Visium ``array_row``/``array_col``, ST ``array_x``/``array_y``; None when absent or not numeric.
    """
    plat = PLATFORMS.get(platform or "")
    if plat is None:
        return None
    cols = list(plat["array_columns"])
    if not all(c in obs.columns for c in cols):
        return None
    try:
        idx = obs[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    except (TypeError, ValueError):
        return None
    return idx if np.isfinite(idx).all() else None


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
    """Count the ids found in the positions table; raise when fewer than half match."""
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
    n_missing = len(counts_ids) - n_found
    if n_missing:
        ex = ", ".join(map(str, counts_ids[~found][:3]))
        warnings.warn(f"{n_missing} of {len(counts_ids)} spots of {what_counts} have no position "
                      f"in {what_positions} and are left out (e.g. {ex})", stacklevel=3)
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
