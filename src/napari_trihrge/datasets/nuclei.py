"""The synthetic sample's nuclei: where they lie, their shape, orientation and stain, per domain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .layout import (
    ADIPOSE,
    DOMAIN_NAMES,
    GLAND,
    IMMUNE,
    STROMA,
    TUMOR,
    _fibre_phase_gradient,
    _Layout,
)

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
