"""Block means (blocks.py): the one downsampling helper, checked against plain numpy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_trihrge.blocks import block_mean, lazy_block_mean


def _reference(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over every f x f block, a ragged last block averaged over the pixels it has."""
    h, w = a.shape[:2]
    out = np.empty((-(-h // f), -(-w // f)) + a.shape[2:])
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = a[i * f:(i + 1) * f, j * f:(j + 1) * f].reshape(-1, *a.shape[2:]).mean(0)
    return out


@pytest.mark.parametrize("f", [1, 2, 3, 5])
def test_average_mode_matches_plain_means_including_ragged_edges(f):
    rgb = np.random.default_rng(f).integers(0, 256, (23, 17, 3), dtype=np.uint8)
    out = block_mean(rgb, f)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _reference(rgb, f), rtol=1e-6)


def test_trim_mode_drops_the_ragged_edge_and_matches_reshape_mean():
    a = np.random.default_rng(0).random((23, 17)).astype(np.float32)
    out = block_mean(a, 4, ragged="trim")
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out, a[:20, :16].reshape(5, 4, 4, 4).mean(axis=(1, 3)), rtol=1e-6)


def test_a_number_completes_the_ragged_edge_with_that_value():
    a = np.zeros((5, 5), dtype=np.float16)
    out = block_mean(a, 4, ragged=1.0)
    assert out.shape == (2, 2)
    assert out[0, 0] == 0.0
    np.testing.assert_allclose(out[0, 1], 12 / 16)  # 4 rows x 3 padded columns of 1
    np.testing.assert_allclose(out[1, 1], 15 / 16)  # all but one pixel padded


def test_integer_output_is_the_mean_rounded_half_up():
    a = np.array([[0, 1], [0, 1]], dtype=np.uint8)  # mean 0.5 -> 1
    b = np.array([[0, 1], [0, 0]], dtype=np.uint8)  # mean 0.25 -> 0
    c = np.array([[255, 255], [255, 254]], dtype=np.uint8)  # 254.75 -> 255, no overflow
    for arr, want in ((a, 1), (b, 0), (c, 255)):
        out = block_mean(arr, 2, dtype=np.uint8)
        assert out.dtype == np.uint8 and int(out[0, 0]) == want


def test_of_is_applied_before_averaging():
    a = np.random.default_rng(1).random((12, 9)).astype(np.float16)
    out = block_mean(a, 3, of=lambda x: np.square(x, dtype=np.float32))
    want = np.square(a.astype(np.float32)).reshape(4, 3, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_lazy_input_is_read_in_bands_with_the_same_result():
    rgb = np.random.default_rng(2).integers(0, 256, (101, 77, 3), dtype=np.uint8)
    lazy = da.from_array(rgb, chunks=(20, 30, 3))
    np.testing.assert_array_equal(block_mean(lazy, 3, max_band_px=500), block_mean(rgb, 3))


def test_lazy_block_mean_stays_lazy_and_equals_the_in_memory_one():
    rgb = np.random.default_rng(3).integers(0, 256, (101, 77, 3), dtype=np.uint8)
    out = lazy_block_mean(da.from_array(rgb, chunks=(33, 40, 3)), 2, dtype=np.uint8)
    assert isinstance(out, da.Array) and out.dtype == np.uint8 and out.shape == (50, 38, 3)
    np.testing.assert_array_equal(out.compute(), block_mean(rgb, 2, ragged="trim",
                                                             dtype=np.uint8))


@pytest.mark.parametrize("bad", [0, 1.5, -2])
def test_bad_factor_is_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        block_mean(np.zeros((4, 4)), bad)


def test_bad_ragged_mode_is_refused():
    with pytest.raises(ValueError, match="ragged"):
        block_mean(np.zeros((4, 4)), 2, ragged="edge")
