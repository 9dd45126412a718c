"""Nuclei and cells from an H&E image, classical and without downloaded weights (no Qt).

The method, every size in micrometres and converted with the image's pixel size:

1. stain separation: the hematoxylin optical density (``skimage.color.rgb2hed``, Ruifrok &
   Johnston's H&E-DAB vectors), smoothed by a Gaussian of ``smooth_um``;
2. threshold: Otsu's threshold on the tissue's hematoxylin (``'otsu'``), optionally raised where
   the neighbourhood is darker (``'local'``: ``threshold_local`` over ``local_block_um``), or a
   given number; small specks removed and holes inside nuclei filled;
3. touching nuclei split by a marker watershed on the distance transform (one marker per local
   maximum of the smoothed distance at least ``min_distance_um`` apart);
4. nuclei outside ``min_area_um2`` .. ``max_area_um2`` dropped; labels int32, 0 = background.

:func:`segment_image` runs that tile by tile over a whole (lazy) image with an overlap of at
least one nucleus diameter and keeps every nucleus in the one tile whose core holds its centroid,
so a slide never sits in memory as floats and no nucleus is cut or doubled at a tile border.
:func:`expand_to_cells` grows nuclei into cells by a distance in micrometres without overlap
(``skimage.segmentation.expand_labels``, as bin2cell and Xenium do), tile by tile as well.
:func:`label_measurements` gives the per-label table (centroid, area, shape, stain) in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .errors import TrihrgeInputError
from .progress import Progress, ensure_progress

#: Gaussian smoothing of the hematoxylin channel before thresholding
SMOOTH_UM = 0.5
#: nearest two nuclei centres the watershed keeps apart
MIN_DISTANCE_UM = 3.0
#: smallest and largest nucleus kept (square micrometres)
MIN_AREA_UM2 = 12.0
MAX_AREA_UM2 = 400.0
#: neighbourhood of the local threshold
LOCAL_BLOCK_UM = 60.0
#: cells are nuclei grown by this much (bin2cell and Xenium use a few micrometres)
EXPAND_UM = 4.0
#: core size of the tiles a whole image is segmented in
TILE_UM = 700.0
#: the hematoxylin threshold never goes below this optical density (a section with few nuclei
#: would otherwise have Otsu split pale cytoplasm from glass)
MIN_THRESHOLD_OD = 0.02
THRESHOLDS = ("otsu", "local")
#: coarsest pixel for the built-in segmentation: a nucleus must span a few pixels
MAX_UM_PER_PX = 2.0


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density (float32, HxW) of an RGB H&E array.

    The hematoxylin channel of ``skimage.color.rgb2hed`` (the same numbers), computed for uint8
    images through one lookup table per colour channel.
    """
    rgb = _rgb(image)
    if rgb.dtype != np.uint8:
        from skimage.color import rgb2hed

        return rgb2hed(rgb)[..., 0].astype(np.float32)
    lut = _hematoxylin_lut()
    od = lut[0][rgb[..., 0]]
    od += lut[1][rgb[..., 1]]
    od += lut[2][rgb[..., 2]]
    return np.maximum(od, 0, out=od)


_LUT: list[np.ndarray] = []


def _hematoxylin_lut() -> np.ndarray:
    """(3, 256) float32: each channel's contribution to rgb2hed's hematoxylin."""
    if not _LUT:
        from skimage.color.colorconv import hed_from_rgb

        level = np.maximum(np.arange(256) / 255.0, 1e-6)
        log = np.log(level) / np.log(1e-6)
        _LUT.append((log[None, :] * hed_from_rgb[:, 0][:, None]).astype(np.float32))
    return _LUT[0]


def _rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise TrihrgeInputError(f"nuclei need an RGB H&E image (height x width x 3), got shape "
                                f"{arr.shape}", "pass the colour H&E image")
    return arr[..., :3]


