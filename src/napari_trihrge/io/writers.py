"""Writers: AnnData (atomic), dense gene maps as OME-TIFF or OME-Zarr (NGFF 0.4), and reading
maps back.

Map arrays are ``(genes, rows, cols)``; map pixel ``(i, j)`` is centred at
``origin_rc_um + (i, j) * um_per_px`` (``origin_rc_um`` defaults to 0, the full-resolution image's
top-left pixel centre; dense grids from :func:`napari_trihrge.geometry.dense_grid` start at
``stride / 2``). The origin is written as an NGFF ``translation`` / OME ``Plane`` position.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path, refuse_overwrite, replace_folder
from ..errors import TrihrgeInputError

UM = "µm"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -----------------------------------------------------------------------------------------
# AnnData
# -----------------------------------------------------------------------------------------
def write_h5ad_atomic(adata: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``adata`` to ``path`` through a temporary file in the same folder moved into place
    (``_atomic.atomic_path``), so a crash never leaves a half-written file. Refuses to overwrite
    unless asked."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        adata.write_h5ad(tmp)
    return path


# -----------------------------------------------------------------------------------------
# Maps
# -----------------------------------------------------------------------------------------
def _map_shape(array: Any) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in array.shape)
    if len(shape) == 2:
        return (1, *shape)  # type: ignore[return-value]
    if len(shape) != 3:
        raise ValueError(f"maps must be (genes, rows, cols) or (rows, cols), got shape {shape}")
    return shape  # type: ignore[return-value]


def _channel_names(names: Any, n: int) -> list[str]:
    if names is None:
        return [f"channel_{i}" for i in range(n)]
    names = [str(g) for g in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} channel names for {n} channels")
    return names


def write_ome_tiff(path: str | os.PathLike, array: Any, um_per_px: float,
                   channel_names: Any = None, overwrite: bool = False, *,
                   origin_rc_um: Any = (0.0, 0.0)) -> Path:
    """Write a map ``(genes, rows, cols)`` or ``(rows, cols)`` as an OME-TIFF (axes CYX) with
    PhysicalSizeX/Y in micrometres and channel names. ``array`` may be numpy, dask or zarr (it is
    written one gene plane at a time). Temporary file moved into place (``_atomic.atomic_path``)."""
    import tifffile

    path = Path(path)
    refuse_overwrite(path, overwrite)
    n, rows, cols = _map_shape(array)
    names = _channel_names(channel_names, n)
    dtype = np.dtype(array.dtype)
    origin = [float(v) for v in np.asarray(origin_rc_um, dtype=np.float64).reshape(2)]
    metadata = {
        "axes": "CYX",
        "PhysicalSizeX": float(um_per_px), "PhysicalSizeXUnit": UM,
        "PhysicalSizeY": float(um_per_px), "PhysicalSizeYUnit": UM,
        "Channel": {"Name": names},
        "Plane": {"PositionX": [origin[1]] * n, "PositionXUnit": [UM] * n,
                  "PositionY": [origin[0]] * n, "PositionYUnit": [UM] * n},
    }
    planes = (np.asarray(array[i] if len(array.shape) == 3 else array, dtype=dtype)
              for i in range(n))
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, planes, shape=(n, rows, cols), dtype=dtype, ome=True,
                         photometric="minisblack", metadata=metadata,
                         bigtiff=n * rows * cols * dtype.itemsize > 2**31 - 2**25)
    return path


def _zarr_major() -> int:
    import zarr

    return int(str(zarr.__version__).split(".")[0])


def _ngff_attrs(um_per_px: float, names: list[str], origin: list[float], name: str) -> dict:
    transforms: list[dict] = [{"type": "scale", "scale": [1.0, float(um_per_px),
                                                          float(um_per_px)]}]
    if any(origin):
        transforms.append({"type": "translation", "translation": [0.0, *origin]})
    return {
        "multiscales": [{
            "version": "0.4",
            "name": name,
            "axes": [{"name": "c", "type": "channel"},
                     {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": [{"path": "0", "coordinateTransformations": transforms}],
        }],
        "omero": {
            "name": name,
            "version": "0.4",
            "channels": [{"label": g, "color": "FFFFFF", "active": i == 0}
                         for i, g in enumerate(names)],
            "rdefs": {"model": "greyscale"},
        },
    }


class ZarrMapWriter:
    """An OME-Zarr map being written: assign gene chunks with ``writer[g0:g1] = block``, then
    :meth:`finalize` (moves ``<name>.partial`` to its final name). Used as a context manager it
    finalizes on success and deletes the partial folder on error."""

    def __init__(self, path: Path, partial: Path, array: Any, overwrite: bool):
        self.path = path
        self.partial_path = partial
        self.array = array
        self.overwrite = overwrite
        self.finalized = False

    shape = property(lambda self: tuple(self.array.shape))
    dtype = property(lambda self: self.array.dtype)
    chunks = property(lambda self: tuple(self.array.chunks))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    @property
    def ndim(self) -> int:
        return len(self.array.shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = np.asarray(self.array[...])
        return arr.astype(dtype) if dtype is not None else arr

    def finalize(self) -> Path:
        """Move the finished map into place (``_atomic.replace_folder``: an existing map is
        replaced only once this one is whole); returns the final path."""
        import zarr

        if self.finalized:
            return self.path
        refuse_overwrite(self.path, self.overwrite)
        replace_folder(self.partial_path, self.path)
        self.finalized = True
        self.array = zarr.open_group(str(self.path), mode="r")["0"]
        return self.path

    def abort(self) -> None:
        """Delete the partial map."""
        _remove(self.partial_path)

    def __enter__(self) -> ZarrMapWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def open_ome_zarr_map(path: str | os.PathLike, shape: Any, chunks: Any = None,
                      um_per_px: float = 1.0, gene_names: Any = None, overwrite: bool = False,
                      *, dtype: Any = "float32", fill_value: float = 0.0,
                      origin_rc_um: Any = (0.0, 0.0)) -> ZarrMapWriter:
    """Create an OME-Zarr (NGFF 0.4, zarr format 2) map of ``shape`` (genes, rows, cols) in
    ``<path>.partial`` with axes c/y/x, a micrometre ``scale`` and omero channel labels = gene
    names. Write gene chunk by gene chunk, then call ``finalize()`` (or use ``with``).
    ``chunks`` defaults to ``(1, rows, cols)`` capped at 1024 px per side."""
    import zarr

    path = Path(path)
    refuse_overwrite(path, overwrite)
    n, rows, cols = (int(s) for s in shape)
    names = _channel_names(gene_names, n)
    if chunks is None:
        chunks = (1, min(rows, 1024), min(cols, 1024))
    chunks = tuple(int(c) for c in chunks)
    origin = [float(v) for v in np.asarray(origin_rc_um, dtype=np.float64).reshape(2)]
    partial = path.with_name(path.name + ".partial")
    _remove(partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _zarr_major() >= 3:
        group = zarr.open_group(str(partial), mode="w", zarr_format=2)
        array = group.create_array("0", shape=(n, rows, cols), chunks=chunks, dtype=dtype,
                                   fill_value=fill_value,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
    else:  # zarr 2
        group = zarr.open_group(str(partial), mode="w")
        array = group.create_dataset("0", shape=(n, rows, cols), chunks=chunks, dtype=dtype,
                                     fill_value=fill_value, dimension_separator="/")
    group.attrs.update(_ngff_attrs(um_per_px, names, origin, path.stem))
    return ZarrMapWriter(path, partial, array, overwrite)


def read_map(path: str | os.PathLike, *, with_origin: bool = False) -> tuple:
    """Read a map written by :func:`write_ome_tiff` or :func:`open_ome_zarr_map`:
    ``(array (dask, genes x rows x cols), um_per_px, gene_names)`` and, with
    ``with_origin=True``, a fourth item ``origin_rc_um``."""
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise TrihrgeInputError(f"map not found: {path}", "check the path")
    try:
        if path.is_dir():
            import zarr

            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
            ms = attrs["multiscales"][0]
            ds = ms["datasets"][0]
            arr = da.from_zarr(group[ds["path"]])
            um, origin = 1.0, [0.0, 0.0]
            for t in ds.get("coordinateTransformations", []):
                if t["type"] == "scale":
                    um = float(t["scale"][-1])
                elif t["type"] == "translation":
                    origin = [float(v) for v in t["translation"][-2:]]
            names = [c.get("label", f"channel_{i}") for i, c in
                     enumerate(attrs.get("omero", {}).get("channels", []))]
        else:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                meta = tifffile.xml2dict(tf.ome_metadata) if tf.is_ome else {}
            store = tifffile.imread(path, aszarr=True)
            import zarr

            arr = da.from_zarr(zarr.open(store, mode="r"))
            pixels = meta.get("OME", {}).get("Image", {}).get("Pixels", {})
            if isinstance(pixels, list):
                pixels = pixels[0]
            um = float(pixels.get("PhysicalSizeX", 1.0))
            channels = pixels.get("Channel", [])
            channels = [channels] if isinstance(channels, dict) else channels
            names = [str(c.get("Name", f"channel_{i}")) for i, c in enumerate(channels)]
            planes = pixels.get("Plane", [])
            plane = planes[0] if isinstance(planes, list) and planes else (planes or {})
            origin = [float(plane.get("PositionY", 0.0)), float(plane.get("PositionX", 0.0))]
    except TrihrgeInputError:
        raise
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read the map {path}: {exc}",
                                "pass an OME-TIFF or OME-Zarr map written by napari-trihrge") \
            from exc
    if arr.ndim == 2:
        arr = arr[None]
    if len(names) != arr.shape[0]:
        names = [f"channel_{i}" for i in range(arr.shape[0])]
    out: tuple = (arr, um, names)
    return out + (np.asarray(origin),) if with_origin else out
