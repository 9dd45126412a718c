"""Cells in and out of OME-Zarr and SpatialData.

Out: the nuclei and cell label images as OME-Zarr labels (NGFF 0.4 through ome-zarr-py, lengths
in micrometres), and a SpatialData store holding both labels elements and the cells table
annotating the ``cells`` labels (``labels_element`` / ``cell_id``: the table model).

In: a SpatialData labels element (on the H&E's pixel grid) or shapes element (polygons or
circles, rasterised onto that grid) as the user's own segmentation, named
``STORE.zarr::ELEMENT``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from ..errors import TrihrgeInputError

#: the label elements written (nuclei and cells: cell k is label k in both)
#: the optional outputs of a cells run beside cells.h5ad and the label TIFFs
CELL_FORMATS = ("ome-zarr", "spatialdata")
LABEL_NAMES = ("nuclei", "cells")


def check_cell_formats(formats) -> None:
    """Refuse unknown cell output formats, and SpatialData without its extra (before work).

    The formats are the names in :data:`CELL_FORMATS`.
    """
    unknown = sorted(set(formats) - set(CELL_FORMATS))
    if unknown:
        raise TrihrgeInputError(f"unknown cell output format {unknown[0]!r}",
                                f"choose from {', '.join(CELL_FORMATS)}")
    if "spatialdata" in formats:
        from .spatialdata import require_spatialdata

        require_spatialdata()
#: the SpatialData cells table, its region and instance columns (not "region": that column
#: holds the QuPath region of each cell, from ``trihrge cells --regions``)
CELLS_TABLE = "cells_table"
REGION_KEY = "labels_element"
INSTANCE_KEY = "cell_id"
#: what separates a SpatialData store from the element named in it
ELEMENT_SEPARATOR = "::"
#: NGFF axes of a label image, lengths in micrometres
LABEL_AXES = [{"name": "y", "type": "space", "unit": "micrometer"},
              {"name": "x", "type": "space", "unit": "micrometer"}]


def _label_pyramid(labels: Any) -> list[Any]:
    """Return the levels of a label image: level 0, then every second pixel (nearest)."""
    import dask.array as da

    from .writers import pyramid_factors

    base = labels if isinstance(labels, da.Array) else da.from_array(
        np.asarray(labels), chunks=(2048, 2048))
    levels = [base.astype(np.int32)]
    for step in pyramid_factors(*base.shape):
        levels.append(levels[-1][::step, ::step])
    return levels


def write_labels_ome_zarr(path: str | os.PathLike, labels: dict[str, Any], um_per_px: float, *,
                          overwrite: bool = False) -> Path:
    """Write label images as OME-Zarr labels (``PATH/labels/NAME``), lengths in micrometres.

    Parameters
    ----------
    path
        The ``.ome.zarr`` folder to create; written beside and moved into place, never
        replaced unless ``overwrite``.
    labels
        ``{name: int32 label image}`` on one pixel grid (0 = background).
    um_per_px
        The label images' pixel size.
    overwrite
        Replace an existing ``path``.

    Returns
    -------
    The path written.
    """
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale_labels

    path = Path(path)
    px = float(um_per_px)
    with atomic_path(path, overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        for name, lab in labels.items():
            levels = _label_pyramid(lab)
            transforms = [[{"type": "scale", "scale": [px * (2 ** k), px * (2 ** k)]}]
                          for k in range(len(levels))]
            write_multiscale_labels(levels, root, name, fmt=FormatV04(), axes=LABEL_AXES,
                                    coordinate_transformations=transforms,
                                    storage_options={"chunks": (2048, 2048)})
    return path


def write_cells_spatialdata(path: str | os.PathLike, cells: Any, nuclei: Any, cell_labels: Any,
                            um_per_px: float, *, overwrite: bool = False) -> Path:
    """Write the cells as a SpatialData store: ``nuclei`` and ``cells`` labels and the table.

    The coordinate system ``global`` is in micrometres (the labels are scaled by their pixel
    size). The table ``cells_table`` annotates the ``cells`` labels: ``obs['labels_element']``
    is ``'cells'`` and ``obs['cell_id']`` the label of each row (the SpatialData table model's
    region and instance keys).

    Parameters
    ----------
    path
        The ``.zarr`` store to create; never replaced unless ``overwrite``.
    cells
        The cells AnnData of :func:`napari_trihrge.tl.cells`.
    nuclei, cell_labels
        The label images (cell k is label k in both).
    um_per_px
        Their pixel size.
    overwrite
        Replace an existing ``path``.

    Returns
    -------
    The path written.
    """
    from ._store_image import require_spatialdata

    require_spatialdata()
    from anndata import AnnData
    from spatialdata import SpatialData
    from spatialdata.models import Labels2DModel, TableModel
    from spatialdata.transformations import Scale

    from .outputs import _h5ad_safe
    from .spatialdata import COORDINATE_SYSTEM, table_write_settings

    path = Path(path)
    px = float(um_per_px)
    to_um = {COORDINATE_SYSTEM: Scale([px, px], axes=("y", "x"))}
    labels = {}
    for name, lab in zip(LABEL_NAMES, (nuclei, cell_labels), strict=True):
        levels = _label_pyramid(lab)
        labels[name] = Labels2DModel.parse(levels[0], dims=("y", "x"), transformations=to_um,
                                           scale_factors=[2] * (len(levels) - 1) or None)
    t = AnnData(X=cells.X, obs=cells.obs.copy(), var=cells.var.copy())
    t.obs_names = cells.obs_names
    t.obs[REGION_KEY] = pd.Categorical(["cells"] * t.n_obs)
    t.obs[INSTANCE_KEY] = np.asarray(cells.obs["cell_id"], dtype=np.int64)
    t.obsm["spatial"] = np.asarray(cells.obsm["spatial"], dtype=np.float64)
    t.uns["trihrge"] = _h5ad_safe({**dict(cells.uns.get("trihrge", {}) or {}),
                                   "role": "cells", "um_per_unit": {COORDINATE_SYSTEM: 1.0}})
    table = TableModel.parse(t, region="cells", region_key=REGION_KEY,
                             instance_key=INSTANCE_KEY)
    sdata = SpatialData(labels=labels, tables={CELLS_TABLE: table})
    with atomic_path(path, overwrite) as tmp, table_write_settings():
        sdata.write(tmp)
    return path


def is_element_reference(source: Any) -> bool:
    """Whether ``source`` names an element of a SpatialData store (``STORE.zarr::ELEMENT``)."""
    return isinstance(source, str | os.PathLike) and ELEMENT_SEPARATOR in str(source)


def read_segmentation_element(source: Any, shape_px: tuple[int, int], *,
                              px_per_fullres_px: float = 1.0,
                              coordinate_system: str | None = None) -> np.ndarray:
    """Read a SpatialData labels or shapes element as labels on the H&E's pixel grid.

    ``source``: ``'STORE.zarr::ELEMENT'``. A labels element is taken at its finest level (it
    must lie on the H&E's grid, ``shape_px``). A shapes element (polygons, multipolygons or
    circles) is placed by its transformation into ``coordinate_system`` (the only one it has
    when not given), whose unit must be the sample's full-resolution pixel (as for spots read
    from the same store), then filled onto the grid (``px_per_fullres_px`` grid pixels per
    full-resolution pixel); shape ``k`` becomes label ``k + 1``.
    """
    from ._store_image import require_spatialdata

    store, _, name = str(source).rpartition(ELEMENT_SEPARATOR)
    if not Path(store).exists():
        raise TrihrgeInputError(f"SpatialData store not found: {store}", "check the path")
    require_spatialdata()
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    if name in sdata.labels:
        from ._store_image import image_levels

        level = image_levels(sdata.labels[name])[0]
        return np.asarray(level.data if hasattr(level, "data") else level)
    if name not in sdata.shapes:
        raise TrihrgeInputError(
            f"{store} has no labels or shapes element {name!r}",
            f"choose one of: {', '.join(list(sdata.labels) + list(sdata.shapes)) or 'none'}")
    return _rasterize_shapes(sdata.shapes[name], name, shape_px, px_per_fullres_px,
                             coordinate_system)


def _rasterize_shapes(gdf: Any, name: str, shape_px: tuple[int, int], px_per_fullres_px: float,
                      coordinate_system: str | None) -> np.ndarray:
    """Fill a shapes element onto the grid (via the QuPath rasteriser: one filler)."""
    from shapely import affinity

    from .geojson import QuPathObject, rasterize
    from .spatialdata import _affine_xy, _transforms

    systems = _transforms(gdf)
    if coordinate_system is None:
        if len(systems) != 1:
            raise TrihrgeInputError(
                f"shapes {name!r} are placed in {len(systems)} coordinate systems "
                f"({', '.join(systems)})", "name the one of the H&E's full-resolution pixels")
        coordinate_system = next(iter(systems))
    if coordinate_system not in systems:
        raise TrihrgeInputError(f"shapes {name!r} are not in coordinate system "
                                f"{coordinate_system!r}", f"choose one of {', '.join(systems)}")
    a = _affine_xy(systems[coordinate_system])
    matrix = [a[0, 0], a[0, 1], a[1, 0], a[1, 1], a[0, 2], a[1, 2]]
    objects = []
    radius = gdf["radius"].to_numpy() if "radius" in gdf.columns else None
    for k, geom in enumerate(gdf.geometry):
        if geom is None or geom.is_empty:
            continue
        if geom.geom_type == "Point":
            if radius is None:
                continue
            geom = geom.buffer(float(radius[k]), quad_segs=16)
        geom = affinity.affine_transform(geom, matrix)
        polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
        parts = [[np.asarray(p.exterior.coords)[:, :2]]
                 + [np.asarray(r.coords)[:, :2] for r in p.interiors]
                 for p in polys if p.geom_type == "Polygon"]
        if parts:
            objects.append(QuPathObject("detection", "", parts))
    if not objects:
        raise TrihrgeInputError(f"shapes {name!r} hold no polygons or circles",
                                "pass a shapes element of cell or nucleus outlines")
    full = (shape_px[0] / px_per_fullres_px, shape_px[1] / px_per_fullres_px)
    from .geojson import check_inside_image

    check_inside_image(objects, full, what=f"shapes {name!r}")
    return rasterize(objects, shape_px, px_per_fullres_px=px_per_fullres_px)


def is_labels_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr of label images only (as :func:`write_labels_ome_zarr`)."""
    import json

    p = Path(path)
    attrs = p / ".zattrs"
    if not (p.is_dir() and (p / "labels" / ".zattrs").is_file() and attrs.is_file()):
        return False
    return "multiscales" not in json.loads(attrs.read_text() or "{}")


