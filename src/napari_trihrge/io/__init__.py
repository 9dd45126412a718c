"""Readers, lazy tissue images and writers.

Every reader returns an AnnData following the sample data model of ``docs/architecture.md``
(raw counts in ``X``, ``obsm['spatial']`` x/y in full-resolution pixels, ``uns['spatial']`` as in
scanpy/squidpy, ``uns['trihrge']`` with the pixel size) and runs :func:`validate_sample`.

    adata = napari_trihrge.io.read("path/to/spaceranger/outs")
    image = napari_trihrge.io.get_image(adata)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import TrihrgeInputError
from .geojson import (
    GeoRegion,
    QuPathObject,
    cells_to_features,
    labels_from_geojson,
    read_geojson,
    read_regions,
    regions_to_features,
    write_geojson,
)
from .h5ad import read_h5ad
from .image import TissueImage, image_size_px, open_image
from .map_store import FactorMaps, open_map_store, write_map_store
from .sample import available_images, get_image, validate_sample
from .spatialdata import is_spatialdata_store, read_spatialdata
from .spot_table import is_her2st_folder, read_her2st, read_spot_table
from .visium import is_visium_folder, read_visium
from .visium_hd import is_visium_hd_folder, read_visium_hd
from .writers import (
    ZarrMapWriter,
    open_ome_zarr_map,
    read_map,
    read_map_levels,
    write_h5ad_atomic,
    write_ome_tiff,
)

_TABLE_SUFFIXES = (".tsv", ".csv", ".txt", ".tsv.gz", ".csv.gz", ".txt.gz")

READ_HINT = (
    "pass a Space Ranger outs/ folder (Visium or Visium HD), a SpatialData .zarr store, an "
    ".h5ad file, a her2st-like section folder "
    "(<id>.tsv.gz, <id>_selection.tsv, <id>_HE.jpg), or a counts table with positions=... and "
    "image=...")


def read(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Read a sample, choosing the reader from what ``path`` is.

    * a SpatialData ``.zarr`` store: :func:`read_spatialdata` (``table=``, ``image_element=``,
      ``coordinate_system=`` pick one when there are several; needs the ``spatialdata`` extra)
    * a Visium HD ``outs/`` folder or one of its ``binned_outputs/square_XXXum`` folders:
      :func:`read_visium_hd` (``bin_size_um=``, default 8)
    * a folder with ``filtered_feature_bc_matrix.h5`` or the folder ``filtered_feature_bc_matrix/``
      (or ``outs/`` holding one): :func:`read_visium`
    * an ``.h5ad`` file: :func:`read_h5ad`
    * a folder with one ``<id>_selection.tsv``: :func:`read_her2st`
    * a counts table (``.tsv``/``.csv``[.gz]): :func:`read_spot_table`, needs ``positions=`` and
      ``image=``

    Keyword arguments go to the chosen reader.
    """
    from .._checks import check_path

    p = Path(check_path(path))
    adata = _read(p, kwargs)
    if hasattr(adata, "uns"):  # the path this read came from (``source`` keeps an h5ad's origin)
        adata.uns.setdefault("trihrge", {})["read_from"] = str(p.resolve())
    return adata


def _read(p: Path, kwargs: dict[str, Any]) -> Any:
    """:func:`read` without the record of the path read."""
    name = p.name.lower()
    if not p.exists():
        raise TrihrgeInputError(f"input not found: {p}", READ_HINT)
    if p.is_dir():
        if is_spatialdata_store(p):
            return read_spatialdata(p, **kwargs)
        if is_visium_hd_folder(p):
            return read_visium_hd(p, **kwargs)
        if is_visium_folder(p):
            return read_visium(p, **_accepted(read_visium, kwargs, "Space Ranger folders"))
        if is_her2st_folder(p):
            return read_her2st(p, **_accepted(read_spot_table, kwargs, "her2st folders"))
        raise TrihrgeInputError(f"{p} is not a recognised sample folder", READ_HINT)
    if name.endswith(".h5ad"):
        return read_h5ad(p, **_accepted(read_h5ad, kwargs, ".h5ad files"))
    if name.endswith(".h5"):
        return read_visium(p, **_accepted(read_visium, kwargs, "Space Ranger matrices"))
    if name.endswith(_TABLE_SUFFIXES):
        missing = [k for k in ("positions", "image") if kwargs.get(k) is None]
        if missing:
            raise TrihrgeInputError(
                f"a counts table needs {' and '.join(missing)} as well",
                "pass positions=<table with x/y full-resolution pixel columns> and "
                "image=<full-resolution H&E> (CLI: --positions, --image)")
        return read_spot_table(p, **kwargs)
    raise TrihrgeInputError(f"unsupported input {p.name}", READ_HINT)


def _accepted(reader: Any, kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """``kwargs`` if ``reader`` takes them all, else an error naming the option it cannot use."""
    import inspect

    params = inspect.signature(reader).parameters
    unknown = [k for k, v in kwargs.items() if k not in params and v is not None]
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise TrihrgeInputError(f"{opts} cannot be used with {what}",
                                f"leave out {opts}; {what} carry that information themselves")
    return {k: v for k, v in kwargs.items() if v is not None}


__all__ = [
    "FactorMaps",
    "GeoRegion",
    "QuPathObject",
    "cells_to_features",
    "labels_from_geojson",
    "read_geojson",
    "read_regions",
    "regions_to_features",
    "write_geojson",
    "TissueImage",
    "ZarrMapWriter",
    "available_images",
    "get_image",
    "image_size_px",
    "open_image",
    "open_map_store",
    "open_ome_zarr_map",
    "read",
    "read_h5ad",
    "read_her2st",
    "is_her2st_folder",
    "is_spatialdata_store",
    "is_visium_folder",
    "is_visium_hd_folder",
    "read_map",
    "read_map_levels",
    "read_spatialdata",
    "read_spot_table",
    "read_visium",
    "read_visium_hd",
    "validate_sample",
    "write_h5ad_atomic",
    "write_map_store",
    "write_ome_tiff",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
