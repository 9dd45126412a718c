"""Training targets denoised by their neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.model.targets import denoise_by_neighbours
from napari_trihrge.neighbours import idw_interpolate


def _grid(n_side=6, seed=0):
    rr, cc = np.meshgrid(np.arange(n_side) * 100.0, np.arange(n_side) * 100.0, indexing="ij")
    rc_um = np.stack([rr.ravel(), cc.ravel()], axis=1)
    rng = np.random.default_rng(seed)
    truth = np.stack([rc_um[:, 0] / 500.0, np.sin(rc_um[:, 1] / 200.0) + 1.5], axis=1)
    return rc_um, truth, (truth + rng.normal(scale=0.5, size=truth.shape)).astype(np.float32)


def test_weight_zero_returns_the_targets_unchanged():
    rc_um, _, y = _grid()
    assert np.array_equal(denoise_by_neighbours(rc_um, y, weight=0.0), y)


def test_denoised_targets_are_the_weighted_mix_with_the_leave_one_out_interpolation():
    rc_um, _, y = _grid()
    out = denoise_by_neighbours(rc_um, y, weight=0.3, n_neighbours=4)
    loo = idw_interpolate(rc_um, y, rc_um, 4, exclude_self=True)
    np.testing.assert_allclose(out, 0.7 * y + 0.3 * loo, rtol=1e-5)
    assert out.dtype == np.float32


def test_denoising_brings_noisy_targets_closer_to_a_smooth_truth():
    rc_um, truth, y = _grid(n_side=12)
    err_raw = float(((y - truth) ** 2).mean())
    err_denoised = float(((denoise_by_neighbours(rc_um, y, weight=0.5) - truth) ** 2).mean())
    assert err_denoised < 0.7 * err_raw


@pytest.mark.parametrize("weight", [-0.1, 1.0, 1.5])
def test_weight_outside_zero_one_is_refused(weight):
    rc_um, _, y = _grid()
    with pytest.raises(ValueError, match="weight"):
        denoise_by_neighbours(rc_um, y, weight=weight)
