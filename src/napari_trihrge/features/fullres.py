"""'stain-texture-nuclei': the default encoder's features plus what a pathologist reads at the
image's full resolution (nuclei, cytoplasm, fine chromatin texture). Needs no weights.

The full-resolution image (finer than :data:`MAX_UM_PER_PX`; her2st scans are 0.69 um/px) is
read once per image, in strips of rows, and turned into maps on a grid of about
:data:`GRID_UM` (an integer block of full-resolution pixels):

* nuclei from :func:`napari_trihrge.nuclei.segment_image` (hematoxylin, Otsu threshold,
  distance watershed) and their measurements; every nucleus adds, at its centroid's grid pixel,
  1 (``count``), its area (``area``, um^2) and squared area, its eccentricity, its
  ``ellipse_fill`` (area over that of the ellipse of the same second moments: below 1 for a
  notched or lobed outline) and its mean hematoxylin optical density;
* per full-resolution pixel, averaged over the grid pixel: inside a nucleus (``nuclear``),
  eosin-stained outside the nuclei (``cytoplasm``: cytoplasm and stroma), the grey-level
  co-occurrence contrast and homogeneity of the hematoxylin (quantised in steps of
  :data:`HEMA_LEVEL_OD`) at a distance of 1 and 3 full-resolution pixels (right and down
  neighbours), and the uniform local binary pattern of the hematoxylin (quantised in steps of
  :data:`LBP_LEVEL_OD`; the 8 neighbours of the 3x3 square, :func:`uniform_patterns`) grouped
  into local maxima (codes 0-1), corners (2, 6), edges (3-5), minima or flat (7-8) and
  non-uniform patterns.

Features of a window of ``W`` um, for each centred sub-window of side ``W * scale`` with
``scale`` in ``nuclei_scales`` (default 1 and 1/2), from box means of these maps exactly as the
default encoder computes its own (integral images, white outside the image): nuclei per mm^2,
nuclear area mean and sd (um^2), mean eccentricity, ellipse fill and nuclear hematoxylin, the
nuclear and cytoplasm area fractions and the nuclear share of both, the four co-occurrence
statistics and the five pattern fractions (18 per scale, :data:`FULLRES_NAMES`). Where a box
holds less than half a nucleus the per-nucleus means take the section's mean nucleus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import nuclei
from ..blocks import block_mean
from ..errors import TrihrgeInputError
from ..progress import CancelOnlyProgress, Progress, ensure_progress
from ..tissue import tissue_mask_for
from .handcrafted import (
    _EOSIN_OD,
    STAIN_TEXTURE_OPTIONS,
    StainTextureEncoder,
    _FineMaps,
    build_cpu_encoder,
    scale_tag,
    stain_od,
)
from .registry import register_encoder

if TYPE_CHECKING:  # pragma: no cover
    from ..io.image import TissueImage

#: coarsest image the full-resolution statistics are read from (a nucleus spans a few pixels)
MAX_UM_PER_PX = nuclei.MAX_UM_PER_PX
#: pixel of the grid the full-resolution maps are averaged onto
GRID_UM = 2.0
#: quantisation step of the hematoxylin optical density for the co-occurrence statistics
HEMA_LEVEL_OD = 0.02
HEMA_LEVELS = 16
#: quantisation step of the hematoxylin optical density for the local binary patterns
LBP_LEVEL_OD = 0.01
#: co-occurrence distances in full-resolution pixels
GLCM_DISTANCES_PX = (1, 3)
#: uniform LBP codes (8 neighbours) grouped by what they look like
LBP_GROUPS = {"lbp_maximum": (0, 1), "lbp_corner": (2, 6), "lbp_edge": (3, 4, 5),
              "lbp_minimum_flat": (7, 8), "lbp_nonuniform": (9,)}

NUCLEUS_MAPS = ("count", "area", "area_sq", "eccentricity", "ellipse_fill", "hematoxylin")
PIXEL_MAPS = ("nuclear", "cytoplasm",
              *(f"hema_{stat}_{d}px" for d in GLCM_DISTANCES_PX
                for stat in ("contrast", "homogeneity")), *LBP_GROUPS)
MAP_NAMES = NUCLEUS_MAPS + PIXEL_MAPS
#: features per sub-window scale
FULLRES_NAMES = ("nuclei_per_mm2", "nucleus_area_um2_mean", "nucleus_area_um2_sd",
                 "nucleus_eccentricity_mean", "nucleus_ellipse_fill_mean",
                 "nucleus_hematoxylin_mean", "nuclear_fraction", "cytoplasm_fraction",
                 "nuclear_share", *PIXEL_MAPS[2:])
#: largest ellipse fill kept (tiny nuclei: the pixel grid's moments)
MAX_ELLIPSE_FILL = 1.5
_STRIP_ROWS = 512
_MARGIN_PX = max(GLCM_DISTANCES_PX) + 1


#: the 8 neighbours of the 3x3 square, in circular order (row, col offsets)
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
#: LBP code (0-9) -> index of its group in LBP_GROUPS
_GROUP_OF_CODE = np.array([next(g for g, codes in enumerate(LBP_GROUPS.values()) if k in codes)
                           for k in range(10)], dtype=np.uint8)


def uniform_patterns(level: np.ndarray) -> np.ndarray:
    """Uniform local binary pattern codes (0-9, uint8) of an integer image, 8 neighbours of the
    3x3 square: for a uniform pattern (at most 2 changes around the ring) the number of
    neighbours at least the centre (``skimage``'s 'uniform' numbering), 9 otherwise. Beyond the
    array the image is 0 (white)."""
    h, w = level.shape
    padded = np.pad(level, 1)
    bits = [padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] >= level for dr, dc in _RING]
    count = np.zeros((h, w), dtype=np.uint8)
    changes = np.zeros((h, w), dtype=np.uint8)
    for k in range(8):
        count += bits[k]
        changes += bits[k] != bits[k - 1]
    return np.where(changes <= 2, count, np.uint8(9))


def pixel_statistics(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pixel maps (``PIXEL_MAPS`` order, ``(C, H, W)`` float32) of an RGB uint8 image at
    full resolution and its nucleus labels on the same grid; beyond the array is white."""
    hed = stain_od(rgb)
    hema = hed[..., 0]
    h, w = hema.shape
    out = np.empty((len(PIXEL_MAPS), h, w), dtype=np.float32)
    nuclear = labels > 0
    out[0] = nuclear
    out[1] = (hed[..., 1] > _EOSIN_OD) & ~nuclear
    del hed
    level = np.minimum(np.floor(hema / np.float32(HEMA_LEVEL_OD)), HEMA_LEVELS - 1)
    padded = np.pad(level, ((0, _MARGIN_PX), (0, _MARGIN_PX)), constant_values=0.0)
    k = 2
    for d in GLCM_DISTANCES_PX:
        right = (padded[:h, d:d + w] - level) ** 2
        down = (padded[d:d + h, :w] - level) ** 2
        out[k] = 0.5 * (right + down)
        out[k + 1] = 0.5 / (1.0 + right) + 0.5 / (1.0 + down)
        k += 2
    # on integer levels (a float image gives patterns from rounding noise)
    groups = _GROUP_OF_CODE[uniform_patterns(
        np.minimum(hema / np.float32(LBP_LEVEL_OD), 255).astype(np.uint8))]
    for g in range(len(LBP_GROUPS)):
        out[k + g] = groups == g
    return out


def _white_pixel_values() -> np.ndarray:
    patch = np.full((16, 16, 3), 255, dtype=np.uint8)
    return pixel_statistics(patch, np.zeros((16, 16), dtype=np.int32))[:, 8, 8].astype(np.float64)


def fullres_maps(rgb: np.ndarray, um_per_px: float, *, grid_um: float = GRID_UM,
                 tissue: np.ndarray | None = None, progress: Progress | None = None
                 ) -> tuple[_FineMaps, np.ndarray]:
    """The maps of the module docstring for a whole full-resolution RGB image.

    ``tissue``: a coarser boolean tissue mask of the same extent (nuclei are only looked for
    on the tissue). Returns the maps on the grid (``MAP_NAMES`` order) and the section's mean
    nucleus (area um^2, eccentricity, ellipse fill, hematoxylin OD; NaN without nuclei).
    """
    progress = ensure_progress(progress)
    px = float(um_per_px)
    f = max(1, int(round(grid_um / px)))
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    hg, wg = -(-h // f), -(-w // f)
    seg = nuclei.segment_image(rgb, px, tissue=tissue, progress=CancelOnlyProgress(progress))
    labels = seg.nuclei
    table = nuclei.label_measurements(labels, px, image=rgb)
    table = table[table["area_um2"] > 0]
    progress.check_cancelled()
    area = table["area_um2"].to_numpy()
    # area over that of the ellipse of the same second moments: 1 for an ellipse, less for
    # a notched or lobed outline (a cheap stand-in for solidity, which needs a convex hull)
    ellipse_um2 = np.pi / 4 * table["major_axis_um"].to_numpy() * table["minor_axis_um"].to_numpy()
    fill = np.clip(area / np.maximum(ellipse_um2, 1e-6), 0.0, MAX_ELLIPSE_FILL)
    maps = np.zeros((len(MAP_NAMES), hg, wg), dtype=np.float32)
    # every nucleus at the grid pixel of its centroid (grid pixel k holds full-res pixels k*f..)
    rr = np.clip(((table["row_um"].to_numpy() / px + 0.5) // f).astype(np.intp), 0, hg - 1)
    cc = np.clip(((table["col_um"].to_numpy() / px + 0.5) // f).astype(np.intp), 0, wg - 1)
    flat = rr * wg + cc
    per_nucleus = (np.ones(len(table)), area, area * area, table["eccentricity"].to_numpy(),
                   fill, table["hematoxylin_od"].to_numpy())
    for k, values in enumerate(per_nucleus):
        maps[k] = np.bincount(flat, weights=values, minlength=hg * wg).reshape(hg, wg)
    white_px = _white_pixel_values()
    n0 = len(NUCLEUS_MAPS)
    step = max(f, (_STRIP_ROWS // f) * f)
    for y0 in range(0, h, step):
        progress.check_cancelled()
        y1 = min(h, y0 + step)
        start, stop = max(0, y0 - _MARGIN_PX), min(h, y1 + _MARGIN_PX)  # the strip's neighbours
        stats = pixel_statistics(np.asarray(rgb[start:stop]), np.asarray(labels[start:stop]))
        for k in range(len(PIXEL_MAPS)):
            maps[n0 + k, y0 // f:-(-y1 // f)] = block_mean(
                stats[k, y0 - start:y1 - start], f, ragged=white_px[k])
    white = np.concatenate([np.zeros(n0), white_px])
    grid_px = px * f
    fm = _FineMaps(maps=maps, px_um=(grid_px, grid_px), origin_um=(-0.5 * px, -0.5 * px),
                   white=white, white_sq=white * white)
    typical = np.array([np.mean(area), table["eccentricity"].mean(), np.mean(fill),
                        table["hematoxylin_od"].mean()]) if len(table) else np.full(4, np.nan)
    return fm, typical


class NucleiStainEncoder(StainTextureEncoder):
    """The 'stain-texture' features plus full-resolution nucleus and texture statistics.

    Parameters: those of :class:`StainTextureEncoder`, ``nuclei_scales`` the sub-window
    fractions of the full-resolution features and ``grid_um`` the pixel of their maps.
    Images coarser than :data:`MAX_UM_PER_PX` are refused (no nuclei to read).
    """

    name = "stain-texture-nuclei"

    def __init__(self, *, nuclei_scales: tuple[float, ...] = (1.0, 0.5),
                 grid_um: float = GRID_UM, **kwargs):
        super().__init__(**kwargs)
        self.nuclei_scales = tuple(float(s) for s in nuclei_scales)
        self.grid_um = float(grid_um)
        self.stain_dim = self.embed_dim
        self.embed_dim = self.stain_dim + len(self.nuclei_scales) * len(FULLRES_NAMES)

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``embed_dim`` features, e.g. ``'nuclei_per_mm2@1'``."""
        names = super().feature_names
        for s in self.nuclei_scales:
            names += [f"{n}@{scale_tag(s)}" for n in FULLRES_NAMES]
        return names

    def config_key(self) -> str:
        return (f"{super().config_key()}|nuclei-v1|grid{self.grid_um:g}|"
                f"nscales{','.join(f'{s:g}' for s in self.nuclei_scales)}")

    def fullres(self, image: TissueImage, progress: Progress | None = None
                ) -> tuple[_FineMaps, np.ndarray]:
        """The full-resolution maps of ``image`` and its mean nucleus (cached per image)."""
        px = float(image.um_per_px)
        if px > MAX_UM_PER_PX:
            raise TrihrgeInputError(
                f"the encoder {self.name!r} reads nuclei at the image's full resolution, but "
                f"this image is {px:.2f} um/px (at most {MAX_UM_PER_PX:g} um/px is needed)",
                "give the full-resolution H&E (--image), or use the default encoder "
                "'stain-texture'")

        def build() -> tuple[_FineMaps, np.ndarray]:
            tissue, _ = tissue_mask_for(image)
            return fullres_maps(np.asarray(image.array), px, grid_um=self.grid_um,
                                tissue=tissue, progress=progress)

        return self.cached((image.key(), "fullres", round(self.grid_um, 4)), build)

    def window_features(self, image: TissueImage, centres: np.ndarray, window_um: float,
                        progress: Progress) -> np.ndarray:
        fm, typical = self.fullres(image, progress)
        typical = np.nan_to_num(typical)  # an image without nuclei: per-nucleus means are 0
        out = np.empty((len(centres), self.embed_dim), dtype=np.float32)
        out[:, :self.stain_dim] = self.stain_features(image, centres, window_um, progress)
        means, _ = self.window_stats(fm, centres, window_um, self.nuclei_scales, 0, progress)
        grid_area_mm2 = fm.px_um[0] * fm.px_um[1] * 1e-6
        k = self.stain_dim
        n0 = len(NUCLEUS_MAPS)
        for scale, m in zip(self.nuclei_scales, means, strict=True):
            count = m[0]  # nuclei per grid pixel, averaged over the box
            box_mm2 = (window_um * scale) ** 2 * 1e-6
            some = count * box_mm2 / grid_area_mm2 >= 0.5
            safe = np.where(some, count, 1.0)

            def per_nucleus(total: np.ndarray, fallback: float, some=some, safe=safe
                            ) -> np.ndarray:
                return np.where(some, total / safe, fallback)

            area_mean = per_nucleus(m[1], typical[0])
            area_sq = per_nucleus(m[2], typical[0] ** 2)
            nuclear, cytoplasm = m[n0], m[n0 + 1]
            feats = [count / grid_area_mm2, area_mean,
                     np.sqrt(np.maximum(area_sq - area_mean ** 2, 0.0)),
                     per_nucleus(m[3], typical[1]), per_nucleus(m[4], typical[2]),
                     per_nucleus(m[5], typical[3]), nuclear, cytoplasm,
                     nuclear / np.maximum(nuclear + cytoplasm, 1e-6), *m[n0 + 2:]]
            for v in feats:
                out[:, k] = v
                k += 1
        return out


@register_encoder("stain-texture-nuclei", description="'stain-texture' + nuclei, cytoplasm and "
                  "chromatin texture read at the image's full resolution (120-d; images finer "
                  f"than {MAX_UM_PER_PX:g} um/px; no download)")
def _stain_texture_nuclei(*, device: str = "auto", hf_token: str | None = None,
                          **kwargs) -> NucleiStainEncoder:
    return build_cpu_encoder(NucleiStainEncoder, kwargs, "nuclei_scales, grid_um, "
                             f"{STAIN_TEXTURE_OPTIONS}")
