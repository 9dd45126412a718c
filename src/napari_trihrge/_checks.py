"""Checks at the door of the public API: the arguments' types and required fields, before any
work, with what was expected and how to get it (scanpy style: ``adata must be an AnnData with
obsm['spatial']; got str: did you mean napari_trihrge.io.read('...')?``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import TrihrgeInputError

#: fewest spots a section must have to train on (the held-out splits and the stacking folds
#: each need spots to learn from and to score)
MIN_TRAINING_SPOTS = 20


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def check_adata(adata: Any, *, what: str = "adata", need_spatial: bool = True,
                min_spots: int = 0) -> Any:
    """Return ``adata`` if it is an AnnData fit for a task, else raise: ``TypeError`` for
    another type (a path gets a pointer to ``io.read``), :class:`TrihrgeInputError` for a
    missing or malformed ``obsm['spatial']`` or fewer than ``min_spots`` spots."""
    from anndata import AnnData

    if isinstance(adata, (str, os.PathLike)):
        raise TypeError(f"{what} must be an AnnData with obsm['spatial']; got "
                        f"{_kind(adata)}: did you mean napari_trihrge.io.read({str(adata)!r})?")
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData with obsm['spatial']; got {_kind(adata)}: "
                        "read a sample with napari_trihrge.io.read(path)")
    if need_spatial:
        if "spatial" not in adata.obsm:
            raise TrihrgeInputError(
                f"{what} has no obsm['spatial'] (the spots' x/y positions)",
                "read the sample with napari_trihrge.io.read(path), or set "
                "adata.obsm['spatial'] to the spots' x/y in full-resolution pixels")
        xy = np.asarray(adata.obsm["spatial"])
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.issubdtype(xy.dtype, np.number):
            raise TrihrgeInputError(
                f"{what}.obsm['spatial'] has shape {xy.shape} ({xy.dtype}), not (spots, 2) "
                "numbers", "set it to the spots' x/y in full-resolution pixels")
        if not np.isfinite(xy).all():
            raise TrihrgeInputError(f"{what}.obsm['spatial'] has NaN or infinite positions",
                                    "drop the spots without a position first")
    if adata.n_obs < min_spots:
        raise TrihrgeInputError(
            f"{what} has {adata.n_obs} spots; training needs at least {min_spots}",
            "use a section with more spots (a whole slide has hundreds to thousands)")
    return adata


def check_adatas(adatas: Any, *, what: str = "adatas", min_spots: int = 0) -> list:
    """A list of AnnData, each checked with :func:`check_adata` (one AnnData is a list of
    one); names the position of the one that is wrong."""
    from anndata import AnnData

    if isinstance(adatas, AnnData):
        adatas = [adatas]
    elif isinstance(adatas, (str, os.PathLike)) or not isinstance(adatas, Sequence):
        check_adata(adatas, what=what)  # raises the right TypeError
    out = list(adatas)
    if not out:
        raise TrihrgeInputError(f"{what} is empty", "pass at least one section")
    for i, a in enumerate(out):
        check_adata(a, what=f"{what}[{i}]", min_spots=min_spots)
    return out


def check_path(path: Any, *, what: str = "path") -> Any:
    """Return ``path`` if it is a str or os.PathLike, else a ``TypeError`` (an AnnData gets a
    word that it is already read)."""
    if isinstance(path, (str, os.PathLike)):
        return path
    hint = (": it is already read, pass it to the napari_trihrge.tl functions directly"
            if type(path).__name__ == "AnnData" else "")
    raise TypeError(f"{what} must be a path (str or pathlib.Path); got {_kind(path)}{hint}")
