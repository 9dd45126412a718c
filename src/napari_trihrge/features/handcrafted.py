"""'stain-texture': the default encoder, built from stain colour and texture; needs no weights.

Per-pixel maps (at ``fine_um_per_px``, about 2 um/px so nuclei span a few pixels; computed in
bands of rows of the image, each from only the image rows it needs, and kept in the encoder up to
``cache_mb``):

==================  ===========================================================================
``hema``            hematoxylin optical density (``skimage.color.rgb2hed``), x10
``eosin``           eosin optical density, x30
``dab``             third (DAB / residual) channel, x10
``lum``             luminance (0 black .. 1 white)
``sat``             HSV saturation
``grad``            Gaussian gradient magnitude of luminance (sigma 2 um), per um x10
``log_nuc``         positive part of the scale-normalised LoG of hematoxylin at nuclear scale
                    (sigma 3 um): dark blobs the size of nuclei
``log_cell``        the same at sigma 7 um (nuclear clusters, glands, small vessels)
``nuclear_frac``    1 where hematoxylin OD > 0.08 (nuclear pixels)
``eosin_frac``      1 where eosin OD > 0.01 (cytoplasm, stroma, red cells)
``background_frac`` 1 where luminance > 0.85 and saturation < 0.12 (glass, lumen, fat)
``roughness``       local variance of luminance over 3x3 fine pixels (fine texture), x100
``st_xx/yy/xy``     structure tensor of luminance (gradient products, sigma 2 um), x100
==================  ===========================================================================

Features of a window of ``W`` um around a location, for each centred sub-window of side
``W * scale`` with ``scale`` in (1, 1/2, 1/4, 1/8): the mean of every map above (the structure
tensor is turned into ``st_energy`` = trace and ``st_coherence`` = fibre orientation coherence,
0 isotropic .. 1 aligned) and the standard deviation of the first seven maps. That is
21 x 4 = 84 features (see :attr:`StainTextureEncoder.feature_names`). Features are not
standardised; the model standardises its inputs.

Speed: maps are box-averaged at a working resolution of about ``W / 32`` um/px with integral
images, evaluated at fractional positions (bilinear), so a window costs 16 look-ups per map and
sub-window whatever its size; 100k locations cost about the same as 1000. Outside the image the
maps take the values of a white background, exactly as if the window were padded with white.

Memory: locations are visited in bands of rows, and each band's box means read only the maps'
rows its windows cover (about half ``cache_mb`` at most, whatever the image's size): an image
whose maps exceed ``cache_mb`` (a capture area at 2 um/px is 300 MB of maps) is never held whole,
and its bands are computed again when a later call needs them. The features equal those of
whole-image maps to float rounding (the integral images start at the band, not the image's top).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb

from ..blocks import block_mean
from ..errors import TrihrgeInputError
from ..progress import Progress, ensure_progress
from .base import Encoder, as_centres_rc_um, check_window_um
from .registry import register_encoder

if TYPE_CHECKING:  # pragma: no cover
    from ..io.image import TissueImage

#: Per-pixel map names, in storage order. The first ``N_STD`` also get a standard deviation.
MAP_NAMES = ("hema", "eosin", "dab", "lum", "sat", "grad", "log_nuc", "log_cell",
             "nuclear_frac", "eosin_frac", "background_frac", "roughness", "st_xx", "st_yy",
             "st_xy")
N_STD = 7
_MEAN_NAMES = (*MAP_NAMES[:12], "st_energy", "st_coherence")
_HED_SCALE = np.array([10.0, 30.0, 10.0], dtype=np.float32)
_NUCLEAR_OD = 0.08
_EOSIN_OD = 0.01
_COHERENCE_EPS = 1e-3
_UNIT_LUT = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)
# skimage.color.separate_stains: log(max(rgb, 1e-6)) / log(1e-6), then @ hed_from_rgb
_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)
_HED_FROM_RGB = hed_from_rgb.astype(np.float32)
#: pixels of one band of stain maps (its filters' temporaries are about 250 bytes per pixel)
BAND_PX = 1 << 20


@dataclass
class _FineMaps:
    maps: np.ndarray  # (C, H, W) float16
    px_um: tuple[float, float]  # pixel size along rows / cols
    origin_um: tuple[float, float]  # position (um, row/col) of the top-left edge of pixel 0
    white: np.ndarray  # (C,) float64 map values of white background
    white_sq: np.ndarray  # (C,) float64 squared map values of white background

    @property
    def shape(self) -> tuple[int, int, int]:
        """(maps, rows, cols) of the whole image's maps."""
        return tuple(self.maps.shape)

    def rows(self, start: int, stop: int) -> _MapRows:
        """Rows ``[start, stop)`` of every map."""
        return _MapRows([self.maps[:, start:stop]])

    def max_rows(self) -> int:
        """How many rows one band of locations may read at once: all (held whole already)."""
        return 2**62