def read_labels_ome_zarr(path: str | os.PathLike) -> dict[str, tuple[list[Any], float]]:
    """Read the label images of an OME-Zarr lazily: ``{name: (levels finest first, um_per_px)}``."""
    import dask.array as da
    import zarr

    root = zarr.open_group(str(path), mode="r")
    out = {}
    for name in root["labels"].attrs.get("labels", []):
        group = root["labels"][name]
        datasets = group.attrs["multiscales"][0]["datasets"]
        levels = [da.from_zarr(group[d["path"]]) for d in datasets]
        scale = next(t["scale"] for t in datasets[0]["coordinateTransformations"]
                     if t["type"] == "scale")
        out[str(name)] = (levels, float(scale[-1]))
    return out


def is_cells_spatialdata(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a cells store written by :func:`write_cells_spatialdata`."""
    p = Path(path)
    return (p / "tables" / CELLS_TABLE).is_dir() and (p / "labels" / "cells").is_dir()


def read_cells_spatialdata(path: str | os.PathLike) -> tuple[Any, list[Any], float]:
    """Read a cells store: ``(cells AnnData, cell label levels finest first, um_per_px)``."""
    from ._store_image import image_levels, require_spatialdata

    require_spatialdata()
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    from .spatialdata import COORDINATE_SYSTEM

    sdata = sd.read_zarr(path)
    element = sdata.labels["cells"]
    affine = get_transformation(element, COORDINATE_SYSTEM).to_affine_matrix(("y", "x"),
                                                                              ("y", "x"))
    levels = [level.data for level in image_levels(element)]
    return sdata.tables[CELLS_TABLE], levels, float(affine[0, 0])
