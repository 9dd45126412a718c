"""The synthetic sample's H&E-like image.

Collagen fibres, adipocytes, gland lumen and nuclei as hematoxylin and eosin optical densities,
mixed by Beer-Lambert.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .layout import _WARP_UM, ADIPOSE, STROMA, _axis_um, _Layout
from .nuclei import _Nuclei

# Stain optical-density vectors (RGB, natural log units per unit stain).
_HEMATOXYLIN = np.array([0.62, 0.74, 0.27])
_EOSIN = np.array([0.09, 0.88, 0.45])
_GLASS_OD = np.array([0.045, 0.05, 0.06])
_FIBRE_PERIOD_UM = 9.0


def _render_nuclei(rng: np.random.Generator, nuc: _Nuclei, shape_px: tuple[int, int],
                   um_per_px: float, chunk: int = 4000) -> np.ndarray:
    """Render the hematoxylin optical density of all nuclei (float32 image).

    Soft ellipses with a darker rim and a nucleolus for vesicular (tumour) nuclei.
    """
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
