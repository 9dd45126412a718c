"""The embedded synthetic sample: an H&E-like image, Visium-like spots and the known truth.

:func:`synthetic_sample` draws, from one seed, a tissue section with five domains (stroma, tumour
nests, an immune band with small lymphoid aggregates, glands with a pale lumen, adipose tissue),
renders it as an H&E-like RGB image (Beer-Lambert mix of hematoxylin and eosin: purple nuclei drawn
one by one, pink fibrous stroma, white background around an irregular tissue outline), defines the
true expression of every gene on an 8 um grid, and measures it with Visium-like spots (55 um disks,
100 um hexagonal lattice, Poisson counts of the truth integrated over each disk).

Gene classes (``var['gene_class']``):

* ``marker``: high in one domain (``var['target']`` names it; 'tumor,gland' for epithelial genes),
  so the image shows where they are;
* ``density``: follow the local number of nuclei (cellularity), also readable from the image;
* ``gradient``: smooth spatial trends the image does not show (``var['target']`` names the trend),
  the information only the measured spots carry;
* ``noise``: spatially random, no structure at all;
* ``sparse``: genes at the depth real Visium has for most highly variable genes, detected in a
  few % of the spots (up to about 15 %, median about 3 %; on DLPFC 151673 half of the 1000 HVGs are
  detected in under 5 % of the spots). Each follows the pattern of one of the classes above
  (``var['target']`` is ``'<class>:<target>'``, e.g. ``'marker:immune'``), so there is signal to
  find, but a model can also settle for predicting a constant. By default 60 % of the genes.

The truth lives in ``uns['truth']`` (see :func:`synthetic_sample`); :func:`truth_at`,
:func:`truth_in_spots` and :func:`truth_map` read it for any set of locations, aligned to the
AnnData's current genes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import sparse
from scipy.spatial import cKDTree

from ..blocks import block_mean
from ..errors import TrihrgeInputError
from ..geometry import PLATFORMS, rc_um_to_xy_px, validate_um_per_px
from ..geometry import hex_spot_lattice as _hex_spots

DOMAIN_NAMES: tuple[str, ...] = ("stroma", "tumor", "immune", "gland", "adipose")
STROMA, TUMOR, IMMUNE, GLAND, ADIPOSE = range(5)
BACKGROUND = -1  #: label of pixels outside the tissue in ``domain_8um``

TRUTH_STRIDE_UM = 8.0
SPOT_DIAMETER_UM = float(PLATFORMS["visium"]["spot_diameter_um"])  # Visium-like spots
SPOT_SPACING_UM = float(PLATFORMS["visium"]["spot_spacing_um"])
LIBRARY_ID = "synthetic"

#: Real-looking marker names per domain (target domains after the colon when more than one).
_NAMED_MARKERS: dict[str, list[tuple[str, str]]] = {
    "stroma": [("COL1A1", "stroma"), ("COL3A1", "stroma"), ("DCN", "stroma"), ("LUM", "stroma")],
    "tumor": [("ERBB2", "tumor"), ("EPCAM", "tumor,gland"), ("KRT8", "tumor,gland"),
              ("MKI67", "tumor")],
    "immune": [("PTPRC", "immune"), ("CD3E", "immune"), ("MS4A1", "immune"), ("CD19", "immune")],
    "gland": [("MUC1", "gland"), ("KRT5", "gland"), ("KRT14", "gland")],
    "adipose": [("ADIPOQ", "adipose"), ("PLIN1", "adipose"), ("FABP4", "adipose")],
}
_GRADIENTS = ("linear_a", "linear_b", "radial", "smooth")
#: Share of all UMIs per gene class (markers, density, gradient, noise).
_CLASS_SHARE = {"marker": 0.40, "density": 0.22, "gradient": 0.22, "noise": 0.16}
_CLASS_FRACTION = {"marker": 0.30, "density": 0.15, "gradient": 0.20, "noise": 0.35}
#: Default share of the genes in the ``sparse`` class.
SPARSE_FRACTION = 0.6
#: Range of the mean UMIs per spot of a sparse gene (drawn log-uniformly).
_SPARSE_MEAN_COUNTS = (0.008, 0.15)
#: Patterns the sparse genes cycle through (class, target).
_SPARSE_PATTERNS: tuple[tuple[str, str], ...] = (
    *(("marker", d) for d in DOMAIN_NAMES), ("density", "nuclei"),
    *(("gradient", g) for g in ("linear_a", "linear_b", "radial", "smooth")), ("noise", ""))

# Stain optical-density vectors (RGB, natural log units per unit stain).
_HEMATOXYLIN = np.array([0.62, 0.74, 0.27])
_EOSIN = np.array([0.09, 0.88, 0.45])
_GLASS_OD = np.array([0.045, 0.05, 0.06])


# -------------------------------------------------------------------------------------------
# Smooth random fields
# -------------------------------------------------------------------------------------------
def _interp_1d(pos: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation nodes and weights from a grid of ``n_in`` nodes to positions ``pos``
    (in node units): ``value = (1 - t) * f[i0] + t * f[i1]``."""
    pos = np.clip(np.asarray(pos, dtype=np.float64), 0, n_in - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


@dataclass
class _Field:
    """A scalar field sampled on a regular grid of ``step_um`` (node (0, 0) at 0 um)."""

    values: np.ndarray
    step_um: float

    def grid(self, rows_um: np.ndarray, cols_um: np.ndarray) -> np.ndarray:
        """Bilinear samples on the grid ``rows_um x cols_um`` (float32)."""
        i0, i1, t = _interp_1d(np.asarray(rows_um) / self.step_um, self.values.shape[0])
        tmp = self.values[i0] * (1 - t)[:, None] + self.values[i1] * t[:, None]
        j0, j1, u = _interp_1d(np.asarray(cols_um) / self.step_um, self.values.shape[1])
        return tmp[:, j0] * (1 - u)[None, :] + tmp[:, j1] * u[None, :]

    def points(self, rc_um: np.ndarray) -> np.ndarray:
        """Bilinear samples at points (n, 2) row/col micrometres."""
        coords = (np.asarray(rc_um, dtype=np.float64) / self.step_um).T
        return ndi.map_coordinates(self.values, coords, order=1, mode="nearest")


def _noise(rng: np.random.Generator, extent_um: tuple[float, float], sigma_um: float,
           step_um: float | None = None) -> _Field:
    """Gaussian-smoothed white noise with correlation length ``sigma_um``, unit variance."""
    step = float(step_um or max(sigma_um / 4.0, 1.0))
    shape = (int(np.ceil(extent_um[0] / step)) + 2, int(np.ceil(extent_um[1] / step)) + 2)
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma_um / step, mode="wrap")
    f = (f - f.mean()) / (f.std() + 1e-12)
    return _Field(f.astype(np.float32), step)


def _axis_um(n: int, step_um: float, offset_um: float = 0.0) -> np.ndarray:
    return offset_um + np.arange(n) * step_um


