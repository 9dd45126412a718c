"""Writers: AnnData (atomic), dense gene maps, and reading maps back.

Maps are written as OME-TIFF (tifffile) or multiscale OME-Zarr (NGFF 0.4 through ome-zarr-py).

Map arrays are ``(genes, rows, cols)``; map pixel ``(i, j)`` is centred at
``origin_rc_um + (i, j) * um_per_px`` (``origin_rc_um`` defaults to 0, the full-resolution image's
top-left pixel centre; dense grids from :func:`napari_trihrge.geometry.dense_grid` start at
``stride / 2``). The origin is written as an NGFF ``translation`` / OME ``Plane`` position.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
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
    """Write ``adata`` to ``path`` atomically; refuses to overwrite unless asked.

    Written through a temporary file in the same folder moved into place
    (``_atomic.atomic_path``), so a crash never leaves a half-written file.
    """
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        adata.write_h5ad(tmp)
    return path


# -----------------------------------------------------------------------------------------
# Maps
# -----------------------------------------------------------------------------------------
def as_dtype(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """``arr`` as ``dtype``; float16 <-> float32 through torch's vectorised cast.

    For the map store's factors and materialised maps: numpy's float16 casts are scalar code,
    10-20x slower on a store's factors (docs/map-store.md, "Gene switch"); the values are the
    same (round to nearest even).
    """
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    if {arr.dtype, dtype} != {np.dtype(np.float16), np.dtype(np.float32)}:
        return arr.astype(dtype)
    import torch

    out = np.empty(arr.shape, dtype=dtype)
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(arr)))
    return out


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
    """Write a map ``(genes, rows, cols)`` or ``(rows, cols)`` as an OME-TIFF (axes CYX).

    PhysicalSizeX/Y are in micrometres, channels carry the gene names. ``array`` may be numpy, dask
    or zarr (it is written one gene plane at a time). Temporary file moved into place
    (``_atomic.atomic_path``).
    """
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


#: NGFF version of the maps: 0.4 keeps zarr format 2, which napari-ome-zarr, spatialdata and
#: older readers all open
NGFF_VERSION = "0.4"
#: the map axes in NGFF terms (lengths in micrometres)
MAP_AXES = [{"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]


def pyramid_factors(rows_px: int, cols_px: int) -> list[int]:
    """Return the downsampling factors (2 per level) of a map pyramid.

    Halve while the larger side exceeds 512 px and the smaller stays at least 64 px (at most 5
    times), and at least once when both sides are 8 px or more, so a map is always multiscale
    unless it is tiny.
    """
    h, w = int(rows_px), int(cols_px)
    factors: list[int] = []
    while max(h, w) > 512 and min(h, w) >= 64 and len(factors) < 5:
        factors.append(2)
        h, w = h // 2, w // 2
    if not factors and min(rows_px, cols_px) >= 8:
        factors = [2]
    return factors


def level_transformations(um_per_px: float, origin_rc_um: Any, factor: int) -> list[dict]:
    """Return the NGFF ``coordinateTransformations`` of a pyramid level ``factor`` times coarser.

    Blocks of ``factor x factor`` map pixels are averaged: pixel ``(i, j)`` of that level is centred
    on the centre of its block, ``origin + (factor * (i, j) + (factor - 1) / 2) * um_per_px``.
    """
    scale = float(um_per_px) * factor
    shift = [float(v) + (factor - 1) / 2.0 * float(um_per_px)
             for v in np.asarray(origin_rc_um, dtype=np.float64).reshape(2)]
    transforms: list[dict] = [{"type": "scale", "scale": [1.0, scale, scale]}]
    if any(shift):
        transforms.append({"type": "translation", "translation": [0.0, *shift]})
    return transforms


def _nanmean_blocks(block: np.ndarray, axis: Any = None) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():  # blocks wholly outside the tissue stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(block, axis=axis).astype(block.dtype, copy=False)


def coarsen_half(block: np.ndarray, valid: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the next pyramid level of ``block`` (genes, rows, cols): its 2 x 2 blocks' mean.

    NaN (outside the tissue) is ignored; an odd last row or column is left out, as the whole
    map's pyramid does (:func:`pyramid_factors`). ``valid`` (rows, cols), where every gene is
    a number (the map's mask), makes it faster: the four pixels are added in torch and only
    blocks on the mask's edge are averaged over their valid pixels. Returns the level and its
    ``valid`` (None without one).
    """
    g, rows, cols = block.shape
    rows2, cols2 = rows // 2, cols // 2
    if valid is None:
        view = block[:, :2 * rows2, :2 * cols2].reshape(g, rows2, 2, cols2, 2)
        return _nanmean_blocks(view, axis=(2, 4)), None
    import torch

    x = torch.from_numpy(block)
    total = x[:, 0:2 * rows2:2, 0:2 * cols2:2] + x[:, 0:2 * rows2:2, 1:2 * cols2:2]
    total.add_(x[:, 1:2 * rows2:2, 0:2 * cols2:2]).add_(x[:, 1:2 * rows2:2, 1:2 * cols2:2])
    out = total.mul_(0.25).numpy()  # NaN where any of the four is outside
    v = valid[:2 * rows2, :2 * cols2].astype(np.uint8)
    count = v[0::2, 0::2] + v[0::2, 1::2] + v[1::2, 0::2] + v[1::2, 1::2]
    edge_r, edge_c = np.nonzero((count > 0) & (count < 4))
    if len(edge_r):  # blocks on the mask's edge: the mean of their valid pixels
        r = 2 * edge_r[:, None] + np.array([0, 0, 1, 1])
        c = 2 * edge_c[:, None] + np.array([0, 1, 0, 1])
        out[:, edge_r, edge_c] = _nanmean_blocks(block[:, r, c], axis=2)
    return out, count > 0


