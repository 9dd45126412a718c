"""A SpatialData store's H&E, opened lazily.

The one part of a store the sample model (:func:`napari_trihrge.io.get_image`) needs, kept apart
from reading and writing whole stores (:mod:`.spatialdata`) so that neither imports the other's
callers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrihrgeInputError

EXTRA_HINT = 'install the SpatialData extra: pip install "napari-trihrge[spatialdata]"'


def require_spatialdata():
    """Import ``spatialdata`` or raise an error naming the extra to install."""
    try:
        import spatialdata
    except ImportError as exc:
        raise TrihrgeInputError("SpatialData stores need the spatialdata package, which is not "
                                "installed", EXTRA_HINT) from exc
    return spatialdata


def image_levels(element: Any) -> list[Any]:
    """DataArrays (c, y, x) of an image element, finest first."""
    if hasattr(element, "children") and len(getattr(element, "children", {})):
        levels = []
        for name in sorted(element.children, key=lambda n: int(re.sub(r"\D", "", n) or 0)):
            node = element[name]
            ds = node.ds if hasattr(node, "ds") else node
            var = "image" if "image" in ds else next(iter(ds.data_vars))
            levels.append(ds[var])
        return levels
    return [element]


def store_image_extent(info: dict) -> tuple[float, float]:
    """(height, width) of the store's image in coordinate units, from its level-0 shape."""
    level = _store_image_levels(info)[0]
    scale = float(info["spatialdata"]["image_scale"])
    return level.sizes["y"] * scale, level.sizes["x"] * scale


def _store_image_levels(info: dict) -> list[Any]:
    sd = require_spatialdata()
    ref = info["spatialdata"]
    store = Path(ref["store"])
    if not store.exists():
        raise TrihrgeInputError(f"the SpatialData store {store} is gone",
                                "read the sample again from where the store now is")
    element = sd.read_zarr(store, selection=("images",)).images[ref["image"]]
    return image_levels(element)


def open_store_image(info: dict):
    """Return the sample's H&E from its SpatialData store, lazily, as a TissueImage.

    Every pyramid level comes with its pixel size.
    """
    import dask.array as da

    from .image import TissueImage

    ref = info["spatialdata"]
    levels = _store_image_levels(info)
    um0 = float(ref["image_scale"]) * float(info["um_per_px"])
    h0 = levels[0].sizes["y"]
    out = []
    for level in levels:
        arr = level.transpose("y", "x", "c").data
        if not isinstance(arr, da.Array):
            arr = da.from_array(np.asarray(arr))
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            if arr.dtype == np.uint16:
                arr = (arr // 257).astype(np.uint8)
            else:
                top = float(arr.max().compute())
                arr = da.clip(arr * (255.0 if top <= 1.0 else 1.0) + 0.5, 0, 255).astype(
                    np.uint8)
        out.append((arr, um0 * h0 / level.sizes["y"]))
    return TissueImage(out, source=f"{ref['store']} [{ref['image']}]",
                       path=Path(ref["store"]) / "images" / ref["image"])
