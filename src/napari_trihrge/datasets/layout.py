"""The synthetic sample's tissue layout, shared by the image and the truth.

Smooth random fields and the random structure drawn from them: domains, glands, collagen
fibres and adipocytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

DOMAIN_NAMES: tuple[str, ...] = ("stroma", "tumor", "immune", "gland", "adipose")
STROMA, TUMOR, IMMUNE, GLAND, ADIPOSE = range(5)
BACKGROUND = -1  #: label of pixels outside the tissue in ``domain_8um``

_WARP_UM = 22.0


# -------------------------------------------------------------------------------------------
# Smooth random fields
# -------------------------------------------------------------------------------------------
def _interp_1d(pos: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation nodes and weights from a grid of ``n_in`` nodes to positions ``pos``.

    Positions are in node units: ``value = (1 - t) * f[i0] + t * f[i1]``.
    """
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


def _fibre_phase_gradient(lay: _Layout, rc_um: np.ndarray, k: int) -> np.ndarray:
    a = lay.fibre_angles[k]
    warp = lay.fibre_warp[k]
    e = 2.0
    gr = (warp.points(rc_um + [e, 0]) - warp.points(rc_um - [e, 0])) / (2 * e)
    gc = (warp.points(rc_um + [0, e]) - warp.points(rc_um - [0, e])) / (2 * e)
    return np.stack([np.sin(a) + _WARP_UM * gr, np.cos(a) + _WARP_UM * gc], axis=1)
