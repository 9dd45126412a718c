"""Training targets denoised by their neighbours (a lever of :class:`~napari_trihrge.tl.RunConfig`).

A spot's measured expression carries its counting noise. Mixing in what its nearest measured
spots say, ``(1 - w) * y + w * idw(neighbours)``, with the spot itself left out of the
interpolation, trades some of that noise for spatial blur before a model is fitted to it. Only
the training targets change; what a prediction is scored against does not.
"""

from __future__ import annotations

import numpy as np

from ..neighbours import idw_interpolate


def denoise_by_neighbours(rc_um: np.ndarray, targets: np.ndarray, *, weight: float,
                          n_neighbours: int = 6) -> np.ndarray:
    """Return ``(1 - weight) * targets + weight * (their inverse-distance kNN interpolation)``.

    Parameters
    ----------
    rc_um
        (N, 2) spot centres, row/col in micrometres.
    targets
        (N, G) log-normalised expression of those spots.
    weight
        Share of the neighbours' interpolation, in [0, 1); 0 returns ``targets`` unchanged.
    n_neighbours
        k of the interpolation (each spot left out of its own).

    Returns
    -------
    numpy.ndarray
        (N, G) float32 denoised targets.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    y = np.asarray(targets, dtype=np.float32)
    if weight == 0.0:
        return y
    k = min(int(n_neighbours), len(y) - 1)
    smooth = idw_interpolate(rc_um, y, rc_um, k, exclude_self=True)
    return ((1.0 - weight) * y + weight * smooth).astype(np.float32)


__all__ = ["denoise_by_neighbours"]
