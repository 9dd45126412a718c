"""Checks at the door of the public API: the arguments' types and required fields, before any
work, with what was expected and how to get it (scanpy style: ``adata must be an AnnData with
obsm['spatial']; got str: did you mean napari_trihrge.io.read('...')?``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import TrihrgeInputError
from .geometry import PIXEL_SIZE_REFUSED, pixel_size_disagreement, pixel_sizes_disagree_text

#: fewest spots a section must have to train on (the held-out splits and the stacking folds
#: each need spots to learn from and to score)
MIN_SECTION_SPOTS = 20


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


_ESTIMATE_LABELS = {"lattice": "the spot lattice", "spot_diameter": "the spot diameter",
                    "spot_spacing": "the spot spacing", "metadata": "the image file's metadata"}


def check_declared_pixel_size(adata: Any, what: str = "the sample") -> None:
    """Refuse a declared pixel size (``um_per_px_source == 'given'``: ``--um-per-px``) that an
    independent estimate (the spot lattice, the spot spacing, the image metadata; in
    ``uns['trihrge']['um_per_px_estimates']``) puts more than
    :data:`~napari_trihrge.geometry.PIXEL_SIZE_REFUSED` away, naming both."""
    info = adata.uns.get("trihrge", {}) or {}
    if info.get("um_per_px_source") != "given" or not info.get("um_per_px"):
        return
    declared = float(info["um_per_px"])
    for source, estimate in dict(info.get("um_per_px_estimates") or {}).items():
        if source == "given" or estimate is None or not float(estimate) > 0:
            continue
        if pixel_size_disagreement(declared, float(estimate)) > PIXEL_SIZE_REFUSED:
            label = _ESTIMATE_LABELS.get(source, source)
            raise TrihrgeInputError(
                pixel_sizes_disagree_text(what, "the declared pixel size (--um-per-px)",
                                          declared, label, float(estimate)),
                f"check --um-per-px (about 0.25 um/px at 40x, 0.5 at 20x), or leave it out to "
                f"use {label}")


def _fingerprint(adata: Any) -> str:
    """A hash of a section's spots (positions) and counts: equal for the same section given
    twice or an exact copy of it."""
    import hashlib

    import scipy.sparse as sp

    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(adata.obsm["spatial"], np.float64)).tobytes())
    x = adata.X
    totals = np.asarray(x.sum(axis=1)).ravel() if sp.issparse(x) else np.asarray(x).sum(axis=1)
    digest.update(np.ascontiguousarray(totals, dtype=np.float64).tobytes())
    digest.update("\n".join(map(str, adata.var_names)).encode())
    return digest.hexdigest()


#: spot diameters of two sections that one model cannot serve (legacy ST 100 um vs Visium 55)
SPOT_DIAMETER_MISMATCH = 1.5


def check_training_sections(adatas: Sequence[Any], names: Sequence[str] | None = None) -> None:
    """Refuse training sections that cannot make one honest model: the same section twice (or
    an exact copy: its held-out spots would be seen in training), and sections whose spots
    differ in size (legacy ST with Visium: the model's windows and the spot lattice differ, and
    the held-out score collapses)."""
    names = list(names) if names is not None else [f"section {i + 1}" for i in range(len(adatas))]
    seen: dict[str, int] = {}
    for i, a in enumerate(adatas):
        key = _fingerprint(a)
        if key in seen:
            raise TrihrgeInputError(
                f"{names[seen[key]]} and {names[i]} are the same section (the same spots and "
                "counts)", "pass each section once: a copy would put its held-out spots in "
                "training")
        seen[key] = i
    diameters = []
    for a, name in zip(adatas, names, strict=True):
        info = a.uns.get("trihrge", {}) or {}
        if info.get("spot_diameter_um"):
            diameters.append((float(info["spot_diameter_um"]), str(info.get("platform")), name))
    if len(diameters) > 1:
        small, large = min(diameters), max(diameters)
        if large[0] / small[0] > SPOT_DIAMETER_MISMATCH:
            raise TrihrgeInputError(
                f"{large[2]} ({large[1]}, {large[0]:g} um spots) and {small[2]} ({small[1]}, "
                f"{small[0]:g} um spots) cannot train one model: their spots measure different "
                "areas on different lattices, so one model fits neither",
                "train one model per platform (e.g. Visium sections together, legacy ST "
                "sections together)")
