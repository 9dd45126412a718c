"""The neighbouring spots' mean (``neighbours.mean_of_nearest_others``), against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.neighbours import (
    idw_apply,
    idw_apply_linear,
    idw_linear_table,
    idw_weights,
    mean_of_nearest_others,
)

# four spots on a line at distinct distances (no ties), each with its own value
SPOTS_RC_UM = np.array([[0.0, 0.0], [0.0, 100.0], [0.0, 300.0], [0.0, 700.0]])
VALUES = np.array([[1.0], [2.0], [4.0], [8.0]], dtype=np.float32)


def test_at_a_spot_the_spot_itself_is_left_out():
    out = mean_of_nearest_others(SPOTS_RC_UM, VALUES, SPOTS_RC_UM, 2)
    # spot 0: its two nearest others are spots 1 and 2 (not itself: that would give 1.5)
    np.testing.assert_allclose(out[:, 0], [(2 + 4) / 2, (1 + 4) / 2, (2 + 1) / 2, (4 + 2) / 2])


def test_between_spots_the_nearest_spot_is_left_out():
    # 90 um lies in spot 1's cell: spot 1 is left out, the two nearest others are 0 and 2
    out = mean_of_nearest_others(SPOTS_RC_UM, VALUES, np.array([[0.0, 90.0], [0.0, 520.0]]), 2)
    np.testing.assert_allclose(out[:, 0], [(1 + 4) / 2, (4 + 2) / 2])


def test_the_mean_is_unweighted_over_every_feature_axis():
    values = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    out = mean_of_nearest_others(SPOTS_RC_UM, values, SPOTS_RC_UM[:1], 3)
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0], values[1:].mean(axis=0))


def test_too_few_spots_for_k_is_an_error():
    with pytest.raises(ValueError, match="more than k=4"):
        mean_of_nearest_others(SPOTS_RC_UM, VALUES, SPOTS_RC_UM, 4)


@pytest.mark.parametrize("weight_scale", [1.0, 0.7])
def test_a_linear_map_of_the_interpolation_from_the_spots_own_values(weight_scale):
    rng = np.random.default_rng(0)
    spots_rc_um = rng.uniform(0, 500, (30, 2))
    values = rng.gamma(2.0, 1.0, (30, 50)).astype(np.float32) + 4.0  # far from 0
    idx, w = idw_weights(spots_rc_um, rng.uniform(0, 500, (200, 2)), k=6)
    w = w * np.float32(weight_scale)  # exact also when the weights do not sum to 1
    matrix, centre, bias = rng.normal(size=(50, 8)), values.mean(axis=0), rng.normal(size=8)
    direct = (idw_apply(idx, w, values).astype(np.float64) - centre) @ matrix + bias
    table, at_centre = idw_linear_table(values, matrix, centre)
    assert table.shape == (30, 8) and at_centre.shape == (8,)
    via_table = idw_apply_linear(idx, w, table, at_centre, bias)
    assert via_table.dtype == np.float32
    np.testing.assert_allclose(via_table, direct, rtol=0, atol=1e-4)
    assert np.abs(direct).max() > 1.0
