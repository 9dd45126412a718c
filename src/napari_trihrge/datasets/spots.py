"""The synthetic sample's Visium-like spots.

The hexagonal lattice, disk weights over the truth grid and barcodes.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ..geometry import PLATFORMS

SPOT_DIAMETER_UM = float(PLATFORMS["visium"]["spot_diameter_um"])  # Visium-like spots
SPOT_SPACING_UM = float(PLATFORMS["visium"]["spot_spacing_um"])


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


def _hex_spots(extent_um: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Visium lattice: centres (row/col um) and (array_row, array_col)."""
    dy = SPOT_SPACING_UM * np.sqrt(3) / 2
    margin = SPOT_DIAMETER_UM
    rows = np.arange(margin, extent_um[0] - margin + 1e-9, dy)
    rc, arr = [], []
    for i, r in enumerate(rows):
        cols = np.arange(margin + (i % 2) * SPOT_SPACING_UM / 2, extent_um[1] - margin + 1e-9,
                         SPOT_SPACING_UM)
        rc.append(np.stack([np.full(len(cols), r), cols], axis=1))
        arr.append(np.stack([np.full(len(cols), i), 2 * np.arange(len(cols)) + i % 2], axis=1))
    return np.concatenate(rc), np.concatenate(arr).astype(np.int64)


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