# -------------------------------------------------------------------------------------------
# Tissue layout: the random structure shared by image and truth
# -------------------------------------------------------------------------------------------
@dataclass
class _Gland:
    centre_rc_um: np.ndarray
    a_um: float
    b_um: float
    angle: float
    phases: np.ndarray
    amps: np.ndarray
    epithelium_um: float

    @property
    def radius_um(self) -> float:
        return max(self.a_um, self.b_um) * (1 + float(self.amps.sum()))

    def rho(self, dr: np.ndarray, dc: np.ndarray) -> np.ndarray:
        """Normalised radius: 1 on the gland's outer border."""
        s, c = np.sin(self.angle), np.cos(self.angle)
        u = dr * s + dc * c
        v = dr * c - dc * s
        theta = np.arctan2(v / self.b_um, u / self.a_um)
        edge = 1 + self.amps[0] * np.sin(3 * theta + self.phases[0]) \
            + self.amps[1] * np.sin(5 * theta + self.phases[1])
        return np.sqrt((u / self.a_um) ** 2 + (v / self.b_um) ** 2) / edge

    @property
    def lumen_rho(self) -> float:
        return 1.0 - self.epithelium_um / np.sqrt(self.a_um * self.b_um)

    def point(self, theta: np.ndarray, rho: np.ndarray | float) -> np.ndarray:
        """Row/col micrometres of points at angle ``theta`` and normalised radius ``rho``."""
        edge = 1 + self.amps[0] * np.sin(3 * theta + self.phases[0]) \
            + self.amps[1] * np.sin(5 * theta + self.phases[1])
        u = self.a_um * rho * edge * np.cos(theta)
        v = self.b_um * rho * edge * np.sin(theta)
        s, c = np.sin(self.angle), np.cos(self.angle)
        dr = u * s + v * c
        dc = u * c - v * s
        return self.centre_rc_um[None, :] + np.stack([dr, dc], axis=1)