def _write_pyramid_and_metadata(group: Any, um_per_px: float, names: list[str],
                                origin: list[float], name: str, *,
                                levels_written: bool = False) -> None:
    """Add the coarser levels of the map in ``group['0']`` and write the NGFF metadata.

    Each level is the mean of 2 x 2 blocks of the level above (NaN outside the tissue ignored); the
    multiscales and omero metadata are written through ome-zarr-py. With ``levels_written`` the
    levels are there already (:meth:`ZarrMapWriter.write_band`): only the metadata is written.
    """
    import dask.array as da
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata

    level0 = group["0"]
    n, rows, cols = (int(s) for s in level0.shape)
    datasets = [{"path": "0",
                 "coordinateTransformations": level_transformations(um_per_px, origin, 1)}]
    factor = 1
    previous = level0
    for k, step in enumerate(pyramid_factors(rows, cols), start=1):
        factor *= step
        datasets.append({"path": str(k), "coordinateTransformations":
                         level_transformations(um_per_px, origin, factor)})
        if levels_written:
            continue
        coarse = da.coarsen(_nanmean_blocks, da.from_zarr(previous), {1: step, 2: step},
                            trim_excess=True)
        chunks = (int(level0.chunks[0]), min(coarse.shape[1], 1024), min(coarse.shape[2], 1024))
        target = group.create_array(str(k), shape=coarse.shape, chunks=chunks,
                                    dtype=level0.dtype, fill_value=level0.fill_value,
                                    chunk_key_encoding={"name": "v2", "separator": "/"},
                                    compressors=level0.compressors)
        # one thread: the run's CPU budget (threads.cpu_threads) is not widened by dask's pool
        da.store(coarse.rechunk(chunks), target, lock=False, scheduler="synchronous")
        previous = target
    omero = {"name": name, "version": NGFF_VERSION, "rdefs": {"model": "greyscale"},
             "channels": [{"label": g, "color": "FFFFFF", "active": i == 0}
                          for i, g in enumerate(names)]}
    write_multiscales_metadata(group, datasets, fmt=FormatV04(), axes=MAP_AXES, name=name,
                               metadata={"omero": omero})