class _MapRows:
    """Consecutive rows of the maps, held as pieces (bands) joined per map on demand."""

    def __init__(self, pieces: list[np.ndarray]):
        self.pieces = pieces

    def channel(self, ch: int) -> np.ndarray:
        """Map ``ch`` over these rows (a view when they are one piece)."""
        parts = [p[ch] for p in self.pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _StainBands:
    """The stain maps of an image at ``res`` um/px (:func:`pixel_maps`), computed per band of
    ``band_rows`` rows from the image rows it needs (its own plus the filters' margin, white
    beyond the image) and kept in the encoder's cache up to its budget."""

    def __init__(self, encoder: StainTextureEncoder, image: TissueImage, res: float):
        self.encoder, self.image, self.res = encoder, image, res
        h, w = image.at_resolution_shape(res)
        h_um, w_um = image.shape_rc_um
        self.px_um = (float(h_um) / h, float(w_um) / w)
        # pixel k of a resampled image is centred at k * px_um (pure scaling, see io.image)
        self.origin_um = (-0.5 * self.px_um[0], -0.5 * self.px_um[1])
        self.white, self.white_sq = encoder._white
        self.shape = (len(MAP_NAMES), h, w)
        px = float(np.mean(self.px_um))
        # more than the widest filter's support (LoG at 7 um)
        self.margin_px = int(np.ceil(4 * 7.0 / px)) + 4
        self.band_rows = max(16, min(encoder.strip_px, BAND_PX // max(1, w)))

    def max_rows(self) -> int:
        """How many rows one band of locations may read: half the cache (the rest keeps the
        next band's rows)."""
        return max(self.band_rows, self.encoder.cache_bytes // 2 // self._bytes_per_row())

    def _bytes_per_row(self) -> int:
        return self.shape[0] * self.shape[2] * 2

    def rows(self, start: int, stop: int) -> _MapRows:
        q = self.band_rows
        pieces = []
        for k in range(start // q, -(-stop // q)):
            band = self._band(k)
            pieces.append(band[:, max(start, k * q) - k * q:min(stop, (k + 1) * q) - k * q])
        return _MapRows(pieces)

    def _band(self, k: int) -> np.ndarray:
        key = (self.image.key(), "stain-band", round(self.res, 4), self.band_rows, k)
        return self.encoder.cached(key, lambda: self._compute_band(k),
                                   nbytes=self.band_rows * self._bytes_per_row())

    def _compute_band(self, k: int) -> np.ndarray:
        _, h, w = self.shape
        m, q = self.margin_px, self.band_rows
        y0, y1 = k * q, min(h, (k + 1) * q)
        r0, r1 = max(0, y0 - m), min(h, y1 + m)
        rgb = self.image.at_resolution_rows(self.res, r0, r1)
        if rgb is None:  # the image is resized as a whole to this resolution: kept, 3 B/px
            rgb = self.encoder.cached(
                (self.image.key(), "stain-rgb", round(self.res, 4)),
                lambda: _uint8_rgb(np.asarray(self.image.at_resolution(self.res))))[r0:r1]
        padded = np.pad(_uint8_rgb(rgb), ((m - (y0 - r0), m - (r1 - y1)), (m, m), (0, 0)),
                        constant_values=255)
        maps = pixel_maps(padded, float(np.mean(self.px_um)))
        return maps[:, m:m + (y1 - y0), m:m + w].astype(np.float16)


def scale_tag(scale: float) -> str:
    """How a feature name says its sub-window ``scale``: '1', '1/2', ... or '0.3'."""
    if scale == 1:
        return "1"
    return f"1/{round(1 / scale)}" if round(1 / scale) * scale == 1 else f"{scale:g}"


def _uint8_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)[..., :3]
    return rgb if rgb.dtype == np.uint8 else np.clip(rgb, 0, 255).astype(np.uint8)


def stain_od(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities ``(H, W, 3)`` float32 (at least 0) of an RGB
    image: ``skimage.color.rgb2hed``, with the per-channel log taken from a 256-entry table."""
    return np.maximum(_OD_LUT[_uint8_rgb(rgb)] @ _HED_FROM_RGB, 0.0)


def pixel_maps(rgb: np.ndarray, px_um: float) -> np.ndarray:
    """Per-pixel maps (``MAP_NAMES`` order) of an RGB uint8 image of pixel size ``px_um``.

    Returns ``(C, H, W)`` float32. Filters see white beyond the array's border.
    """
    rgb = _uint8_rgb(rgb)
    f = _UNIT_LUT[rgb]
    hed = stain_od(rgb)
    hema_od, eos_od = hed[..., 0], hed[..., 1]
    lum = f @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    mx, mn = f.max(-1), f.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)

    def sig(um: float) -> float:
        return max(um / px_um, 0.5)

    # gradients in units of luminance per um (x10), so maps do not depend on the pixel size
    gr = ndi.gaussian_filter(lum, sig(2.0), order=(1, 0), mode="nearest") / px_um
    gc = ndi.gaussian_filter(lum, sig(2.0), order=(0, 1), mode="nearest") / px_um
    grad = np.hypot(gr, gc) * 10.0
    s1, s2 = sig(3.0), sig(7.0)
    log_nuc = np.maximum(-ndi.gaussian_laplace(hema_od, s1, mode="nearest") * s1 * s1, 0) * 10
    log_cell = np.maximum(-ndi.gaussian_laplace(hema_od, s2, mode="nearest") * s2 * s2, 0) * 10
    m3 = ndi.uniform_filter(lum, 3, mode="nearest")
    rough = np.maximum(ndi.uniform_filter(lum * lum, 3, mode="nearest") - m3 * m3, 0) * 100
    maps = np.stack([
        hed[..., 0] * _HED_SCALE[0], hed[..., 1] * _HED_SCALE[1], hed[..., 2] * _HED_SCALE[2],
        lum, sat, grad, log_nuc, log_cell,
        (hema_od > _NUCLEAR_OD).astype(np.float32), (eos_od > _EOSIN_OD).astype(np.float32),
        ((lum > 0.85) & (sat < 0.12)).astype(np.float32), rough,
        gr * gr * 100.0, gc * gc * 100.0, gr * gc * 100.0,
    ]).astype(np.float32)
    return maps


def _white_values() -> tuple[np.ndarray, np.ndarray]:
    patch = np.full((32, 32, 3), 255, dtype=np.uint8)
    m = pixel_maps(patch, 2.0)[:, 16, 16].astype(np.float64)
    return m, m * m


def _square(x16: np.ndarray) -> np.ndarray:
    return np.square(x16, dtype=np.float32)


def _integral(x: np.ndarray) -> np.ndarray:
    """Summed-area table ``S`` of shape ``(H+1, W+1)``: ``S[i, j] = x[:i, :j].sum()``."""
    s = np.zeros((x.shape[0] + 1, x.shape[1] + 1), dtype=np.float64)
    np.cumsum(x, axis=0, dtype=np.float64, out=s[1:, 1:])
    np.cumsum(s[1:, 1:], axis=1, out=s[1:, 1:])
    return s


def _bilinear_terms(r: np.ndarray, c: np.ndarray, shape: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (4, N) and weights (4, N) that interpolate an integral image of ``shape``
    (its (H+1, W+1)) at fractional positions already clipped to it."""
    h1, w1 = shape
    i0 = np.minimum(np.floor(r).astype(np.intp), h1 - 2)
    j0 = np.minimum(np.floor(c).astype(np.intp), w1 - 2)
    fr, fc = r - i0, c - j0
    base = i0 * w1 + j0
    idx = np.stack([base, base + w1, base + 1, base + w1 + 1])
    w = np.stack([(1 - fr) * (1 - fc), fr * (1 - fc), (1 - fr) * fc, fr * fc])
    return idx, w


class StainTextureEncoder(Encoder):
    """Hand-crafted stain colour + texture features at several centred sub-window scales.

    Parameters: ``fine_um_per_px`` pixel size of the per-pixel maps (never finer than the
    image), ``px_per_window`` working pixels across a window, ``scales`` sub-window fractions,
    ``cache_images`` how many images' whole maps to keep (the nuclei encoder's full-resolution
    maps; the 2 um RGB of an image resized as a whole),
    ``cache_mb`` the memory for bands of stain maps (kept across calls while they fit),
    ``strip_px`` the most rows of one band of maps, ``n_threads`` maps processed at once.
    """

    name = "stain-texture"

    def __init__(self, fine_um_per_px: float = 2.0, px_per_window: int = 32,
                 scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125), cache_images: int = 2,
                 strip_px: int = 1024, n_threads: int | None = None, cache_mb: float = 384.0):
        self.fine_um_per_px = float(fine_um_per_px)
        self.px_per_window = int(px_per_window)
        self.scales = tuple(float(s) for s in scales)
        self.cache_images = int(cache_images)
        self.cache_bytes = int(float(cache_mb) * 2**20)
        self.strip_px = int(strip_px)
        self.n_threads = int(n_threads or min(4, os.cpu_count() or 1))
        self.embed_dim = len(self.scales) * (len(_MEAN_NAMES) + N_STD)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._cache_nbytes: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._white = _white_values()

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``embed_dim`` features, e.g. ``'hema_mean@1/2'``."""
        names = []
        for s in self.scales:
            tag = scale_tag(s)
            names += [f"{n}@{tag}" if n.startswith("st_") else f"{n}_mean@{tag}"
                      for n in _MEAN_NAMES]
            names += [f"{n}_std@{tag}" for n in MAP_NAMES[:N_STD]]
        return names

    def config_key(self) -> str:
        return (f"stain-texture-v1|fine{self.fine_um_per_px:g}|ppw{self.px_per_window}|"
                f"scales{','.join(f'{s:g}' for s in self.scales)}")

    # ---------------------------------------------------------------------------------------
    def fine_maps(self, image: TissueImage) -> _StainBands:
        """Per-pixel maps of ``image`` at about ``fine_um_per_px``, computed band by band when
        read (:class:`_StainBands`)."""
        # an integer multiple of the image's pixel size, so the image is only block-averaged
        res = float(image.um_per_px) * max(1, round(self.fine_um_per_px / image.um_per_px))
        return _StainBands(self, image, res)

    def cached(self, key: tuple, build: Callable[[], Any], *, nbytes: int | None = None) -> Any:
        """``build()``, kept for the ``cache_images`` most recently used ``key`` of each kind of
        maps (``key``: the image's key, the kind, its settings), or with ``nbytes`` (its size)
        while the kind's most recently used entries fit ``cache_mb``."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = build()
        with self._lock:
            self._cache[key] = value
            same_kind = [k for k in self._cache if k[1] == key[1]]
            if nbytes is None:
                old = same_kind[:max(0, len(same_kind) - max(self.cache_images, 1))]
            else:
                self._cache_nbytes[key] = int(nbytes)
                total = sum(self._cache_nbytes[k] for k in same_kind)
                old = []
                for k in same_kind[:-1]:  # the oldest first; the new entry stays
                    if total <= self.cache_bytes:
                        break
                    total -= self._cache_nbytes[k]
                    old.append(k)
            for k in old:
                del self._cache[k]
                self._cache_nbytes.pop(k, None)
        return value

    # ---------------------------------------------------------------------------------------
    def embed_windows(self, image: TissueImage, centres_rc_um: np.ndarray, window_um: float,
                      *, progress: Progress | None = None) -> np.ndarray:
        progress = ensure_progress(progress)
        centres = as_centres_rc_um(centres_rc_um)
        window_um = check_window_um(window_um)
        if len(centres) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = self.window_features(image, centres, window_um, progress)
        progress.advance(len(centres))
        return out

    def window_features(self, image: TissueImage, centres: np.ndarray, window_um: float,
                        progress: Progress) -> np.ndarray:
        """The ``(N, embed_dim)`` features of windows of ``window_um`` around ``centres``
        (checked row/col um, at least one): :meth:`stain_features` here."""
        return self.stain_features(image, centres, window_um, progress)

    def stain_features(self, image: TissueImage, centres: np.ndarray, window_um: float,
                       progress: Progress) -> np.ndarray:
        """The stain colour and texture features ``(N, len(scales) * 21)`` float32 of windows of
        ``window_um`` around ``centres`` (checked row/col um)."""
        means, sqs = self.window_stats(self.fine_maps(image), centres, window_um, self.scales,
                                       N_STD, progress)
        out = np.empty((len(centres), len(self.scales) * (len(_MEAN_NAMES) + N_STD)),
                       dtype=np.float32)
        k = 0
        for si in range(len(self.scales)):
            m = means[si]
            st_xx, st_yy, st_xy = m[12], m[13], m[14]
            energy = st_xx + st_yy
            coherence = np.sqrt((st_xx - st_yy) ** 2 + 4 * st_xy ** 2) / (energy + _COHERENCE_EPS)
            feats = [*m[:12], energy, coherence,
                     *np.sqrt(np.maximum(sqs[si] - m[:N_STD] ** 2, 0.0))]
            for v in feats:
                out[:, k] = v
                k += 1
        return out

    def window_stats(self, fm: _FineMaps | _StainBands, centres: np.ndarray, window_um: float,
                     scales: tuple[float, ...], n_std: int, progress: Progress
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Box means of every map of ``fm`` over the centred sub-windows of side
        ``window_um * scale`` around each location: ``(S, C, N)`` float64, and of the squares of
        the first ``n_std`` maps ``(S, n_std, N)``; white background outside the image.

        Locations are taken in bands of rows, each reading only the maps' rows its boxes cover
        (at most ``fm.max_rows()`` plus a window)."""
        # working resolution: integer block of fine pixels, about window / px_per_window
        fine = float(np.mean(fm.px_um))
        f = max(1, int(round(window_um / self.px_per_window / fine)))
        c_maps, h, w = fm.shape
        hb, wb = -(-h // f), -(-w // f)
        px_r, px_c = fm.px_um[0] * f, fm.px_um[1] * f
        # box corners of every sub-window, in working-pixel edge coordinates
        pos_r = (centres[:, 0] - fm.origin_um[0]) / px_r
        pos_c = (centres[:, 1] - fm.origin_um[1]) / px_c
        # visit locations in bands of rows, so look-ups hit the cache (5x faster when random)
        row_band = np.floor(pos_r / 8.0)
        order = np.lexsort((pos_c, row_band))
        pos_r, pos_c, row_band = pos_r[order], pos_c[order], row_band[order]
        boxes = []  # per scale: clipped edges (r0, r1, c0, c1), full area, area inside the image
        for s in scales:
            hr, hc = window_um * s / 2 / px_r, window_um * s / 2 / px_c
            r0, r1 = np.clip(pos_r - hr, 0, hb), np.clip(pos_r + hr, 0, hb)
            c0, c1 = np.clip(pos_c - hc, 0, wb), np.clip(pos_c + hc, 0, wb)
            boxes.append(((r0, r1, c0, c1), 4 * hr * hc, (r1 - r0) * (c1 - c0)))
        n = len(centres)
        means = np.empty((len(scales), c_maps, n), dtype=np.float64)
        sqs = np.empty((len(scales), n_std, n), dtype=np.float64)
        # groups of whole 8-row bands of locations, each reading at most max_rows fine rows
        per_group = max(1, fm.max_rows() // f // 8)
        cuts = np.flatnonzero(np.diff((row_band - row_band[0]) // per_group)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
            self._group_stats(fm, boxes, slice(int(a), int(b)), f, hb, n_std, means, sqs,
                              progress)
        unsorted = np.empty_like(order)
        unsorted[order] = np.arange(n)
        return means[:, :, unsorted], sqs[:, :, unsorted]

    def _group_stats(self, fm: _FineMaps | _StainBands, boxes: list, sel: slice, f: int,
                     hb: int, n_std: int, means: np.ndarray, sqs: np.ndarray,
                     progress: Progress) -> None:
        """:meth:`window_stats` for the locations ``sel`` (sorted by rows): the maps' rows their
        boxes cover, block-averaged by ``f``, with the boxes' rows counted from there."""
        progress.check_cancelled()
        top = min(float(bx[0][0][sel].min()) for bx in boxes)
        bottom = max(float(bx[0][1][sel].max()) for bx in boxes)
        # working rows [rb0, rb1): every bilinear tap of every box corner
        rb0 = min(int(np.floor(top)), hb - 1)
        rb1 = max(min(hb, int(np.floor(bottom)) + 1), rb0 + 1)
        rows = fm.rows(rb0 * f, min(rb1 * f, fm.shape[1]))
        local = [((r0[sel] - rb0, r1[sel] - rb0, c0[sel], c1[sel]), area, area_in[sel])
                 for (r0, r1, c0, c1), area, area_in in boxes]

        def one_map(ch: int) -> None:
            progress.check_cancelled()
            x = rows.channel(ch)
            # block means at the working resolution; outside the image is white (background)
            self._box_means(block_mean(x, f, ragged=fm.white[ch]), local, fm.white[ch],
                            means[:, ch, sel])
            if ch < n_std:
                self._box_means(block_mean(x, f, ragged=fm.white_sq[ch], of=_square),
                                local, fm.white_sq[ch], sqs[:, ch, sel])

        # numpy releases the GIL in these loops: maps are processed in parallel threads
        with ThreadPoolExecutor(max_workers=self.n_threads) as pool:
            for fut in [pool.submit(one_map, ch) for ch in range(fm.shape[0])]:
                fut.result()

    @staticmethod
    def _box_means(x: np.ndarray, boxes, white: float, out: np.ndarray,
                   chunk: int = 32768) -> None:
        """Mean of ``x`` (white outside) over every box, from its integral image: 4 corners x
        4 bilinear taps per box, in chunks of locations to bound memory."""
        integral = _integral(x)
        flat = integral.ravel()
        for si, ((r0, r1, c0, c1), area, area_in) in enumerate(boxes):
            for a in range(0, len(r0), chunk):
                sl = slice(a, a + chunk)
                inside = np.zeros(len(r0[sl]), dtype=np.float64)
                for rr, cc, sign in ((r1, c1, 1.0), (r0, c1, -1.0), (r1, c0, -1.0),
                                     (r0, c0, 1.0)):
                    idx, wts = _bilinear_terms(rr[sl], cc[sl], integral.shape)
                    inside += sign * (flat[idx] * wts).sum(axis=0)
                out[si, sl] = (inside + white * (area - area_in[sl])) / area


_VIT_ONLY_OPTS = ("batch_size", "num_workers", "precision")
STAIN_TEXTURE_OPTIONS = ("fine_um_per_px, px_per_window, scales, cache_images, cache_mb, "
                         "strip_px, n_threads")


@register_encoder("stain-texture", description="hand-crafted stain colour + texture features "
                  "(84-d, default; no download, fast on CPU)")
def _stain_texture(*, device: str = "auto", hf_token: str | None = None,
                   **kwargs) -> StainTextureEncoder:
    return build_cpu_encoder(StainTextureEncoder, kwargs, STAIN_TEXTURE_OPTIONS)


def build_cpu_encoder(cls: type[StainTextureEncoder], kwargs: dict, allowed: str
                      ) -> StainTextureEncoder:
    """``cls(**kwargs)`` without the options of encoders with weights (device, token and
    batching do not apply: it runs on the CPU, without weights); an unknown option is an input
    error listing the ``allowed`` ones."""
    for k in _VIT_ONLY_OPTS:
        kwargs.pop(k, None)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TrihrgeInputError(f"unexpected option for {cls.name}: {err}",
                                f"allowed: {allowed}") from None
