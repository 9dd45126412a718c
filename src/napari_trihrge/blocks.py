"""Block means: downsampling an image by an integer factor, written once.

Every block mean in the package goes through :func:`block_mean` (``skimage.measure.block_reduce``
on in-memory bands of rows, so lazy whole-slide images are read with bounded memory) or, where the
result must stay lazy (napari pyramids of dask images), :func:`lazy_block_mean`
(``dask.array.coarsen``). Both sum the pixels of a block by adding its strided slices, one block
axis at a time; numpy's own multi-axis reduction over a blocked view is several times slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: what happens to a last block row/column that is cut by the image edge
RAGGED_MODES = ("average", "trim")


def _sum_axes(blocked: np.ndarray, axis: tuple[int, ...] | None = None, dtype: Any = None
              ) -> np.ndarray:
    """Sum of ``blocked`` over ``axis`` (all axes when None) in ``dtype``, by adding slices: the
    reduction function handed to ``block_reduce`` and ``dask.array.coarsen``."""
    acc = np.asarray(blocked)
    if axis is None:
        axis = tuple(range(acc.ndim))
    for removed, ax in enumerate(sorted(int(a) for a in axis)):
        ax -= removed
        lead = (slice(None),) * ax
        out = np.array(acc[lead + (0,)], dtype=dtype)
        for k in range(1, acc.shape[ax]):
            out += acc[lead + (k,)]
        acc = out
    return acc


def _check(factor: int, ragged: str | float) -> int:
    f = int(factor)
    if f != factor or f < 1:
        raise ValueError(f"the block factor must be a positive integer, got {factor!r}")
    if isinstance(ragged, str) and ragged not in RAGGED_MODES:
        raise ValueError(f"ragged must be one of {RAGGED_MODES} or a number, got {ragged!r}")
    return f


def _sum_dtype(in_dtype: np.dtype, out_dtype: np.dtype, f: int) -> np.dtype:
    if np.issubdtype(out_dtype, np.floating):
        return np.dtype(np.float64 if out_dtype == np.float64 else np.float32)
    if in_dtype == np.uint8 and f * f <= 257:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


def _mean_from_sums(sums: Any, counts: Any, out_dtype: np.dtype) -> Any:
    """``sums / counts``; an integer ``out_dtype`` gets the mean rounded half up, in integers."""
    if np.issubdtype(out_dtype, np.floating):
        return (sums / counts).astype(out_dtype, copy=False)
    return ((sums + counts // 2) // counts).astype(out_dtype)


def block_mean(image: Any, factor: int, *, ragged: str | float = "average",
               dtype: Any = np.float32, of: Callable[[np.ndarray], np.ndarray] | None = None,
               max_band_px: int = 16_000_000) -> np.ndarray:
    """Mean of ``factor x factor`` pixel blocks over the first two axes of ``image`` (H x W or
    H x W x C; numpy, dask, zarr or anything that slices by rows), as a numpy array.

    ``image`` is read one band of rows at a time (about ``max_band_px`` source pixels) and each
    band is reduced with ``skimage.measure.block_reduce``, so memory stays bounded.

    Parameters
    ----------
    ragged
        The last block row/column when H or W is not a multiple of ``factor``: ``'average'``
        averages the pixels that exist, ``'trim'`` drops it, a number completes it with that
        value (a background).
    dtype
        Output dtype. Floats are summed in float32 (float64 for a float64 output); an integer
        dtype gets the mean rounded half up, computed in integers.
    of
        Applied to each band before averaging (e.g. ``np.square`` for a mean of squares, or a
        colour transform from H x W x 3 to H x W).
    """
    from skimage.measure import block_reduce

    f = _check(factor, ragged)
    out_dtype = np.dtype(dtype)
    h, w = int(image.shape[0]), int(image.shape[1])
    if ragged == "trim":
        h, w = (h // f) * f, (w // f) * f
    ho, wo = -(-h // f), -(-w // f)
    band_rows = max(1, max_band_px // max(1, w * f)) * f
    parts = []
    for r0 in range(0, h, band_rows):
        band = np.asarray(image[r0:min(h, r0 + band_rows), :w])
        if of is not None:
            band = np.asarray(of(band))
        sum_dtype = _sum_dtype(band.dtype, out_dtype, f)
        block = (f, f) + (1,) * (band.ndim - 2)
        if not isinstance(ragged, str):
            pad = [(0, -(-n // f) * f - n) for n in band.shape[:2]] + [(0, 0)] * (band.ndim - 2)
            if any(p for _, p in pad):  # pad in the summing dtype, so the value is kept exactly
                band = np.pad(band.astype(sum_dtype), pad, constant_values=ragged)
        parts.append(block_reduce(band, block, _sum_axes, cval=0,
                                  func_kwargs={"dtype": sum_dtype}))
    if not parts:
        shape = (ho, wo) + tuple(np.shape(image)[2:])
        return np.zeros(shape, dtype=out_dtype)
    sums = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    if ragged == "average" and (h % f or w % f):
        # how many source pixels fall in each output row/column (the last one may be partial)
        n_r = np.minimum(f, h - np.arange(ho) * f)
        n_c = np.minimum(f, w - np.arange(wo) * f)
        counts = (n_r[:, None] * n_c[None, :]).reshape((ho, wo) + (1,) * (sums.ndim - 2))
        counts = counts.astype(sums.dtype)
    else:
        counts = sums.dtype.type(f * f)
    return _mean_from_sums(sums, counts, out_dtype)


def lazy_block_mean(image: Any, factor: int, *, dtype: Any = np.float32) -> Any:
    """:func:`block_mean` of a dask array that stays lazy (``dask.array.coarsen``); the ragged
    last block row/column is dropped (``ragged='trim'``)."""
    import dask.array as da

    f = _check(factor, "trim")
    out_dtype = np.dtype(dtype)
    arr = da.asarray(image)
    h, w = (arr.shape[0] // f) * f, (arr.shape[1] // f) * f
    sum_dtype = _sum_dtype(arr.dtype, out_dtype, f)
    sums = da.coarsen(_sum_axes, arr[:h, :w], {0: f, 1: f}, trim_excess=True, dtype=sum_dtype)
    return _mean_from_sums(sums, sum_dtype.type(f * f), out_dtype)