class ZarrMapWriter:
    """An OME-Zarr map being written.

    Assign gene chunks with ``writer[g0:g1] = block``, then :meth:`finalize` (moves
    ``<name>.partial`` to its final name). Used as a context manager it finalizes on success and
    deletes the partial folder on error.
    """

    def __init__(self, path: Path, partial: Path, array: Any, overwrite: bool, *,
                 group: Any = None, um_per_px: float = 1.0, names: Any = (),
                 origin_rc_um: Any = (0.0, 0.0), levels: Sequence[Any] = ()):
        self.path = path
        self.partial_path = partial
        self.array = array
        self.overwrite = overwrite
        self.finalized = False
        self._group = group
        self._levels = list(levels)  # the coarser levels, written band by band (write_band)
        self._metadata = (float(um_per_px), list(names),
                          [float(v) for v in np.asarray(origin_rc_um, float).reshape(2)])

    shape = property(lambda self: tuple(self.array.shape))
    dtype = property(lambda self: self.array.dtype)
    chunks = property(lambda self: tuple(self.array.chunks))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    @property
    def ndim(self) -> int:
        """Number of dimensions of the map (3: genes, rows, cols)."""
        return len(self.array.shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = np.asarray(self.array[...])
        return arr.astype(dtype) if dtype is not None else arr

    @property
    def band_rows(self) -> int:
        """Rows of a band :meth:`write_band` takes: whole chunks at every pyramid level."""
        return int(self.array.chunks[1]) * 2 ** len(self._levels)

    def write_band(self, g0: int, r0: int, block: np.ndarray,
                   valid: np.ndarray | None = None) -> None:
        """Write genes ``g0:`` x rows ``r0:`` (all columns) and their coarser levels.

        For a map opened with ``stream_levels``: ``r0`` is a multiple of :attr:`band_rows` and
        ``block`` is (genes, rows, cols) with rows :attr:`band_rows` (fewer at the map's end);
        the levels are computed from ``block`` in memory, not read back from the disk.
        ``valid`` (rows, cols): where every gene is a number (NaN elsewhere), to average faster.
        """
        self.array[g0:g0 + len(block), r0:r0 + block.shape[1]] = as_dtype(block, self.dtype)
        for k, level in enumerate(self._levels, start=1):
            block, valid = coarsen_half(block, valid)
            start = r0 >> k
            stop = min(start + block.shape[1], int(level.shape[1]))
            level[g0:g0 + len(block), start:stop] = as_dtype(
                block[:, :stop - start, :int(level.shape[2])], self.dtype)

    def finalize(self) -> Path:
        """Write the coarser pyramid levels and the NGFF metadata, then move the map into place.

        ``_atomic.replace_folder``: an existing map is replaced only once this one is whole. Returns
        the final path.
        """
        import zarr

        if self.finalized:
            return self.path
        if self._group is not None:
            um, names, origin = self._metadata
            _write_pyramid_and_metadata(self._group, um, names, origin,
                                        self.path.name.split(".")[0],
                                        levels_written=bool(self._levels))
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
                      origin_rc_um: Any = (0.0, 0.0), compressors: Any = None,
                      stream_levels: bool = False) -> ZarrMapWriter:
    """Create a multiscale OME-Zarr map (NGFF 0.4, zarr format 2) of ``shape`` (genes, rows, cols).

    The map is made in ``<path>.partial``: write the full-resolution level gene chunk by gene chunk,
    then call ``finalize()`` (or use ``with``), which adds the coarser levels and writes, through
    ome-zarr-py, axes c/y/x, micrometre ``scale`` (and ``translation``) per level and omero channel
    labels = gene names. ``chunks`` defaults to ``(1, rows, cols)`` capped at 1024 px;
    ``compressors``: a numcodecs compressor (zarr's default when None). With ``stream_levels``
    the coarser levels are created now, chunked as the full resolution, and written band by band
    with it (``write_band``) instead of read back from the disk by ``finalize()``.
    """
    import ome_zarr.writer  # noqa: F401  (needed by finalize(): fail here, before any work)
    import zarr

    path = Path(path)
    refuse_overwrite(path, overwrite)
    n, rows, cols = (int(s) for s in shape)
    names = _channel_names(gene_names, n)
    if chunks is None:
        chunks = (1, min(rows, 1024), min(cols, 1024))
    chunks = tuple(int(c) for c in chunks)
    partial = path.with_name(path.name + ".partial")
    _remove(partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(partial), mode="w", zarr_format=2)
    extra = {} if compressors is None else {"compressors": compressors}
    array = group.create_array("0", shape=(n, rows, cols), chunks=chunks, dtype=dtype,
                               fill_value=fill_value,
                               chunk_key_encoding={"name": "v2", "separator": "/"}, **extra)
    levels = []
    if stream_levels:
        for k, _ in enumerate(pyramid_factors(rows, cols), start=1):
            rows, cols = rows // 2, cols // 2
            levels.append(group.create_array(
                str(k), shape=(n, rows, cols), dtype=dtype, fill_value=fill_value,
                chunks=(chunks[0], min(chunks[1], rows), min(chunks[2], cols)),
                chunk_key_encoding={"name": "v2", "separator": "/"}, **extra))
    return ZarrMapWriter(path, partial, array, overwrite, group=group, um_per_px=um_per_px,
                         names=names, origin_rc_um=origin_rc_um, levels=levels)


