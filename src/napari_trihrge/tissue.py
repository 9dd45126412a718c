"""Tissue mask from an H&E image.

Stained tissue both **absorbs light** and is **coloured** (pink eosin, purple hematoxylin); glass
is bright, and may carry a faint colour cast (a pinkish haze of eosin on the slide, tinted
scanner white balance). The foreground is therefore found at a coarse working resolution
(~8 um/px) as the pixels that are saturated (HSV saturation above an Otsu threshold kept within
sane bounds) AND absorb light relative to the glass (optical density summed over the channels,
Beer-Lambert against the colour of the glass, above an Otsu threshold kept within bounds), then
cleaned with morphological closing and opening, hole filling and removal of small objects (sizes
in square micrometres, converted with the pixel size). Saturation alone takes a pink haze on the
glass for tissue; optical density alone takes dark grey objects for tissue (the Visium fiducial
frame, dust, slide labels), so both are required.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .blocks import block_mean
from .errors import TrihrgeInputError

#: Otsu's threshold on saturation is clipped to this range, so an image that is all tissue or all
#: glass still gets a sensible mask (H&E tissue saturation is ~0.15-0.5, glass < 0.04).
SATURATION_BOUNDS = (0.05, 0.14)
#: Otsu's threshold on the optical density relative to the glass (summed over R, G, B) is
#: clipped to this range: a pink haze on the glass stays below it, pale stroma above it.
OPTICAL_DENSITY_BOUNDS = (0.12, 0.25)
#: the brightest pixels (this fraction) give the colour of the glass ...
GLASS_FRACTION = 0.05
#: ... when that colour is glass-like: at most this saturated and every channel at least this
#: bright (uint8); otherwise (an image that is all tissue) the glass is taken as white
GLASS_MAX_SATURATION = 0.14
GLASS_MIN_LEVEL = 180


def _as_rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 2:
        raise TrihrgeInputError(
            f"the tissue mask needs an RGB image of shape (height, width, 3), got {arr.shape}",
            "pass the H&E image as an HxWx3 uint8 array")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and np.nanmax(arr) <= 1.0 + 1e-6:
        return np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(np.uint8)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max in [0, 1], float32."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    return (mx - mn) / np.maximum(mx, 1.0)


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """The colour of the glass (float RGB in 0-255): the median of the brightest
    :data:`GLASS_FRACTION` of the pixels when that colour is glass-like (pale, nearly grey),
    else white (an image that is all tissue has no glass to measure)."""
    px = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    brightness = px.sum(axis=1)
    cut = np.quantile(brightness, 1.0 - GLASS_FRACTION)
    colour = np.median(px[brightness >= cut], axis=0)
    sat = float((colour.max() - colour.min()) / max(float(colour.max()), 1.0))
    if sat > GLASS_MAX_SATURATION or colour.min() < GLASS_MIN_LEVEL:
        return np.full(3, 255.0, dtype=np.float32)
    return colour


def optical_density(rgb: np.ndarray, glass: np.ndarray | None = None) -> np.ndarray:
    """Optical density relative to the glass, summed over R, G and B (Beer-Lambert:
    ``-log10(I / I_glass)`` per channel, negative values clipped to 0), float32."""
    glass = glass_colour(rgb) if glass is None else np.asarray(glass, dtype=np.float32)
    ratio = np.maximum(np.asarray(rgb, dtype=np.float32), 1.0) / np.maximum(glass, 1.0)
    return np.clip(-np.log10(ratio), 0.0, None).sum(axis=-1)


def _bounded_otsu(values: np.ndarray, bounds: tuple[float, float]) -> float:
    from skimage.filters import threshold_otsu

    thr = float(threshold_otsu(values)) if np.ptp(values) > 1e-6 else bounds[1]
    return float(np.clip(thr, *bounds))


def _disk(radius_px: int) -> np.ndarray:
    r = max(int(radius_px), 0)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy**2 + xx**2 <= r * r + 0.5


def tissue_mask(image: np.ndarray, *, um_per_px: float = 1.0, min_object_um2: float = 20_000.0,
                max_hole_um2: float | None = None, work_um_per_px: float = 8.0,
                close_um: float = 24.0) -> np.ndarray:
    """Boolean tissue mask (same height and width as ``image``) of an H&E image.

    Parameters
    ----------
    image
        HxWx3 uint8 RGB (float in [0, 1] and RGBA are accepted too).
    um_per_px
        Pixel size of ``image``; converts the micrometre sizes below into pixels.
    min_object_um2
        Tissue pieces smaller than this (square micrometres) are dropped (dust, fiducials).
    max_hole_um2
        Holes up to this area are filled; ``None`` fills all holes (lumens, fat, tears).
    work_um_per_px
        Working resolution; images finer than this are block-averaged down first.
    close_um
        Gaps narrower than about this are closed.
    """
    rgb = _as_rgb(image)
    if not np.isfinite(um_per_px) or um_per_px <= 0:
        raise TrihrgeInputError(f"um_per_px must be positive, got {um_per_px}",
                                "pass the image's pixel size in micrometres")
    h, w = rgb.shape[:2]
    f = max(1, int(np.floor(work_um_per_px / um_per_px)))
    small = block_mean(rgb, f)  # mean colour of f x f blocks, one band of rows at a time
    px_um = um_per_px * f
    sat = ndi.gaussian_filter(_saturation(small), 1.0)
    od = ndi.gaussian_filter(optical_density(small), 1.0)
    mask = (sat > _bounded_otsu(sat, SATURATION_BOUNDS)) & \
        (od > _bounded_otsu(od, OPTICAL_DENSITY_BOUNDS))

    r = max(1, int(round(close_um / (2 * px_um))))
    p = r + 2  # pad with edge values so tissue touching the image border is not eroded
    mask = np.pad(mask, p, mode="edge")
    mask = ndi.binary_opening(ndi.binary_closing(mask, _disk(r)), _disk(1))[p:-p, p:-p]
    if max_hole_um2 is None:
        mask = ndi.binary_fill_holes(mask)
    elif max_hole_um2 > 0:
        holes = ndi.binary_fill_holes(mask) & ~mask
        lab, n = ndi.label(holes)
        if n:
            area = np.bincount(lab.ravel())[1:] * px_um**2
            mask |= np.isin(lab, 1 + np.flatnonzero(area <= max_hole_um2))
    lab, n = ndi.label(mask)
    if n:
        area = np.bincount(lab.ravel())[1:] * px_um**2
        mask = np.isin(lab, 1 + np.flatnonzero(area >= min_object_um2))

    if f == 1:
        return mask
    # back to the input grid with smooth edges: bilinear on the coarse mask, threshold at 0.5
    from skimage.transform import resize

    big = resize(mask.astype(np.float32), (mask.shape[0] * f, mask.shape[1] * f), order=1,
                 anti_aliasing=False, mode="edge")
    return big[:h, :w] > 0.5


def tissue_mask_for(image: Any, mask_um_per_px: float = 8.0, **kwargs: Any
                    ) -> tuple[np.ndarray, float]:
    """Tissue mask of a :class:`~napari_trihrge.io.image.TissueImage` (anything with
    ``at_resolution(um_per_px)`` and ``um_per_px``) at about ``mask_um_per_px``.

    Returns ``(mask, mask_um_per_px)`` with the mask's actual pixel size (an image coarser than
    requested is used as it is). ``kwargs`` go to :func:`tissue_mask`.
    """
    if not hasattr(image, "at_resolution") or not hasattr(image, "um_per_px"):
        raise TrihrgeInputError("tissue_mask_for needs a TissueImage",
                                "use napari_trihrge.io.get_image(adata) or tissue_mask(array)")
    target = max(float(mask_um_per_px), float(image.um_per_px))
    try:
        arr, px = image.at_resolution(target, return_um_per_px=True)
    except TypeError:  # duck-typed image without the keyword
        arr = image.at_resolution(target)
        shape_rc_um = getattr(image, "shape_rc_um", None)
        px = (float(shape_rc_um[0]) / arr.shape[0] if shape_rc_um is not None
              else float(image.um_per_px) * np.asarray(image.array).shape[0] / arr.shape[0])
    arr = np.asarray(arr)
    kwargs.setdefault("work_um_per_px", float(px))
    return tissue_mask(arr, um_per_px=float(px), **kwargs), float(px)