@dataclass
class _Layout:
    extent_um: tuple[float, float]
    tissue: _Field
    tumor: _Field
    immune: _Field
    adipose: _Field
    glands: list[_Gland]
    fibre_warp: tuple[_Field, _Field]
    fibre_angles: tuple[float, float]
    fibre_blend: _Field
    cellularity: _Field
    secretion: _Field
    stain: _Field
    fibre_jitter: _Field
    texture: _Field
    adipocytes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def labels(self, rows_um: np.ndarray, cols_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Domain label (int8, -1 outside tissue) and gland-lumen mask on a regular grid."""
        tissue = self.tissue.grid(rows_um, cols_um) > 0
        label = np.full(tissue.shape, BACKGROUND, dtype=np.int8)
        label[tissue] = STROMA
        label[(self.adipose.grid(rows_um, cols_um) > 0) & tissue] = ADIPOSE
        tumor = (self.tumor.grid(rows_um, cols_um) > 0) & tissue
        label[tumor] = TUMOR
        label[(self.immune.grid(rows_um, cols_um) > 0) & tissue & ~tumor] = IMMUNE
        lumen = np.zeros(tissue.shape, dtype=bool)
        for g in self.glands:
            r0, c0 = g.centre_rc_um
            rad = g.radius_um + 2.0
            i0, i1 = np.searchsorted(rows_um, [r0 - rad, r0 + rad])
            j0, j1 = np.searchsorted(cols_um, [c0 - rad, c0 + rad])
            if i1 <= i0 or j1 <= j0:
                continue
            rho = g.rho(rows_um[i0:i1, None] - r0, cols_um[None, j0:j1] - c0)
            inside = (rho <= 1.0) & tissue[i0:i1, j0:j1]
            label[i0:i1, j0:j1][inside] = GLAND
            lumen[i0:i1, j0:j1] |= inside & (rho <= g.lumen_rho)
        return label, lumen


def _make_layout(rng: np.random.Generator, extent_um: tuple[float, float]) -> _Layout:
    h_um, w_um = extent_um
    step = 4.0
    rows4 = _axis_um(int(np.ceil(h_um / step)) + 1, step)
    cols4 = _axis_um(int(np.ceil(w_um / step)) + 1, step)
    rr, cc = np.meshgrid(rows4, cols4, indexing="ij")

    # tissue: an irregular blob with a ragged edge, a few detached fragments, a clear margin
    cy, cx = h_um * (0.5 + rng.uniform(-0.04, 0.04)), w_um * (0.5 + rng.uniform(-0.04, 0.04))
    ry, rx = h_um * rng.uniform(0.41, 0.45), w_um * rng.uniform(0.41, 0.45)
    n_big = _noise(rng, extent_um, 260.0).grid(rows4, cols4)
    n_small = _noise(rng, extent_um, 45.0).grid(rows4, cols4)
    tissue = 1 - np.sqrt(((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2) + 0.14 * n_big \
        + 0.04 * n_small
    corners = [(0.12, 0.12), (0.88, 0.88), (0.1, 0.86), (0.9, 0.14)]
    for k in rng.permutation(4)[:2]:
        fy, fx = corners[k]
        radius = rng.uniform(90.0, 140.0)
        d = np.hypot(rr - fy * h_um, cc - fx * w_um)
        tissue = np.maximum(tissue, 1 - d / radius + 0.15 * n_small)
    margin = np.minimum(np.minimum(rr, h_um - rr), np.minimum(cc, w_um - cc))
    tissue = np.minimum(tissue, (margin - 70.0) / 60.0)
    holes = ndi.binary_fill_holes(tissue > 0) & (tissue <= 0)
    tissue = np.where(holes, 0.05, tissue).astype(np.float32)  # no holes inside the section
    tissue4 = tissue > 0
    dist_edge4 = ndi.distance_transform_edt(tissue4) * step

    # tumour nests: thresholded smooth noise, about a quarter of the tissue
    t4 = _noise(rng, extent_um, 105.0).grid(rows4, cols4)
    t4 = t4 - 0.5 * np.clip((90.0 - dist_edge4) / 90.0, 0, 1)  # nests mostly away from the edge
    thr = np.quantile(t4[tissue4], 0.74)
    tumor = (t4 - thr).astype(np.float32)
    tumor4 = (tumor > 0) & tissue4
    sd4 = (ndi.distance_transform_edt(~tumor4) - ndi.distance_transform_edt(tumor4)) * step

    # immune: a patchy thin band hugging the nests (narrower than a spot) + small aggregates
    width = 22.0 + 9.0 * _noise(rng, extent_um, 70.0).grid(rows4, cols4)
    patch = _noise(rng, extent_um, 140.0).grid(rows4, cols4)
    band = np.minimum(np.minimum(sd4, width - sd4), 40.0 * (patch + 0.35))
    agg = np.full_like(band, -1e3)
    stroma_like = tissue4 & (sd4 > 90.0) & (dist_edge4 > 40.0)
    n_agg = int(round(stroma_like.sum() * step**2 / 170_000.0))
    cand = np.flatnonzero(stroma_like.ravel())
    wobble = _noise(rng, extent_um, 8.0, step_um=2.0).grid(rows4, cols4)
    if len(cand) and n_agg:
        for idx in rng.choice(cand, size=min(n_agg, len(cand)), replace=False):
            r0, c0 = rr.flat[idx], cc.flat[idx]
            radius = rng.uniform(14.0, 32.0)
            agg = np.maximum(agg, radius - np.hypot(rr - r0, cc - c0) + 4.0 * wobble)
    immune = np.maximum(band, agg).astype(np.float32)

    # adipose: lobules inside the tissue, away from nests and edges
    a4 = _noise(rng, extent_um, 85.0).grid(rows4, cols4)
    allowed = tissue4 & (dist_edge4 > 130.0) & (sd4 > 60.0)
    thr_a = np.quantile(a4[allowed], 0.86) if allowed.any() else np.inf
    adipose = np.minimum(np.minimum(a4 - thr_a, (dist_edge4 - 130.0) / 40.0),
                         (sd4 - 60.0) / 40.0).astype(np.float32)

    lay = _Layout(
        extent_um=extent_um,
        tissue=_Field(tissue, step), tumor=_Field(tumor, step), immune=_Field(immune, step),
        adipose=_Field(adipose, step), glands=[],
        fibre_warp=(_noise(rng, extent_um, 55.0), _noise(rng, extent_um, 55.0)),
        fibre_angles=(0.0, 0.0),
        fibre_blend=_noise(rng, extent_um, 170.0),
        cellularity=_noise(rng, extent_um, 70.0),
        secretion=_noise(rng, extent_um, 10.0, step_um=2.5),
        stain=_noise(rng, extent_um, 450.0),
        fibre_jitter=_noise(rng, extent_um, 5.0, step_um=1.5),
        texture=_noise(rng, extent_um, 3.0, step_um=1.0),
    )
    a1 = rng.uniform(0, np.pi)
    # adipocyte centres: a jittered hexagonal lattice (Voronoi cells of ~50-70 um)
    sp = 58.0
    gr, gc = np.meshgrid(np.arange(-1, h_um / (sp * 0.866) + 2), np.arange(-1, w_um / sp + 2),
                         indexing="ij")
    seeds = np.stack([gr * sp * 0.866, gc * sp + (gr % 2) * sp / 2], axis=-1).reshape(-1, 2)
    lay.adipocytes = seeds + rng.uniform(-14.0, 14.0, seeds.shape)
    lay.fibre_angles = (a1, a1 + rng.uniform(0.9, 1.9))

    # glands: elliptic ducts placed in free stroma
    label4, _ = lay.labels(rows4, cols4)
    free_dist = ndi.distance_transform_edt(label4 == STROMA) * step
    n_glands = max(1, int(round(tissue4.sum() * step**2 / 650_000.0)))
    for _ in range(60 * n_glands):
        if len(lay.glands) >= n_glands:
            break
        a_um, b_um = rng.uniform(45.0, 95.0), rng.uniform(40.0, 80.0)
        g = _Gland(centre_rc_um=np.array([rng.uniform(0, h_um), rng.uniform(0, w_um)]),
                   a_um=a_um, b_um=b_um, angle=rng.uniform(0, np.pi),
                   phases=rng.uniform(0, 2 * np.pi, 2), amps=rng.uniform(0.0, 0.07, 2),
                   epithelium_um=rng.uniform(14.0, 20.0))
        i, j = (g.centre_rc_um / step).astype(int)
        if free_dist[min(i, len(rows4) - 1), min(j, len(cols4) - 1)] < g.radius_um + 15.0:
            continue
        if any(np.hypot(*(g.centre_rc_um - o.centre_rc_um)) < g.radius_um + o.radius_um + 40.0
               for o in lay.glands):
            continue
        lay.glands.append(g)
    return lay


# -------------------------------------------------------------------------------------------
# Nuclei
# -------------------------------------------------------------------------------------------
#: Nuclei per um^2, hard-core distance (um) per domain (glands get a ring of their own).
_NUC_DENSITY = {STROMA: 1 / 420.0, TUMOR: 1 / 80.0, IMMUNE: 1 / 42.0, GLAND: 0.0,
                ADIPOSE: 1 / 2500.0}
_NUC_MIN_DIST = {STROMA: 7.0, TUMOR: 8.5, IMMUNE: 5.4, GLAND: 6.0, ADIPOSE: 14.0}
_CELLULARITY_GAIN = 0.45


@dataclass
class _Nuclei:
    rc_um: np.ndarray
    domain: np.ndarray
    a_um: np.ndarray
    b_um: np.ndarray
    angle: np.ndarray
    stain: np.ndarray
    vesicular: np.ndarray


def _fibre_phase_gradient(lay: _Layout, rc_um: np.ndarray, k: int) -> np.ndarray:
    a = lay.fibre_angles[k]
    warp = lay.fibre_warp[k]
    e = 2.0
    gr = (warp.points(rc_um + [e, 0]) - warp.points(rc_um - [e, 0])) / (2 * e)
    gc = (warp.points(rc_um + [0, e]) - warp.points(rc_um - [0, e])) / (2 * e)
    return np.stack([np.sin(a) + _WARP_UM * gr, np.cos(a) + _WARP_UM * gc], axis=1)


_WARP_UM = 22.0
_FIBRE_PERIOD_UM = 9.0


def _draw_nuclei(rng: np.random.Generator, lay: _Layout, label_px: np.ndarray,
                 um_per_px: float) -> _Nuclei:
    h_um, w_um = lay.extent_um
    gain = np.exp(_CELLULARITY_GAIN * 2.5)
    lam_max = max(_NUC_DENSITY.values()) * gain
    n = rng.poisson(lam_max * h_um * w_um)
    pts = rng.uniform([0, 0], [h_um, w_um], size=(n, 2))
    ij = np.clip(np.rint(pts / um_per_px).astype(np.int64), 0, np.array(label_px.shape) - 1)
    dom = label_px[ij[:, 0], ij[:, 1]]
    dens = np.array([_NUC_DENSITY.get(int(d), 0.0) for d in range(len(DOMAIN_NAMES))] + [0.0])
    lam = dens[dom] * np.minimum(np.exp(_CELLULARITY_GAIN * lay.cellularity.points(pts)), gain)
    keep = rng.uniform(size=n) * lam_max < lam
    pts, dom = pts[keep], dom[keep]

    # gland epithelium: one ring of columnar nuclei near the basal side
    ring_pts, ring_ang = [], []
    for g in lay.glands:
        rm = np.sqrt(g.a_um * g.b_um)
        m = max(8, int(2 * np.pi * rm * (1 + g.amps.sum()) / 6.0))
        theta = np.linspace(0, 2 * np.pi, m, endpoint=False) + rng.uniform(-0.02, 0.02, m)
        rho = 1.0 - (0.35 + rng.uniform(-0.08, 0.08, m)) * g.epithelium_um / rm
        p = g.point(theta, rho)
        ring_pts.append(p)
        ring_ang.append(np.arctan2(p[:, 0] - g.centre_rc_um[0], p[:, 1] - g.centre_rc_um[1]))
    if ring_pts:
        gp = np.concatenate(ring_pts)
        ij = np.clip(np.rint(gp / um_per_px).astype(np.int64), 0, np.array(label_px.shape) - 1)
        ok = label_px[ij[:, 0], ij[:, 1]] >= 0
        gp, gang = gp[ok], np.concatenate(ring_ang)[ok]
    else:
        gp, gang = np.zeros((0, 2)), np.zeros(0)
    pts = np.concatenate([gp, pts])
    dom = np.concatenate([np.full(len(gp), GLAND, dtype=dom.dtype), dom])

    # hard-core thinning: drop the later point of every pair closer than its domains allow
    min_d = np.array([_NUC_MIN_DIST[d] for d in range(len(DOMAIN_NAMES))])[dom]
    pairs = cKDTree(pts).query_pairs(r=max(_NUC_MIN_DIST.values()), output_type="ndarray")
    if len(pairs):
        dist = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
        bad = dist < 0.5 * (min_d[pairs[:, 0]] + min_d[pairs[:, 1]])
        drop = np.zeros(len(pts), dtype=bool)
        drop[pairs[bad].max(axis=1)] = True
        keep = ~drop
        keep[: len(gp)] = True  # the gland ring stays intact
        pts, dom, min_d = pts[keep], dom[keep], min_d[keep]
        gang = gang[keep[: len(gang)]]

    n = len(pts)
    u = rng.uniform(size=(n, 4))
    a = np.empty(n)
    b = np.empty(n)
    ang = rng.uniform(0, np.pi, n)
    stain = np.empty(n)
    ves = np.zeros(n)
    for d, (a_lo, a_hi, ratio_lo, ratio_hi, s_lo, s_hi) in {
        STROMA: (3.6, 6.5, 0.22, 0.38, 1.05, 1.35),
        TUMOR: (4.6, 6.8, 0.70, 0.95, 0.85, 1.10),
        IMMUNE: (2.5, 3.2, 0.85, 1.00, 1.55, 1.90),
        GLAND: (3.8, 5.0, 0.50, 0.65, 0.95, 1.20),
        ADIPOSE: (4.5, 6.0, 0.22, 0.30, 1.00, 1.20),
    }.items():
        m = dom == d
        a[m] = a_lo + (a_hi - a_lo) * u[m, 0]
        b[m] = a[m] * (ratio_lo + (ratio_hi - ratio_lo) * u[m, 1])
        stain[m] = s_lo + (s_hi - s_lo) * u[m, 2]
    ves[dom == TUMOR] = 1.0
    ang[: len(gang)] = gang
    # stromal nuclei lie along the collagen fibres
    m = np.flatnonzero(dom == STROMA)
    if len(m):
        use_b = lay.fibre_blend.points(pts[m]) < 0
        g = np.where(use_b[:, None], _fibre_phase_gradient(lay, pts[m], 1),
                     _fibre_phase_gradient(lay, pts[m], 0))
        ang[m] = np.arctan2(g[:, 0], g[:, 1]) + np.pi / 2 + rng.normal(0, 0.15, len(m))
    return _Nuclei(pts, dom.astype(np.int8), a, b, ang, stain, ves)


def _render_nuclei(rng: np.random.Generator, nuc: _Nuclei, shape_px: tuple[int, int],
                   um_per_px: float, chunk: int = 4000) -> np.ndarray:
    """Hematoxylin optical density of all nuclei (float32 image): soft ellipses with a darker
    rim and a nucleolus for vesicular (tumour) nuclei."""
    h_px, w_px = shape_px
    half = int(np.ceil(7.5 / um_per_px))
    off = np.arange(-half, half + 1)
    orr, occ = np.meshgrid(off, off, indexing="ij")
    orr, occ = orr.ravel(), occ.ravel()
    acc = np.zeros(h_px * w_px, dtype=np.float64)
    nucleolus = rng.uniform(-0.3, 0.3, size=(len(nuc.rc_um), 2))
    edge_um = max(0.45, 0.6 * um_per_px)
    for s in range(0, len(nuc.rc_um), chunk):
        sl = slice(s, s + chunk)
        c_px = nuc.rc_um[sl] / um_per_px
        ci = np.rint(c_px).astype(np.int64)
        pr = ci[:, 0:1] + orr[None, :]
        pc = ci[:, 1:2] + occ[None, :]
        dr = (pr - c_px[:, 0:1]) * um_per_px
        dc = (pc - c_px[:, 1:2]) * um_per_px
        sn, cs = np.sin(nuc.angle[sl])[:, None], np.cos(nuc.angle[sl])[:, None]
        uu = dr * sn + dc * cs
        vv = dr * cs - dc * sn
        a, b = nuc.a_um[sl][:, None], nuc.b_um[sl][:, None]
        q = np.sqrt((uu / a) ** 2 + (vv / b) ** 2)
        mask = np.clip(0.5 + (1 - q) * b / edge_um, 0, 1)
        ves = nuc.vesicular[sl][:, None]
        body = 1 - ves * 0.55 * np.clip(1 - q, 0, 1) ** 0.7
        nr = (nucleolus[sl, 0:1] * a - uu) ** 2 + (nucleolus[sl, 1:2] * b - vv) ** 2
        body = body + ves * 0.9 * np.exp(-nr / (2 * 0.75**2))
        val = mask * body * nuc.stain[sl][:, None]
        ok = (pr >= 0) & (pr < h_px) & (pc >= 0) & (pc < w_px) & (val > 1e-3)
        acc += np.bincount((pr[ok] * w_px + pc[ok]), weights=val[ok], minlength=h_px * w_px)
    return acc.reshape(h_px, w_px).astype(np.float32)


# -------------------------------------------------------------------------------------------
# Image
# -------------------------------------------------------------------------------------------
def _render_image(rng: np.random.Generator, lay: _Layout, label: np.ndarray, lumen: np.ndarray,
                  nuc: _Nuclei, um_per_px: float) -> np.ndarray:
    h_px, w_px = label.shape
    rows_um = _axis_um(h_px, um_per_px)
    cols_um = _axis_um(w_px, um_per_px)

    # collagen: two families of wavy fibres blended over the section; phase jitter makes fibres
    # split and merge, a slower wave opens pale clefts between bundles
    fib = np.zeros((h_px, w_px), dtype=np.float32)
    cleft = np.zeros((h_px, w_px), dtype=np.float32)
    blend = 1 / (1 + np.exp(-4.0 * lay.fibre_blend.grid(rows_um, cols_um)))
    jit = lay.fibre_jitter.grid(rows_um, cols_um)
    for k, wk in ((0, blend), (1, 1 - blend)):
        a = lay.fibre_angles[k]
        phase = (rows_um[:, None] * np.sin(a) + cols_um[None, :] * np.cos(a)).astype(np.float32)
        phase += _WARP_UM * lay.fibre_warp[k].grid(rows_um, cols_um)
        period = _FIBRE_PERIOD_UM * (1.0 + 0.25 * k)
        fib += wk * (0.5 + 0.5 * np.cos(phase * np.float32(2 * np.pi / period) + 1.6 * jit))
        cleft += wk * np.cos(phase * np.float32(2 * np.pi / 41.0) + 0.8 * jit)
    coarse = lay.texture.grid(rows_um, cols_um)
    grain = ndi.gaussian_filter(rng.standard_normal((h_px, w_px), dtype=np.float32),
                                max(0.6 / um_per_px, 0.5))
    grain /= grain.std() + 1e-6
    fib = fib ** 1.3 * (0.8 + 0.3 * coarse)
    fib *= 1.0 - 0.75 * np.clip((cleft - 0.72) * 5.0, 0, 1)
    fib = np.clip(fib, 0, 1.2)
    del cleft, jit

    e_tab = np.array([0.0, 0.0, 0.36, 0.24, 0.42, 0.03, 0.0], dtype=np.float32)
    h_tab = np.array([0.0, 0.05, 0.13, 0.10, 0.07, 0.0, 0.0], dtype=np.float32)
    idx = label.astype(np.int16) + 1
    eos = e_tab[idx]
    hem = h_tab[idx]
    stroma = label == STROMA
    eos[stroma] = 0.16 + 0.62 * fib[stroma]
    # adipocytes: thin membranes on the Voronoi edges of the cell centres
    adip = label == ADIPOSE
    if adip.any():
        ii, jj = np.nonzero(adip)
        d, _ = cKDTree(lay.adipocytes).query(np.stack([ii, jj], axis=1) * um_per_px, k=2)
        mem = np.exp(-(((d[:, 1] - d[:, 0]) / 2.4) ** 2)).astype(np.float32)
        eos[ii, jj] += 0.55 * mem
        hem[ii, jj] += 0.04 * mem
    # gland lumen: pale, with faint pink secretion
    if lumen.any():
        sec = np.clip(lay.secretion.grid(rows_um, cols_um), 0, None)
        eos[lumen] = 0.03 + 0.16 * sec[lumen]
        hem[lumen] = 0.0
    tissue = label >= 0
    eos *= np.float32(1.0) + np.float32(0.05) * grain + np.float32(0.1) * coarse * ~stroma
    eos *= 1.0 + 0.08 * lay.stain.grid(rows_um, cols_um)
    hem = hem * (1 + 0.3 * coarse) * tissue
    # a slightly soft boundary between tissue and glass
    eos = ndi.gaussian_filter(eos, 0.8 / um_per_px)
    hem = ndi.gaussian_filter(hem, 0.8 / um_per_px)

    hn = _render_nuclei(rng, nuc, (h_px, w_px), um_per_px)
    hn *= 1.0 + 0.25 * grain
    hem += np.minimum(hn, 2.2)
    del hn, fib, coarse, blend

    jitter = 1.0 + rng.uniform(-0.06, 0.06, 3)
    h_vec = (_HEMATOXYLIN * jitter).astype(np.float32)
    e_vec = (_EOSIN * jitter[::-1]).astype(np.float32)
    img = np.empty((h_px, w_px, 3), dtype=np.uint8)
    for ch in range(3):
        od = hem * h_vec[ch] + eos * e_vec[ch] + np.float32(_GLASS_OD[ch])
        od = ndi.gaussian_filter(od, 0.5 / um_per_px)
        val = 255.0 * np.exp(-od) + 1.5 * rng.standard_normal(od.shape, dtype=np.float32)
        img[..., ch] = np.clip(val, 0, 255).astype(np.uint8)
    return img


# -------------------------------------------------------------------------------------------
# Truth and spots
# -------------------------------------------------------------------------------------------
def _scale_to_unit(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lo, hi = g[mask].min(), g[mask].max()
    return (2 * (g - lo) / max(hi - lo, 1e-9) - 1).astype(np.float32)


def _n_sparse_genes(n_genes: int, sparse_fraction: float) -> int:
    """Sparse genes among ``n_genes``: one gene of each other class always stays."""
    return int(min(np.floor(sparse_fraction * n_genes), max(n_genes - len(_CLASS_FRACTION), 0)))


def _gene_table(n_genes: int, n_sparse: int = 0) -> pd.DataFrame:
    """Gene names, classes and targets (``n_sparse`` of the ``n_genes`` in the sparse class)."""
    n_dense = n_genes - n_sparse
    n_genes = n_dense
    counts = {k: max(1, int(np.floor(v * n_genes))) for k, v in _CLASS_FRACTION.items()}
    counts["marker"] += n_genes - sum(counts.values())
    while counts["marker"] < 1:  # tiny n_genes: take from the largest class
        big = max(("noise", "gradient", "density"), key=lambda k: counts[k])
        counts[big] -= 1
        counts["marker"] += 1
    names, classes, targets = [], [], []
    per_domain: dict[str, int] = dict.fromkeys(DOMAIN_NAMES, 0)
    for i in range(counts["marker"]):
        dom = DOMAIN_NAMES[i % len(DOMAIN_NAMES)]
        k = per_domain[dom]
        per_domain[dom] += 1
        named = _NAMED_MARKERS[dom]
        name, target = named[k] if k < len(named) else (f"{dom.upper()}_{k - len(named) + 1}", dom)
        names.append(name)
        classes.append("marker")
        targets.append(target)
    for i in range(counts["density"]):
        names.append(f"DENSITY_{i + 1}")
        classes.append("density")
        targets.append("nuclei")
    for i in range(counts["gradient"]):
        names.append(f"GRADIENT_{i + 1}")
        classes.append("gradient")
        targets.append(_GRADIENTS[i % len(_GRADIENTS)])
    for i in range(counts["noise"]):
        names.append(f"NOISE_{i + 1}")
        classes.append("noise")
        targets.append("")
    for i in range(n_sparse):
        cls, target = _SPARSE_PATTERNS[i % len(_SPARSE_PATTERNS)]
        names.append(f"SPARSE_{i + 1}")
        classes.append("sparse")
        targets.append(f"{cls}:{target}" if target else cls)
    return pd.DataFrame({"gene_class": classes, "target": targets,
                         "gene_ids": [f"SYNTH{i + 1:05d}" for i in range(len(names))]},
                        index=pd.Index(names, name=None))


def _spot_weights(rc_um: np.ndarray, grid_shape: tuple[int, int], stride_um: float,
                  origin_rc_um: np.ndarray, diameter_um: float) -> sparse.csr_matrix:
    """Sparse (n_spots, rows*cols) matrix: fraction of each truth pixel covered by each disk."""
    rc_um = np.asarray(rc_um, dtype=np.float64).reshape(-1, 2)
    radius = diameter_um / 2.0
    half = int(np.ceil(radius / stride_um)) + 1
    off = np.arange(-half, half + 1)
    n_sub = 4
    sub = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * stride_um
    centre_idx = np.rint((rc_um - origin_rc_um) / stride_um).astype(np.int64)
    pi = centre_idx[:, 0, None, None] + off[None, :, None]
    pj = centre_idx[:, 1, None, None] + off[None, None, :]
    pi, pj = np.broadcast_arrays(pi, pj)
    prow = origin_rc_um[0] + pi * stride_um - rc_um[:, 0, None, None]
    pcol = origin_rc_um[1] + pj * stride_um - rc_um[:, 1, None, None]
    inside = ((prow[..., None, None] + sub[:, None]) ** 2
              + (pcol[..., None, None] + sub[None, :]) ** 2) <= radius**2
    w = inside.mean(axis=(-1, -2))
    ok = (w > 0) & (pi >= 0) & (pi < grid_shape[0]) & (pj >= 0) & (pj < grid_shape[1])
    spot = np.broadcast_to(np.arange(len(rc_um))[:, None, None], w.shape)
    return sparse.csr_matrix((w[ok], (spot[ok], pi[ok] * grid_shape[1] + pj[ok])),
                             shape=(len(rc_um), grid_shape[0] * grid_shape[1]))


def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ACGT"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        for row in rng.integers(0, 4, size=(n, 16)):
            bc = "".join(letters[row]) + "-1"
            if bc not in seen:
                seen.add(bc)
                out.append(bc)
                if len(out) == n:
                    break
    return out


# -------------------------------------------------------------------------------------------
# Public API
# -------------------------------------------------------------------------------------------
def synthetic_sample(seed: int = 0, *, size_um: tuple[float, float] = (2400.0, 2400.0),
                     n_genes: int = 300, um_per_px: float = 1.0, depth: float = 3000.0,
                     sparse_fraction: float = SPARSE_FRACTION):
    """A synthetic Visium-like sample with known truth (deterministic for a given ``seed``).

    Parameters
    ----------
    seed
        Random seed; the same seed gives identical arrays.
    size_um
        (height, width) of the image in micrometres.
    n_genes
        Number of genes (at least 4: markers, density, gradient and noise genes), sparse genes
        included.
    um_per_px
        Pixel size of the H&E image (1.0 -> 2400 x 2400 px by default).
    depth
        Mean total UMIs per spot.
    sparse_fraction
        Share of the genes in the ``sparse`` class (0 gives a sample without them; one gene of
        each other class always stays). Sparse genes hold well under 1 % of the UMIs.

    Returns
    -------
    AnnData in the project's data model: ``X`` raw counts (CSR float32), ``obsm['spatial']`` x/y
    in full-resolution pixels, ``uns['spatial']['synthetic']`` with the full image as 'hires'
    (scalef 1) and a ~600 px 'lowres', ``uns['trihrge']``, ``obs['domain']`` (majority domain under
    each spot), ``var['gene_class']``/``var['target']``, and ``uns['truth']``:
    ``expression_8um`` float32 (genes, rows, cols) in expected counts per 8 um pixel,
    ``stride_um`` 8.0, ``origin_rc_um`` [4, 4] (centre of truth pixel (0, 0)), ``genes`` (order of
    the first axis), ``domain_8um`` int8 (-1 outside tissue), ``domain_names``, ``tissue_8um``.
    """
    import anndata as ad

    um_per_px = validate_um_per_px(float(um_per_px))
    size = tuple(float(s) for s in size_um)
    if len(size) != 2 or min(size) < 400.0:
        raise TrihrgeInputError(f"size_um must be (height, width) of at least 400 um, got {size_um}",
                                "use for example size_um=(2400, 2400)")
    if int(n_genes) < 4:
        raise TrihrgeInputError(f"n_genes must be at least 4, got {n_genes}",
                                "one gene per class is the minimum; the default is 300")
    if not depth > 0:
        raise TrihrgeInputError(f"depth must be positive, got {depth}", "use e.g. depth=3000")
    if not 0.0 <= sparse_fraction < 1.0:
        raise TrihrgeInputError(f"sparse_fraction must be in [0, 1), got {sparse_fraction}",
                                f"use for example {SPARSE_FRACTION}")
    n_genes = int(n_genes)
    stride = TRUTH_STRIDE_UM
    n_tr, n_tc = int(np.ceil(size[0] / stride)), int(np.ceil(size[1] / stride))
    extent = (n_tr * stride, n_tc * stride)  # the truth grid covers the whole image
    h_px, w_px = int(round(size[0] / um_per_px)), int(round(size[1] / um_per_px))

    rng = np.random.default_rng(seed)
    lay = _make_layout(rng, extent)

    # image
    label_px, lumen_px = lay.labels(_axis_um(h_px, um_per_px), _axis_um(w_px, um_per_px))
    nuc = _draw_nuclei(rng, lay, label_px, um_per_px)
    image = _render_image(rng, lay, label_px, lumen_px, nuc, um_per_px)
    del label_px, lumen_px

    # truth at 8 um, from a 2 um sub-grid of the same layout
    k = 4
    sub_r = _axis_um(n_tr * k, stride / k, stride / (2 * k))
    sub_c = _axis_um(n_tc * k, stride / k, stride / (2 * k))
    label_s, lumen_s = lay.labels(sub_r, sub_c)
    frac = np.stack([block_mean(label_s == d, k, ragged="trim")
                     for d in range(len(DOMAIN_NAMES))])
    epithelium = block_mean((label_s == GLAND) & ~lumen_s, k, ragged="trim")
    tissue_frac = frac.sum(axis=0)
    tissue_8um = tissue_frac >= 0.5
    domain_8um = np.where(tissue_8um, frac.argmax(axis=0), BACKGROUND).astype(np.int8)
    del label_s, lumen_s
    # cellularity: nuclei per 8 um pixel, lightly smoothed (what the image shows)
    nc, _, _ = np.histogram2d(nuc.rc_um[:, 0], nuc.rc_um[:, 1],
                              bins=[np.arange(n_tr + 1) * stride, np.arange(n_tc + 1) * stride])
    dens = ndi.gaussian_filter(nc.astype(np.float32), 1.0)
    dens /= dens[tissue_8um].mean() + 1e-9
    # gradients the image does not show
    tr, tc = np.meshgrid(_axis_um(n_tr, stride, stride / 2), _axis_um(n_tc, stride, stride / 2),
                         indexing="ij")
    beta = rng.uniform(0, 2 * np.pi)
    centre = np.array([tr[tissue_8um].mean(), tc[tissue_8um].mean()])
    r0 = centre + rng.uniform(-0.25, 0.25, 2) * np.array(size)
    grads = {
        "linear_a": (tr - centre[0]) * np.sin(beta) + (tc - centre[1]) * np.cos(beta),
        "linear_b": (tr - centre[0]) * np.cos(beta) - (tc - centre[1]) * np.sin(beta),
        "radial": -np.hypot(tr - r0[0], tc - r0[1]),
        "smooth": _noise(rng, extent, 380.0).grid(tr[:, 0], tc[0]),
    }
    grads = {n: _scale_to_unit(g, tissue_8um) for n, g in grads.items()}

    var = _gene_table(n_genes, _n_sparse_genes(n_genes, sparse_fraction))
    level = rng.lognormal(0.0, 0.7, n_genes)
    slope = rng.uniform(0.8, 1.5, n_genes) * rng.choice([-1.0, 1.0], n_genes)
    gamma = rng.uniform(0.8, 1.3, n_genes)
    truth = np.empty((n_genes, n_tr, n_tc), dtype=np.float32)
    for j, (cls, target) in enumerate(zip(var["gene_class"], var["target"], strict=True)):
        if cls == "sparse":  # the pattern of another class, at a far lower depth (below)
            cls, _, target = target.partition(":")
        if cls == "marker":
            doms = [DOMAIN_NAMES.index(t) for t in target.split(",")]
            f = sum(epithelium if d == GLAND else frac[d] for d in doms)
            truth[j] = f + 0.02 * tissue_frac
        elif cls == "density":
            truth[j] = dens**gamma[j] * tissue_frac
        elif cls == "gradient":
            truth[j] = np.exp(slope[j] * grads[target]) * tissue_frac
        else:
            truth[j] = rng.gamma(3.0, 1 / 3.0, (n_tr, n_tc)) * tissue_frac
    truth *= level[:, None, None].astype(np.float32)
    # class shares of all UMIs, then overall depth
    classes = var["gene_class"].to_numpy()
    totals = truth[:, tissue_8um].mean(axis=1)
    present = {c: (classes == c) for c in _CLASS_SHARE if (classes == c).any()}
    share_sum = sum(_CLASS_SHARE[c] for c in present)
    for c, m in present.items():
        truth[m] *= np.float32(_CLASS_SHARE[c] / share_sum / totals[m].sum())

    origin = np.array([stride / 2, stride / 2])
    spots_rc, arr = _hex_spots(size)
    w = _spot_weights(spots_rc, (n_tr, n_tc), stride, origin, SPOT_DIAMETER_UM)
    cover = np.asarray(w @ tissue_frac.ravel()) / np.asarray(w.sum(axis=1)).ravel()
    keep = cover >= 0.5
    spots_rc, arr, w, cover = spots_rc[keep], arr[keep], w[keep], cover[keep]
    flat = truth.reshape(n_genes, -1)
    mu = np.asarray(w @ flat.T)
    sparse_genes = classes == "sparse"
    scale = np.ones(n_genes)
    dense_depth = float(depth)
    if sparse_genes.any():
        lo, hi = np.log(_SPARSE_MEAN_COUNTS)
        mean_counts = np.exp(rng.uniform(lo, hi, int(sparse_genes.sum())))
        mean_counts *= min(1.0, 0.5 * dense_depth / mean_counts.sum())  # a very low depth
        scale[sparse_genes] = mean_counts / np.maximum(mu[:, sparse_genes].mean(axis=0), 1e-12)
        dense_depth -= float(mean_counts.sum())
    scale[~sparse_genes] = dense_depth / mu[:, ~sparse_genes].sum(axis=1).mean()
    truth *= scale.astype(np.float32)[:, None, None]
    mu *= scale[None, :]
    counts = rng.poisson(mu).astype(np.float32)
    dom_frac = np.asarray(w @ frac.reshape(len(DOMAIN_NAMES), -1).T)
    dom_frac /= np.maximum(dom_frac.sum(axis=1, keepdims=True), 1e-9)

    obs = pd.DataFrame({
        "in_tissue": np.ones(len(spots_rc), dtype=np.int64),
        "array_row": arr[:, 0], "array_col": arr[:, 1],
        "domain": pd.Categorical.from_codes(dom_frac.argmax(axis=1), categories=DOMAIN_NAMES),
        "tissue_fraction": cover.astype(np.float32),
    }, index=pd.Index(_barcodes(rng, len(spots_rc))))

    f_low = max(1, int(round(max(h_px, w_px) / 600)))
    lowres = block_mean(image, f_low, ragged="trim", dtype=np.float64).round().astype(np.uint8)

    adata = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["spatial"] = rc_um_to_xy_px(spots_rc, um_per_px)
    adata.obsm["domain_fractions"] = dom_frac.astype(np.float32)
    adata.uns["spatial"] = {LIBRARY_ID: {
        "images": {"hires": image, "lowres": lowres},
        "scalefactors": {"tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0 / f_low,
                         "spot_diameter_fullres": SPOT_DIAMETER_UM / um_per_px},
        "metadata": {"source": "synthetic"},
    }}
    adata.uns["trihrge"] = {
        "library_id": LIBRARY_ID, "sample": "synthetic", "platform": "visium",
        "um_per_px": um_per_px, "spot_diameter_um": SPOT_DIAMETER_UM,
        "source": f"napari_trihrge.datasets.synthetic_sample(seed={seed})",
    }
    adata.uns["truth"] = {
        "expression_8um": truth, "stride_um": stride, "origin_rc_um": origin,
        "genes": np.asarray(var.index, dtype=object), "domain_8um": domain_8um,
        "domain_names": np.asarray(DOMAIN_NAMES, dtype=object), "tissue_8um": tissue_8um,
        "seed": int(seed),
    }
    return adata


def load_sample(name: str = "synthetic", seed: int = 0, **kwargs):
    """Registry of built-in samples (only 'synthetic' for now); kwargs go to the generator."""
    if name != "synthetic":
        raise TrihrgeInputError(f"unknown sample {name!r}", "the built-in sample is 'synthetic'")
    return synthetic_sample(seed=seed, **kwargs)


def _truth(adata) -> dict:
    truth = adata.uns.get("truth")
    if not isinstance(truth, dict) or "expression_8um" not in truth:
        raise TrihrgeInputError("this AnnData has no known truth (uns['truth'])",
                                "truth exists only for napari_trihrge.datasets.synthetic_sample()")
    return truth


def _gene_rows(adata, truth: dict) -> np.ndarray:
    genes = [str(g) for g in truth.get("genes", adata.var_names)]
    pos = {g: i for i, g in enumerate(genes)}
    missing = [g for g in adata.var_names if g not in pos]
    if missing:
        raise TrihrgeInputError(f"{len(missing)} genes have no truth (e.g. {missing[:3]})",
                                "compare only genes of the synthetic sample")
    return np.array([pos[g] for g in adata.var_names], dtype=np.int64)


def truth_map(adata) -> tuple[np.ndarray, float, np.ndarray]:
    """``(expression (genes, rows, cols), stride_um, origin_rc_um)`` for ``adata.var_names``."""
    truth = _truth(adata)
    expr = np.asarray(truth["expression_8um"])
    rows = _gene_rows(adata, truth)
    if not np.array_equal(rows, np.arange(expr.shape[0])):
        expr = expr[rows]
    return expr, float(truth["stride_um"]), np.asarray(truth["origin_rc_um"], dtype=np.float64)


def truth_at(adata, rc_um: np.ndarray, method: str = "linear") -> np.ndarray:
    """True expression (counts per 8 um pixel) at points ``rc_um`` (n, 2): (n, genes) float32.

    ``method`` 'linear' interpolates bilinearly between truth pixel centres, 'nearest' takes the
    pixel the point falls in; points outside the grid take the nearest edge pixel.
    """
    truth = _truth(adata)
    expr = np.asarray(truth["expression_8um"])
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    rows = _gene_rows(adata, truth)
    pos = (np.asarray(rc_um, dtype=np.float64).reshape(-1, 2) - origin) / stride
    n_r, n_c = expr.shape[1:]
    if method == "nearest":
        i = np.clip(np.rint(pos[:, 0]).astype(np.int64), 0, n_r - 1)
        j = np.clip(np.rint(pos[:, 1]).astype(np.int64), 0, n_c - 1)
        return np.ascontiguousarray(expr[rows][:, i, j].T)
    if method != "linear":
        raise TrihrgeInputError(f"unknown method {method!r}", "use 'linear' or 'nearest'")
    pr = np.clip(pos[:, 0], 0, n_r - 1)
    pc = np.clip(pos[:, 1], 0, n_c - 1)
    i0 = np.minimum(np.floor(pr).astype(np.int64), n_r - 2 if n_r > 1 else 0)
    j0 = np.minimum(np.floor(pc).astype(np.int64), n_c - 2 if n_c > 1 else 0)
    i1, j1 = np.minimum(i0 + 1, n_r - 1), np.minimum(j0 + 1, n_c - 1)
    tr, tc = (pr - i0)[None, :], (pc - j0)[None, :]
    e = expr[rows] if not np.array_equal(rows, np.arange(expr.shape[0])) else expr
    out = ((1 - tr) * (1 - tc) * e[:, i0, j0] + (1 - tr) * tc * e[:, i0, j1]
           + tr * (1 - tc) * e[:, i1, j0] + tr * tc * e[:, i1, j1])
    return np.ascontiguousarray(out.T.astype(np.float32))


def truth_in_spots(adata, rc_um: np.ndarray, diameter_um: float = SPOT_DIAMETER_UM
                   ) -> np.ndarray:
    """Expected counts (n, genes) of disks of ``diameter_um`` centred at ``rc_um``: the truth
    integrated exactly as the synthetic spots were measured (before Poisson noise)."""
    expr, stride, origin = truth_map(adata)
    w = _spot_weights(rc_um, expr.shape[1:], stride, origin, float(diameter_um))
    return np.asarray(w @ expr.reshape(expr.shape[0], -1).T, dtype=np.float32)


# -------------------------------------------------------------------------------------------
# Visium HD-like output of the truth
# -------------------------------------------------------------------------------------------
def write_visium_hd(adata, path, *, bin_sizes_um=(8, 16), seed: int = 0,
                    dataset_id: str = LIBRARY_ID, spatialdata_store: bool = False,
                    overwrite: bool = False):
    """Write the truth of a :func:`synthetic_sample` as a Visium HD-like Space Ranger ``outs/``
    folder: ``binned_outputs/square_XXXum/`` per bin size (multiples of 8 um) with Poisson counts
    of the truth in each bin, ``tissue_positions.parquet``, ``scalefactors_json.json`` (with
    ``bin_size_um`` and ``microns_per_pixel``) and the H&E as hires/lowres PNGs, plus
    ``spatial/`` and a ``<dataset_id>_feature_slice.h5`` holding only the layout metadata that
    ``spatialdata_io.visium_hd`` reads.

    With ``spatialdata_store=True`` (needs the ``spatialdata`` extra) the folder is also read with
    ``spatialdata_io.visium_hd`` and written next to it as ``<path>.zarr``. Returns the folder.
    """
    from pathlib import Path

    from .._atomic import atomic_path, refuse_overwrite

    truth = _truth(adata)
    stride = float(truth["stride_um"])
    expr = np.asarray(truth["expression_8um"], dtype=np.float64)  # expected counts per 8 um bin
    tissue = np.asarray(truth["tissue_8um"], dtype=bool)
    sizes = [int(s) for s in bin_sizes_um]
    bad = [s for s in sizes if s % int(stride) or s <= 0]
    if bad:
        raise TrihrgeInputError(f"bin sizes {bad} um are not multiples of the truth's "
                                f"{stride:g} um grid", "use bin sizes such as 8 and 16")
    final = Path(path)
    store = final.with_name(final.name + ".zarr")
    refuse_overwrite(final, overwrite)
    if spatialdata_store:
        refuse_overwrite(store, overwrite)
    with atomic_path(final, overwrite) as outs:  # written beside, swapped in when complete
        _write_visium_hd_folder(outs, adata, truth, expr, tissue, sizes, seed, dataset_id)
    if spatialdata_store:
        from ..io.spatialdata import require_spatialdata, table_write_settings

        require_spatialdata()
        import spatialdata_io

        sdata = spatialdata_io.visium_hd(final, dataset_id=dataset_id,
                                         load_segmentations_only=False)
        with atomic_path(store, overwrite) as tmp, table_write_settings():
            sdata.write(tmp)
    return final


def _write_visium_hd_folder(outs, adata, truth: dict, expr: np.ndarray, tissue: np.ndarray,
                            sizes: list[int], seed: int, dataset_id: str) -> None:
    """The Visium HD-like ``outs`` folder of :func:`write_visium_hd` (written into ``outs``)."""
    import json

    import h5py
    from skimage.measure import block_reduce

    from ..io.visium_hd import write_visium_hd_bins

    info = adata.uns.get("trihrge", {})
    um_per_px = float(info["um_per_px"])
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    genes = [str(g) for g in truth.get("genes", adata.var_names)]
    rng = np.random.default_rng(seed)
    counts_8 = rng.poisson(expr[:, tissue]).astype(np.float32)  # (genes, tissue bins)
    full = np.zeros(expr.shape, dtype=np.float32)
    full[:, tissue] = counts_8
    lib = adata.uns["spatial"][info.get("library_id", LIBRARY_ID)]
    images = {res: lib["images"][res] for res in ("hires", "lowres") if res in lib["images"]}
    gene_ids = (list(adata.var["gene_ids"].reindex(genes).fillna("").astype(str))
                if "gene_ids" in adata.var else None)
    for size in sizes:
        k = size // int(stride)
        n_r, n_c = expr.shape[1] // k, expr.shape[2] // k
        binned = block_reduce(full[:, :n_r * k, :n_c * k], (1, k, k), np.sum)
        in_tissue = block_reduce(tissue[:n_r * k, :n_c * k], (k, k), np.any)
        ii, jj = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
        # bin centre: the centre of its k x k block of 8 um truth pixels
        centre_rc_um = origin + (np.stack([ii.ravel(), jj.ravel()], axis=1) * k
                                 + (k - 1) / 2.0) * stride
        xy_px = rc_um_to_xy_px(centre_rc_um, um_per_px)
        barcodes = np.array([f"s_{size:03d}um_{i:05d}_{j:05d}-1"
                             for i, j in zip(ii.ravel(), jj.ravel(), strict=True)])
        positions = pd.DataFrame({
            "barcode": barcodes, "in_tissue": in_tissue.ravel().astype(np.int32),
            "array_row": ii.ravel().astype(np.int32), "array_col": jj.ravel().astype(np.int32),
            "pxl_row_in_fullres": xy_px[:, 1], "pxl_col_in_fullres": xy_px[:, 0]})
        keep = in_tissue.ravel()
        counts = sparse.csr_matrix(binned.reshape(len(genes), -1)[:, keep].T)
        scalefactors = {
            "spot_diameter_fullres": size / um_per_px, "bin_size_um": float(size),
            "microns_per_pixel": um_per_px, "regist_target_img_scalef": 1.0,
            "tissue_hires_scalef": float(lib["scalefactors"]["tissue_hires_scalef"]),
            "tissue_lowres_scalef": float(lib["scalefactors"]["tissue_lowres_scalef"]),
            "fiducial_diameter_fullres": 4 * size / um_per_px,
        }
        write_visium_hd_bins(outs, size, counts, list(barcodes[keep]), genes, positions,
                             scalefactors, images, gene_ids=gene_ids)
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
    from PIL import Image

    for res, arr in images.items():
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(spatial / f"tissue_{res}_image.png")
    with h5py.File(outs / f"{dataset_id}_feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(
            {"hd_layout_json": json.dumps({"file_format": "1.0"}), "transform_matrices": {},
             "note": "synthetic: layout metadata only, written by napari-trihrge"})


__all__ = [
    "DOMAIN_NAMES",
    "TRUTH_STRIDE_UM",
    "SPOT_DIAMETER_UM",
    "SPOT_SPACING_UM",
    "SPARSE_FRACTION",
    "synthetic_sample",
    "load_sample",
    "truth_map",
    "truth_at",
    "truth_in_spots",
    "write_visium_hd",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
