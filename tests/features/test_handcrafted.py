"""The 'stain-texture' encoder: stain/texture content, white padding, pixel-size invariance."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.features.handcrafted import MAP_NAMES, StainTextureEncoder, pixel_maps
from napari_trihrge.io.image import TissueImage

STROMA = np.array([235, 160, 200], dtype=np.float32)
CYTO = np.array([205, 170, 215], dtype=np.float32)
NUCLEUS = np.array([60, 40, 110], dtype=np.float32)
BASE_UM = 0.5
SIZE_UM = (600.0, 800.0)


def render_tissue(seed: int = 0) -> np.ndarray:
    """A synthetic H&E at 0.5 um/px: white band on top (rows < 100 um), pink fibrous stroma on
    the left (cols < 400 um), densely packed dark nuclei (radius 4 um) on the right."""
    h, w = int(SIZE_UM[0] / BASE_UM), int(SIZE_UM[1] / BASE_UM)
    r = (np.arange(h) * BASE_UM)[:, None]
    c = (np.arange(w) * BASE_UM)[None, :]
    fibres = 0.5 + 0.5 * np.sin(2 * np.pi * (0.8 * r + 0.6 * c) / 8.0)
    img = np.where((c < 400)[..., None], STROMA * (0.85 + 0.15 * fibres[..., None]), CYTO)
    rng = np.random.default_rng(seed)
    centres = rng.uniform([100, 400], [600, 800], size=(1400, 2))
    k = 10
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1] * BASE_UM
    disk = (yy**2 + xx**2) <= 16.0
    for cr, cc in centres:
        i, j = int(cr / BASE_UM), int(cc / BASE_UM)
        i0, i1, j0, j1 = max(i - k, 0), min(i + k + 1, h), max(j - k, 0), min(j + k + 1, w)
        sub = disk[i0 - (i - k):i1 - (i - k), j0 - (j - k):j1 - (j - k)]
        img[i0:i1, j0:j1][sub] = NUCLEUS
    img[r[:, 0] < 100] = 250.0
    return np.clip(img, 0, 255).astype(np.uint8)


def at(rgb: np.ndarray, um_per_px: float) -> TissueImage:
    f = int(round(um_per_px / BASE_UM))
    if f == 1:
        return TissueImage.from_array(rgb, um_per_px)
    h, w = rgb.shape[0] // f * f, rgb.shape[1] // f * f
    small = rgb[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    return TissueImage.from_array(np.round(small).astype(np.uint8), um_per_px)


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return render_tissue()


@pytest.fixture(scope="module")
def enc() -> StainTextureEncoder:
    return StainTextureEncoder()


def idx(enc: StainTextureEncoder, name: str) -> int:
    return enc.feature_names.index(name)


def test_feature_names_match_dim(enc):
    assert enc.embed_dim == len(enc.feature_names) == 84
    assert len(set(enc.feature_names)) == enc.embed_dim
    assert "hema_mean@1" in enc.feature_names and "st_coherence@1/8" in enc.feature_names
    assert "hema_std@1/2" in enc.feature_names


def test_hed_lut_equals_skimage_rgb2hed():
    from skimage.color import rgb2hed

    rgb = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    maps = pixel_maps(rgb, 1.0)
    hed = rgb2hed(rgb)
    np.testing.assert_allclose(maps[MAP_NAMES.index("hema")], hed[..., 0] * 10, atol=1e-5)
    np.testing.assert_allclose(maps[MAP_NAMES.index("eosin")], hed[..., 1] * 30, atol=1e-5)


def test_nuclei_patch_differs_from_stroma_patch(tissue, enc):
    img = at(tissue, 0.5)
    pts = np.array([[300.0, 150.0], [420.0, 250.0], [300.0, 600.0]])  # stroma, stroma, nuclei
    f = enc.embed_windows(img, pts, 112.0)
    assert f.shape == (3, enc.embed_dim) and f.dtype == np.float32
    stroma, nuclei = f[0], f[2]
    assert nuclei[idx(enc, "hema_mean@1")] > stroma[idx(enc, "hema_mean@1")] + 0.3
    assert nuclei[idx(enc, "nuclear_frac_mean@1")] > 0.15 > stroma[idx(enc, "nuclear_frac_mean@1")]
    assert stroma[idx(enc, "eosin_mean@1")] > nuclei[idx(enc, "eosin_mean@1")]
    assert nuclei[idx(enc, "log_nuc_mean@1")] > 3 * stroma[idx(enc, "log_nuc_mean@1")]
    # straight parallel fibres are coherent; round nuclei are not
    assert stroma[idx(enc, "st_coherence@1")] > 0.6 > nuclei[idx(enc, "st_coherence@1")]
    # feature space: stroma is closer to stroma than to the nuclei patch
    z = (f - f.mean(0)) / (f.std(0) + 1e-3)
    assert np.linalg.norm(z[0] - z[1]) < 0.5 * np.linalg.norm(z[0] - z[2])


def test_border_windows_are_white_padded(tissue, enc):
    img = at(tissue, 1.0)
    h_um, w_um = img.shape_rc_um
    pts = np.array([[0.0, 0.0], [450.0, -40.0], [h_um + 30, w_um / 2], [450.0, w_um - 1],
                    [-5e4, -5e4], [5e4, 5e4]])
    f = enc.embed_windows(img, pts, 336.0)
    assert f.shape == (len(pts), enc.embed_dim)
    assert np.all(np.isfinite(f))
    white = enc.embed_windows(TissueImage.from_array(np.full((64, 64, 3), 255, np.uint8), 1.0),
                              [[32.0, 32.0]], 336.0)[0]
    np.testing.assert_allclose(f[4], white, atol=1e-5)  # far outside = all white
    np.testing.assert_allclose(f[5], white, atol=1e-5)
    assert not np.allclose(f[1], white, atol=1e-3)  # half outside still sees tissue


def test_half_outside_window_mixes_tissue_and_white_exactly(enc):
    colour = np.array([150, 90, 160], dtype=np.uint8)
    img = TissueImage.from_array(np.broadcast_to(colour, (400, 400, 3)).copy(), 1.0)
    lum_in = float(pixel_maps(np.broadcast_to(colour, (8, 8, 3)), 1.0)[MAP_NAMES.index("lum"),
                                                                         4, 4])
    k = idx(enc, "lum_mean@1")
    inside, half = enc.embed_windows(img, [[200.0, 200.0], [200.0, -1.0]], 112.0)[:, k]
    assert inside == pytest.approx(lum_in, abs=2e-3)
    # the image's left edge is at -1 um (2 um/px maps): exactly half the window is outside
    assert half == pytest.approx((lum_in + 1.0) / 2, abs=2e-2)


def test_same_tissue_at_two_pixel_sizes_gives_close_features(tissue, enc):
    rng = np.random.default_rng(3)
    pts = rng.uniform([150, 60], [540, 740], size=(60, 2))
    for window in (112.0, 336.0):
        f05 = enc.embed_windows(at(tissue, 0.5), pts, window)
        f10 = enc.embed_windows(at(tissue, 1.0), pts, window)
        spread = np.concatenate([f05, f10]).std(0) + 0.05
        err = np.abs(f05 - f10) / spread
        assert np.median(err) < 0.02, window
        assert np.quantile(err, 0.95) < 0.1, window


def test_maps_cached_per_image(tissue, monkeypatch):
    enc = StainTextureEncoder()
    img = at(tissue, 1.0)
    calls = []
    real = img.at_resolution_rows
    monkeypatch.setattr(img, "at_resolution_rows",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    a = enc.embed_windows(img, [[300.0, 300.0]], 112.0)
    b = enc.embed_windows(img, [[300.0, 300.0]], 336.0)
    n_read = len(calls)
    c = enc.embed_windows(img, [[300.0, 300.0]], 112.0)
    assert 0 < n_read == len(calls) == len(set(calls))  # each band of maps computed once
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(a, b)


def whole_image_maps(image: TissueImage, res: float) -> np.ndarray:
    """The stain maps of the whole image, as the encoder made them before it worked in bands:
    :func:`pixel_maps` of the image at ``res`` padded with white, stored as float16."""
    rgb = image.at_resolution(res)
    m = int(np.ceil(4 * 7.0 / res)) + 4
    maps = pixel_maps(np.pad(rgb, ((m, m), (m, m), (0, 0)), constant_values=255), res)
    return maps[:, m:m + rgb.shape[0], m:m + rgb.shape[1]].astype(np.float16)


def synthetic_image() -> TissueImage:
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.sample import get_image

    return get_image(synthetic_sample(seed=1, size_um=(700.0, 900.0), n_genes=4))


def test_bands_of_maps_equal_the_whole_image_maps():
    img = synthetic_image()
    enc = StainTextureEncoder(strip_px=16)  # bands of 16 rows (and their filter margins)
    fm = enc.fine_maps(img)
    assert fm.band_rows == 16 and fm.shape[1] > 10 * fm.band_rows
    whole = whole_image_maps(img, 2.0)
    assert fm.shape == whole.shape
    rows = fm.rows(0, fm.shape[1])
    for ch in range(len(MAP_NAMES)):
        np.testing.assert_array_equal(rows.channel(ch), whole[ch], err_msg=MAP_NAMES[ch])
    part = fm.rows(37, 70)  # rows across band edges
    np.testing.assert_array_equal(part.channel(6), whole[6, 37:70])


def test_bands_of_an_image_resized_as_a_whole(tissue):
    # 1202 rows at 0.5 um/px: 2 um/px is 300 rows, not the 301 blocks of 4: resized as a whole
    img = TissueImage.from_array(np.concatenate([tissue, tissue[-2:]]), BASE_UM)
    assert img.at_resolution_rows(2.0, 0, 10) is None
    enc = StainTextureEncoder(strip_px=16, cache_mb=0.01)
    fm = enc.fine_maps(img)
    whole = whole_image_maps(img, 2.0)
    np.testing.assert_array_equal(fm.rows(0, fm.shape[1]).channel(0), whole[0])
    pts = np.random.default_rng(2).uniform([-10, -10], [610, 810], (200, 2))
    np.testing.assert_allclose(enc.embed_windows(img, pts, 112.0),
                               StainTextureEncoder().embed_windows(img, pts, 112.0),
                               rtol=1e-5, atol=1e-5)


def test_features_from_bands_equal_whole_image_features(monkeypatch):
    img = synthetic_image()
    h_um, w_um = img.shape_rc_um
    rng = np.random.default_rng(5)
    edges = [[0.0, 0.0], [h_um, w_um], [-30.0, 450.0], [h_um + 20, 300.0], [350.0, -5.0],
             [350.0, w_um], [h_um - 1.0, 1.0], [2.0, w_um - 2.0], [-400.0, -400.0]]
    pts = np.concatenate([rng.uniform([-20, -20], [h_um + 20, w_um + 20], (400, 2)),
                          np.array(edges),
                          # a column of locations every 2 um: every band's edge is crossed
                          np.stack([np.arange(0.0, h_um, 2.0), np.full(int(h_um / 2), 440.0)],
                                   axis=1)])
    whole = StainTextureEncoder(cache_mb=10_000)  # every location in one band: the whole image
    banded = StainTextureEncoder(strip_px=16, cache_mb=0.01)  # bands of 16 rows, none kept
    groups = []
    real = StainTextureEncoder._group_stats
    monkeypatch.setattr(StainTextureEncoder, "_group_stats",
                        lambda self, fm, boxes, sel, *a: groups.append((self, sel))
                        or real(self, fm, boxes, sel, *a))
    for window in (24.0, 112.0, 336.0):
        groups.clear()
        ref = whole.embed_windows(img, pts, window)
        got = banded.embed_windows(img, pts, window)
        assert sum(e is whole for e, _ in groups) == 1
        assert sum(e is banded for e, _ in groups) > 5, window
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(window))
    # the whole-image path is the maps of the whole image
    fm = whole.fine_maps(img)
    from napari_trihrge.features.handcrafted import _FineMaps

    direct = _FineMaps(maps=whole_image_maps(img, 2.0), px_um=fm.px_um, origin_um=fm.origin_um,
                       white=fm.white, white_sq=fm.white_sq)
    from napari_trihrge.progress import ensure_progress

    for a, b in zip(whole.window_stats(fm, pts, 112.0, whole.scales, 7, ensure_progress(None)),
                    whole.window_stats(direct, pts, 112.0, whole.scales, 7,
                                       ensure_progress(None)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_many_locations_one_pass(tissue, enc):
    img = at(tissue, 1.0)
    pts = np.random.default_rng(0).uniform([-50, -50], [650, 850], size=(100_000, 2))
    f = enc.embed_windows(img, pts, 112.0)
    assert f.shape == (100_000, enc.embed_dim) and np.all(np.isfinite(f))
    # one pass over many locations gives what separate calls give
    some = [0, 1234, 99_999]
    np.testing.assert_allclose(f[some], enc.embed_windows(img, pts[some], 112.0), rtol=1e-5,
                               atol=1e-6)


def test_default_embed_dense_is_embed_windows_per_size(tissue, enc):
    img = at(tissue, 1.0)
    pts = np.array([[300.0, 300.0], [200.0, 700.0]])
    bag = enc.embed_dense(img, pts, (112.0, 336.0), local_window_um=24.0)
    assert bag.shape == (2, 3, enc.embed_dim)
    np.testing.assert_allclose(bag[:, 0], enc.embed_windows(img, pts, 24.0))
    np.testing.assert_allclose(bag[:, 2], enc.embed_windows(img, pts, 336.0))


def test_bad_inputs_raise_input_errors(tissue, enc):
    from napari_trihrge.errors import TrihrgeInputError

    img = at(tissue, 1.0)
    with pytest.raises(TrihrgeInputError, match="shape"):
        enc.embed_windows(img, np.zeros((3, 3)), 112.0)
    with pytest.raises(TrihrgeInputError, match="window"):
        enc.embed_windows(img, np.zeros((3, 2)), -1.0)
    with pytest.raises(TrihrgeInputError, match="NaN"):
        enc.embed_windows(img, np.array([[np.nan, 1.0]]), 112.0)