def _check_px(um_per_px: Any) -> float:
    try:
        px = float(um_per_px)
    except (TypeError, ValueError):
        px = float("nan")
    if not np.isfinite(px) or px <= 0:
        raise TrihrgeInputError(f"the pixel size must be a positive number of um, got {um_per_px!r}",
                                "pass um_per_px of the image (e.g. 0.5 for a 20x scan)")
    return px


@dataclass(frozen=True)
class NucleusOptions:
    """Options of :func:`segment_nuclei`, every length in micrometres."""

    smooth_um: float = SMOOTH_UM
    threshold: str | float = "otsu"
    min_distance_um: float = MIN_DISTANCE_UM
    min_area_um2: float = MIN_AREA_UM2
    max_area_um2: float = MAX_AREA_UM2
    local_block_um: float = LOCAL_BLOCK_UM

    def __post_init__(self):
        for name in ("smooth_um", "min_distance_um", "local_block_um"):
            if not float(getattr(self, name)) > 0:
                raise TrihrgeInputError(f"{name} must be positive, got {getattr(self, name)}",
                                        f"use for example {name}={getattr(NucleusOptions, name)}")
        if not 0 <= float(self.min_area_um2) < float(self.max_area_um2):
            raise TrihrgeInputError(
                f"nucleus size limits {self.min_area_um2}..{self.max_area_um2} um^2 are not a range",
                f"use for example {MIN_AREA_UM2}..{MAX_AREA_UM2}")
        t = self.threshold
        if isinstance(t, str) and t not in THRESHOLDS:
            raise TrihrgeInputError(f"unknown threshold {t!r}",
                                    f"use one of {', '.join(THRESHOLDS)} or an optical density")

    @property
    def max_diameter_um(self) -> float:
        """Diameter of the largest nucleus kept (a circle of ``max_area_um2``)."""
        return float(2.0 * np.sqrt(self.max_area_um2 / np.pi))


def hematoxylin_threshold(od: np.ndarray, foreground: np.ndarray | None = None) -> float:
    """Otsu's threshold of hematoxylin optical density ``od`` (on ``foreground`` pixels when
    given), at least :data:`MIN_THRESHOLD_OD`."""
    from skimage.filters import threshold_otsu

    vals = od[foreground] if foreground is not None else od.ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size < 16 or np.ptp(vals) < 1e-6:
        return float("inf")
    return max(float(threshold_otsu(vals)), MIN_THRESHOLD_OD)


def segment_nuclei(image: np.ndarray, um_per_px: float, *, options: NucleusOptions | None = None,
                   **kwargs: Any) -> np.ndarray:
    """Nuclei of an RGB H&E array as an int32 label image (0 = background).

    Parameters
    ----------
    image
        HxWx3 uint8 RGB.
    um_per_px
        Pixel size of ``image`` in micrometres.
    options
        :class:`NucleusOptions`; keyword arguments (``smooth_um``, ``threshold``,
        ``min_distance_um``, ``min_area_um2``, ``max_area_um2``, ``local_block_um``) override it.
    """
    px = _check_px(um_per_px)
    opts = _options(options, kwargs)
    od = ndi.gaussian_filter(hematoxylin(image), opts.smooth_um / px)
    return _segment_od(od, px, opts)


