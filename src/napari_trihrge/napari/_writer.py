"""npe2 writers: spots with expression as .h5ad, an image or a gene map as OME-TIFF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from ..errors import TrihrgeInputError


def _ensure_suffix(path: str, suffixes: tuple[str, ...], default: str) -> Path:
    return Path(path if path.lower().endswith(suffixes) else path + default)


def write_points_h5ad(path: str, data: Any, attributes: dict) -> list[str]:
    """A Points layer as AnnData (.h5ad).

    A TriHRGE spots layer writes its AnnData (``metadata['adata']``: counts or predicted
    expression, positions, image metadata). Any other Points layer writes its numeric
    ``features`` as ``X`` and its coordinates (row/col, world units) as ``obsm['spatial']`` (x/y).
    """
    import anndata as ad

    from ..io import write_h5ad_atomic

    out = _ensure_suffix(path, (".h5ad",), ".h5ad")
    data = np.asarray(data, dtype=np.float64)
    meta = attributes.get("metadata") or {}
    adata = meta.get("adata")
    if adata is not None and adata.n_obs == len(data):
        write_h5ad_atomic(_h5ad_safe(adata), out, overwrite=True)
        return [str(out)]
    feats = pd.DataFrame(attributes.get("features", pd.DataFrame(index=range(len(data)))))
    numeric = feats.select_dtypes(include=[np.number])
    obs_names = (feats["barcode"].astype(str).to_numpy() if "barcode" in feats
                 else np.array([f"point_{i}" for i in range(len(data))]))
    x = numeric.to_numpy(np.float32) if numeric.shape[1] else np.zeros((len(data), 0), np.float32)
    new = ad.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(obs_names)),
                     var=pd.DataFrame(index=pd.Index([str(c) for c in numeric.columns])))
    um_per_px = 1.0
    if adata is not None:  # points were added or removed: keep the sample's pixel size
        um_per_px = float(adata.uns.get("trihrge", {}).get("um_per_px", 1.0))
        new.uns["trihrge"] = dict(adata.uns.get("trihrge", {}))
    else:
        new.uns["trihrge"] = {"um_per_px": 1.0, "x_kind": "log-normalised",
                              "sample": str(attributes.get("name", "points"))}
    new.uns["trihrge"]["x_kind"] = "log-normalised"
    new.obsm["spatial"] = data[:, ::-1][:, :2] / um_per_px if data.shape[1] >= 2 else data
    write_h5ad_atomic(_h5ad_safe(new), out, overwrite=True)
    return [str(out)]


def _h5ad_safe(adata):
    """A shallow copy whose ``uns`` holds only what h5ad can store."""
    out = adata.copy() if adata.is_view else adata
    bad = [k for k, v in out.uns.items() if not _storable(v)]
    if bad:
        out = out.copy()
        for k in bad:
            del out.uns[k]
    return out


def _storable(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, dict):
        return all(_storable(x) for x in v.values())
    return isinstance(v, str | int | float | bool | np.ndarray | np.generic | list | tuple |
                      pd.DataFrame)


def write_image_ome_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """An Image layer as OME-TIFF with its pixel size in micrometres.

    An enhanced-map layer writes the real expression of its gene (NaN outside the tissue, not
    the display value), with the map's origin; an RGB image writes its finest level.
    """
    import tifffile

    from ..io import write_ome_tiff

    out = _ensure_suffix(path, (".ome.tif", ".ome.tiff"), ".ome.tif")
    meta = attributes.get("metadata") or {}
    tri = meta.get("trihrge", {}) or {}
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=np.float64)
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), dtype=np.float64)
    if tri.get("kind") == "map" and meta.get("maps") is not None and tri.get("gene"):
        from .layers import map_values

        maps = meta["maps"]
        gene = tri["gene"]
        write_ome_tiff(out, map_values(maps, gene), float(maps.stride_um), [gene],
                       overwrite=True, origin_rc_um=np.asarray(maps.origin_rc_um))
        return [str(out)]
    if isinstance(data, list):  # multiscale: the finest level
        data = data[0]
    arr = np.asarray(data)
    um = float(scale[-2]) if scale.size >= 2 else 1.0
    if attributes.get("rgb") or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        if arr.ndim != 3:
            raise TrihrgeInputError("only 2D RGB images can be saved as OME-TIFF",
                                    "save one plane at a time")
        md = {"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeXUnit": "µm",
              "PhysicalSizeY": um, "PhysicalSizeYUnit": "µm"}
        with atomic_path(out) as tmp:
            tifffile.imwrite(tmp, arr, ome=True, photometric="rgb", metadata=md,
                             bigtiff=arr.nbytes > 2**31 - 2**25)
        return [str(out)]
    if arr.ndim not in (2, 3):
        raise TrihrgeInputError(f"cannot save a {arr.ndim}D image as a map",
                                "save a 2D image or a (channels, rows, cols) stack")
    write_ome_tiff(out, arr, um, [str(attributes.get("name", "image"))] if arr.ndim == 2
                   else None, overwrite=True, origin_rc_um=translate[-2:])
    return [str(out)]