def _read_ome_zarr_levels(path: Path) -> list[tuple]:
    """Read the levels of an OME-Zarr image through ome-zarr-py, full resolution first.

    Each level is ``(array (dask), um_per_px, origin_rc_um, channel names)``, the origin being the
    centre of the level's first pixel.
    """
    import zarr
    from ome_zarr.format import CurrentFormat, FormatV04, detect_format
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    # name the format the reader will detect (NGFF 0.4 lives in zarr format 2, 0.5 in format 3;
    # spatialdata registers its own format classes), which spares its "version mismatch" warning
    default = FormatV04() if (path / ".zattrs").is_file() else CurrentFormat()
    fmt = detect_format(zarr.open_group(str(path), mode="r").attrs.asdict(), default)
    location = parse_url(str(path), mode="r", fmt=fmt)
    if location is None:
        raise ValueError("not a zarr group")
    node = next((nd for nd in Reader(location)() if nd.specs and
                 any(isinstance(s, Multiscales) for s in nd.specs)), None)
    if node is None:
        raise ValueError("no NGFF multiscales image in it")
    names = [str(c) for c in node.metadata.get("channel_names", [])]
    transforms = node.metadata.get("coordinateTransformations") or [[] for _ in node.data]
    levels = []
    for arr, level_transforms in zip(node.data, transforms, strict=True):
        um, origin = 1.0, [0.0, 0.0]
        for t in level_transforms or []:
            if t["type"] == "scale":
                um = float(t["scale"][-1])
            elif t["type"] == "translation":
                origin = [float(v) for v in t["translation"][-2:]]
        levels.append((arr, um, np.asarray(origin), names))
    return levels


def read_map_levels(path: str | os.PathLike) -> list[tuple]:
    """Read every level of an OME-Zarr map, full resolution first.

    Each level is ``(array (dask, genes x rows x cols), um_per_px, origin_rc_um)``.
    """
    path = Path(path)
    try:
        levels = _read_ome_zarr_levels(path)
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read the OME-Zarr map {path}: {exc}",
                                "pass an OME-Zarr map written by napari-trihrge") from exc
    return [(arr if arr.ndim == 3 else arr[None], um, origin) for arr, um, origin, _ in levels]


#: OME-TIFF maps up to this size are read into memory (larger ones lazily, file kept open)
_EAGER_MAP_BYTES = 256 << 20


def read_map(path: str | os.PathLike, *, with_origin: bool = False) -> tuple:
    """Read a map written by :func:`write_ome_tiff` or :func:`open_ome_zarr_map`.

    Returns ``(array (dask, genes x rows x cols), um_per_px, gene_names)`` and, with
    ``with_origin=True``, a fourth item ``origin_rc_um``.
    """
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise TrihrgeInputError(f"map not found: {path}", "check the path")
    try:
        if path.is_dir():
            arr, um, origin, names = _read_ome_zarr_levels(path)[0]
        else:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                meta = tifffile.xml2dict(tf.ome_metadata) if tf.is_ome else {}
                series = tf.series[0]
                n_bytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
                # a map that fits in memory is read now: no file handle is left open
                arr = da.from_array(series.asarray()) if n_bytes <= _EAGER_MAP_BYTES else None
            if arr is None:
                import weakref

                import zarr

                store = tifffile.imread(path, aszarr=True)
                arr = da.from_zarr(zarr.open(store, mode="r"))
                # the file is closed when the map is collected, not left to the collector
                weakref.finalize(arr, store.close)
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