def _options(options: NucleusOptions | None, kwargs: dict[str, Any]) -> NucleusOptions:
    from dataclasses import fields, replace

    known = {f.name for f in fields(NucleusOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown nucleus option(s) {unknown}; known: {sorted(known)}")
    return replace(options or NucleusOptions(), **kwargs)


def _segment_od(od: np.ndarray, px: float, opts: NucleusOptions, level: float | None = None
                ) -> np.ndarray:
    """Threshold, split and size-filter a smoothed hematoxylin image (see the module text).
    ``level``: the global cut (Otsu of this image when None and the threshold is by name)."""
    from skimage.filters import threshold_local
    from skimage.segmentation import watershed

    if level is None:
        level = (hematoxylin_threshold(od) if isinstance(opts.threshold, str)
                 else float(opts.threshold))
    if not np.isfinite(level):
        return np.zeros(od.shape, dtype=np.int32)
    mask = od > level
    if opts.threshold == "local":
        block = int(round(opts.local_block_um / px)) | 1
        mask &= od > threshold_local(od, block_size=max(block, 3), method="gaussian")
    min_px = max(1, int(opts.min_area_um2 / px**2))
    mask = _remove_small(mask, max(2, min_px // 2))
    holes = ~mask & ~_remove_small(~mask, int(np.ceil(opts.max_area_um2 / 4 / px**2)))
    mask |= holes
    if not mask.any():
        return np.zeros(od.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    dist = ndi.gaussian_filter(dist, max(0.5, 0.5 / px))
    markers = _maxima_markers(dist, mask, max(1, int(round(opts.min_distance_um / px))))
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    labels = _split_clumps(labels, od, px, opts)
    return _size_filter(labels, opts.min_area_um2 / px**2, opts.max_area_um2 / px**2)


def _split_clumps(labels: np.ndarray, od: np.ndarray, px: float, opts: NucleusOptions
                  ) -> np.ndarray:
    """Objects larger than ``max_area_um2`` after the distance watershed (packed clusters of
    nuclei whose outline has no waist) are split once more on the stain itself: a watershed of
    the hematoxylin, smoothed at about a nucleus radius, from its local maxima."""
    from skimage.segmentation import watershed

    sizes = np.bincount(labels.ravel())
    big = np.flatnonzero(sizes > opts.max_area_um2 / px**2)
    big = big[big > 0]
    if not big.size:
        return labels
    region = np.isin(labels, big)
    smooth = ndi.gaussian_filter(od, 0.5 * opts.min_distance_um / px)
    markers = _maxima_markers(np.where(region, smooth, 0), region,
                              max(1, int(round(opts.min_distance_um / px))))
    markers[markers > 0] += int(labels.max())
    pieces = watershed(-smooth, markers, mask=region)
    out = labels.copy()
    out[region] = pieces[region]
    return out


def _maxima_markers(values: np.ndarray, mask: np.ndarray, min_distance_px: int) -> np.ndarray:
    """Watershed markers (int32, 1..n): the local maxima of ``values`` in ``mask`` (a pixel
    that is the largest within ``min_distance_px``; a plateau is one marker), and every blob of
    ``mask`` without one gets a marker at its highest pixel. Whole-image filters, so the cost
    does not grow with the number of blobs."""
    size = 2 * int(min_distance_px) + 1
    peak = (values == ndi.maximum_filter(values, size=size)) & mask & (values > 0)
    markers, n = ndi.label(peak, structure=np.ones((3, 3)))
    blobs, n_blobs = ndi.label(mask)
    if n_blobs:
        has = np.zeros(n_blobs + 1, dtype=bool)
        has[blobs[markers > 0]] = True
        lacking = ~has
        lacking[0] = False
        where = np.flatnonzero(lacking[blobs.ravel()])
        if where.size:  # the highest pixel of each such blob
            blob = blobs.ravel()[where]
            order = np.lexsort((-values.ravel()[where], blob))
            _, first = np.unique(blob[order], return_index=True)
            top = where[order[first]]
            markers.ravel()[top] = n + 1 + np.arange(len(top))
    return markers.astype(np.int32)


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _size_filter(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Drop labels outside the size range and number the rest 1..n (int32)."""
    sizes = np.bincount(labels.ravel())
    keep = (sizes >= min_px) & (sizes <= max_px)
    keep[0] = False
    new = np.zeros(len(sizes), dtype=np.int32)
    new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new[labels]


# -----------------------------------------------------------------------------------------
# Whole images, tile by tile
# -----------------------------------------------------------------------------------------
def tiles(shape_px: tuple[int, int], tile_px: int, margin_px: int
          ) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Tiles of an image of ``shape_px``: ``(core, window)`` row/col slices, cores covering the
    image without overlap, windows the cores grown by ``margin_px`` (clipped to the image)."""
    h, w = shape_px
    for r0 in range(0, h, tile_px):
        for c0 in range(0, w, tile_px):
            r1, c1 = min(h, r0 + tile_px), min(w, c0 + tile_px)
            core = (slice(r0, r1), slice(c0, c1))
            window = (slice(max(0, r0 - margin_px), min(h, r1 + margin_px)),
                      slice(max(0, c0 - margin_px), min(w, c1 + margin_px)))
            yield core, window


def image_threshold(array: Any, um_per_px: float, opts: NucleusOptions,
                    tissue: np.ndarray | None = None, n_samples: int = 12,
                    sample_px: int = 512) -> float:
    """One hematoxylin threshold for a whole image: Otsu's threshold of full-resolution samples
    spread over the tissue (so every tile is cut at the same level)."""
    h, w = int(array.shape[0]), int(array.shape[1])
    s = min(sample_px, h, w)
    if tissue is not None and tissue.any():
        rr, cc = np.nonzero(tissue)
        pick = np.linspace(0, len(rr) - 1, min(n_samples, len(rr))).astype(int)
        centres = np.stack([(rr[pick] + 0.5) * h / tissue.shape[0],
                            (cc[pick] + 0.5) * w / tissue.shape[1]], axis=1)
    else:
        g = int(np.ceil(np.sqrt(n_samples)))
        centres = np.stack(np.meshgrid((np.arange(g) + 0.5) * h / g, (np.arange(g) + 0.5) * w / g,
                                       indexing="ij"), axis=-1).reshape(-1, 2)
    values = []
    for r, c in centres:
        r0 = int(np.clip(r - s / 2, 0, h - s))
        c0 = int(np.clip(c - s / 2, 0, w - s))
        rgb = np.asarray(array[r0:r0 + s, c0:c0 + s])
        od = ndi.gaussian_filter(hematoxylin(rgb), opts.smooth_um / um_per_px)
        values.append(od[::2, ::2].ravel())
    return hematoxylin_threshold(np.concatenate(values))


@dataclass
class Segmentation:
    """Nuclei (and cells) of a whole image: int32 labels on the image's pixel grid."""

    nuclei: np.ndarray
    um_per_px: float
    threshold_od: float
    cells: np.ndarray | None = None
    n_tiles: int = 0

    @property
    def n_nuclei(self) -> int:
        return int(self.nuclei.max()) if self.nuclei.size else 0


def segment_image(array: Any, um_per_px: float, *, options: NucleusOptions | None = None,
                  tissue: np.ndarray | None = None, tile_um: float = TILE_UM,
                  progress: Progress | None = None, out: Any = None) -> Segmentation:
    """Nuclei of a whole (possibly lazy, dask/zarr) HxWx3 image, tile by tile.

    Every tile is read with a margin of at least the largest nucleus' diameter; a nucleus is
    kept by the tile whose core holds its centroid, so none is cut or counted twice.
    ``tissue``: a boolean mask at any coarser resolution over the same extent; tiles without
    tissue are skipped and nuclei whose centroid is off the tissue dropped. ``out``: a
    zero-filled int32 array of the image's height x width to write the labels into (a zarr
    array on disk keeps a whole slide's labels out of memory); a new one in memory by default.
    """
    px = _check_px(um_per_px)
    opts = options or NucleusOptions()
    progress = ensure_progress(progress)
    h, w = int(array.shape[0]), int(array.shape[1])
    tile_px = max(64, int(round(tile_um / px)))
    margin_px = int(np.ceil(1.25 * opts.max_diameter_um / px)) + 2
    level = (image_threshold(array, px, opts, tissue) if isinstance(opts.threshold, str)
             else float(opts.threshold))
    out = np.zeros((h, w), dtype=np.int32) if out is None else out
    all_tiles = list(tiles((h, w), tile_px, margin_px))
    progress.stage("nuclei", total=len(all_tiles))
    next_id = 1
    n_done = 0
    for core, window in all_tiles:
        if tissue is not None and not _tile_has_tissue(tissue, core, (h, w)):
            progress.advance()
            continue
        n_done += 1
        rgb = np.asarray(array[window])
        od = ndi.gaussian_filter(hematoxylin(rgb), opts.smooth_um / px)
        lab = _segment_od(od, px, opts, level)
        if lab.max() == 0:
            progress.advance()
            continue
        idx = np.arange(1, int(lab.max()) + 1)
        cen = np.asarray(ndi.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, idx))
        cen += [window[0].start, window[1].start]
        own = ((cen[:, 0] >= core[0].start - 0.5) & (cen[:, 0] < core[0].stop - 0.5)
               & (cen[:, 1] >= core[1].start - 0.5) & (cen[:, 1] < core[1].stop - 0.5))
        if tissue is not None:
            own &= _on_tissue(tissue, cen, (h, w))
        new = np.zeros(len(idx) + 1, dtype=np.int32)
        n_own = int(own.sum())
        new[1:][own] = np.arange(next_id, next_id + n_own, dtype=np.int32)
        next_id += n_own
        relabelled = new[lab]
        dst = np.asarray(out[window])  # a view in memory, a copy from zarr
        put = (relabelled > 0) & (dst == 0)
        dst[put] = relabelled[put]
        if not isinstance(out, np.ndarray):
            out[window] = dst
        progress.advance()
    return Segmentation(nuclei=out, um_per_px=px, threshold_od=float(level), n_tiles=n_done)


def _tile_has_tissue(tissue: np.ndarray, core: tuple[slice, slice], shape: tuple[int, int]
                     ) -> bool:
    fr, fc = tissue.shape[0] / shape[0], tissue.shape[1] / shape[1]
    r0, r1 = int(core[0].start * fr), int(np.ceil(core[0].stop * fr))
    c0, c1 = int(core[1].start * fc), int(np.ceil(core[1].stop * fc))
    return bool(tissue[max(0, r0 - 1):r1 + 1, max(0, c0 - 1):c1 + 1].any())


def _on_tissue(tissue: np.ndarray, rc_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    ij = np.floor(rc_px * [tissue.shape[0] / shape[0], tissue.shape[1] / shape[1]]).astype(int)
    ij = np.clip(ij, 0, np.array(tissue.shape) - 1)
    grown = ndi.binary_dilation(tissue, iterations=1)
    return grown[ij[:, 0], ij[:, 1]]


def expand_to_cells(nuclei: np.ndarray, um_per_px: float, expand_um: float = EXPAND_UM, *,
                    tile_um: float = TILE_UM, out: Any = None) -> np.ndarray:
    """Cells: every nucleus grown by ``expand_um`` without overlapping its neighbours
    (``skimage.segmentation.expand_labels``), tile by tile with a margin of the distance.

    ``nuclei`` may be a zarr array; ``out`` an array of the same shape to write into (as for
    :func:`segment_image`).
    """
    from skimage.segmentation import expand_labels

    px = _check_px(um_per_px)
    if not float(expand_um) >= 0:
        raise TrihrgeInputError(f"the cell expansion must be >= 0 um, got {expand_um}",
                                f"use for example {EXPAND_UM}")
    dist_px = float(expand_um) / px
    if dist_px <= 0 and out is None:
        return np.array(nuclei, dtype=np.int32)
    margin = int(np.ceil(dist_px)) + 2
    tile_px = max(64, int(round(tile_um / px)))
    out = np.zeros(nuclei.shape, dtype=np.int32) if out is None else out
    for core, window in tiles(nuclei.shape, tile_px, margin):
        grown = np.asarray(nuclei[window])
        if dist_px > 0:
            grown = expand_labels(grown, distance=dist_px)
        inner = (slice(core[0].start - window[0].start, core[0].stop - window[0].start),
                 slice(core[1].start - window[1].start, core[1].stop - window[1].start))
        out[core] = grown[inner]
    return out


# -----------------------------------------------------------------------------------------
# Per-label measurements
# -----------------------------------------------------------------------------------------
def labels_max(labels: Any, *, tile_px: int = 4096) -> int:
    """Return the largest label of an image in memory or on disk (read a tile at a time)."""
    if isinstance(labels, np.ndarray):
        return int(labels.max()) if labels.size else 0
    best = 0
    for core, _ in tiles(tuple(labels.shape), tile_px, 0):
        best = max(best, int(np.asarray(labels[core]).max()))
    return best


def label_measurements(labels: np.ndarray, um_per_px: float, *, image: Any = None,
                       tile_um: float = TILE_UM) -> pd.DataFrame:
    """One row per label 1..max (index = label id): centroid (``row_um``, ``col_um``, ``x_px``,
    ``y_px``), ``area_um2``, ``major_axis_um``, ``minor_axis_um``, ``eccentricity`` (from the
    second moments) and, with the RGB ``image`` on the same grid, ``hematoxylin_od`` (mean
    hematoxylin optical density). Labels absent from the image get area 0 and NaN elsewhere."""
    px = _check_px(um_per_px)
    tile_px = max(64, int(round(tile_um / px)))
    n = labels_max(labels, tile_px=tile_px)
    sums = np.zeros((7, n + 1), dtype=np.float64)  # count, r, c, rr, cc, rc, hematoxylin
    for core, _ in tiles(labels.shape, tile_px, 0):
        block = np.asarray(labels[core])
        lab = block.ravel()
        sel = lab > 0
        if not sel.any():
            continue
        lab = lab[sel]
        rr, cc = np.nonzero(np.ones(block.shape, dtype=bool))
        rr = (rr[sel] + core[0].start).astype(np.float64)
        cc = (cc[sel] + core[1].start).astype(np.float64)
        vals = [None, rr, cc, rr * rr, cc * cc, rr * cc]
        for k, v in enumerate(vals):
            sums[k] += np.bincount(lab, weights=v, minlength=n + 1)
        if image is not None:
            od = hematoxylin(np.asarray(image[core])).ravel()[sel]
            sums[6] += np.bincount(lab, weights=od, minlength=n + 1)
    count = sums[0, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mr, mc = sums[1, 1:] / count, sums[2, 1:] / count
        vr = sums[3, 1:] / count - mr**2 + 1 / 12
        vc = sums[4, 1:] / count - mc**2 + 1 / 12
        crc = sums[5, 1:] / count - mr * mc
        half = np.sqrt(np.maximum(((vr - vc) / 2) ** 2 + crc**2, 0))
        l1 = np.maximum((vr + vc) / 2 + half, 0)
        l2 = np.maximum((vr + vc) / 2 - half, 0)
        ecc = np.sqrt(np.clip(1 - l2 / l1, 0, 1))
    from .geometry import rc_um_to_xy_px

    rc_um = np.stack([mr, mc], axis=1) * px
    xy = rc_um_to_xy_px(rc_um, px)
    table = pd.DataFrame({
        "row_um": rc_um[:, 0], "col_um": rc_um[:, 1], "x_px": xy[:, 0], "y_px": xy[:, 1],
        "area_um2": count * px**2, "major_axis_um": 4 * np.sqrt(l1) * px,
        "minor_axis_um": 4 * np.sqrt(l2) * px, "eccentricity": ecc,
    }, index=pd.RangeIndex(1, n + 1, name="label"))
    if image is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            table["hematoxylin_od"] = sums[6, 1:] / count
    return table
