"""Dense maps averaged over the spots' disks: every pixel, or a lattice of them for a fine map."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.tl._maps import (
    CONSISTENCY_SPACING_UM,
    DenseMaps,
    map_footprint_means,
    map_spot_consistency,
)


def _maps(stride_um: float, extent_um: float = 1200.0, seed: int = 0) -> DenseMaps:
    """Two genes over a square: smooth (a gradient and a wave) and pixel-scale noise."""
    n = int(round(extent_um / stride_um))
    rows, cols = np.mgrid[0:n, 0:n] * stride_um
    noise = np.random.default_rng(seed).normal(size=(n, n))
    values = np.stack([rows / extent_um + 0.5 * np.sin(cols / 150.0), noise]).astype(np.float32)
    mask = np.ones((n, n), dtype=bool)
    mask[: n // 10] = False  # no tissue in the top rows
    values[:, ~mask] = np.nan
    return DenseMaps(values=values, stride_um=stride_um, origin_rc_um=np.zeros(2),
                     gene_names=["gradient", "noise"], mask=mask)


def test_a_disk_is_averaged_over_a_lattice_of_its_pixels_for_a_fine_map():
    fine = _maps(2.0)
    rc_um = np.array([[400.0, 400.0], [601.0, 803.0], [120.0, 600.0]])  # the last half outside
    every, share = map_footprint_means(fine, rc_um, 100.0)
    sampled, share_sampled = map_footprint_means(fine, rc_um, 100.0, spacing_um=8.0)
    # by hand: the pixels 4 apart (8 um) from the one nearest the centre, inside the disk
    for s, (r, c) in enumerate(rc_um):
        i0, j0 = int(np.rint(r / 2.0)), int(np.rint(c / 2.0))
        di, dj = np.mgrid[-12:13, -12:13] * 4
        disk = (di * 2.0) ** 2 + (dj * 2.0) ** 2 <= 50.0**2 + 1e-9
        ii, jj = i0 + di[disk], j0 + dj[disk]
        inside = fine.mask[ii, jj]
        expected = np.asarray(fine.values)[:, ii[inside], jj[inside]].mean(axis=1)
        np.testing.assert_allclose(sampled[s], expected, rtol=1e-6)
        assert share_sampled[s] == pytest.approx(inside.mean())
    # a gene smooth at the lattice's scale: the disk means hardly move
    np.testing.assert_allclose(sampled[:, 0], every[:, 0], atol=2e-3)
    assert share[2] == pytest.approx(0.5, abs=0.05)


def test_a_map_at_the_spacing_or_coarser_is_averaged_over_every_pixel():
    rc_um = np.array([[400.0, 400.0], [600.0, 800.0]])
    for stride_um in (CONSISTENCY_SPACING_UM, 10.0):
        maps = _maps(stride_um)
        np.testing.assert_array_equal(
            map_footprint_means(maps, rc_um, 100.0, spacing_um=CONSISTENCY_SPACING_UM)[0],
            map_footprint_means(maps, rc_um, 100.0)[0])


def test_the_consistency_check_of_a_fine_map_uses_the_lattice():
    fine = _maps(2.0)
    rng = np.random.default_rng(1)
    rc_um = rng.uniform(200.0, 1000.0, size=(40, 2))
    means, _ = map_footprint_means(fine, rc_um, 100.0, spacing_um=CONSISTENCY_SPACING_UM)
    y = means + rng.normal(scale=0.01, size=means.shape)
    shown = map_spot_consistency(fine, rc_um, y, 100.0)
    assert shown["n_spots"] == 40
    assert shown["mse"] == pytest.approx(float(((means - y) ** 2).mean()), rel=1e-6)
