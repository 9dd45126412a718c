"""The 'stain-texture-nuclei' encoder: full-resolution nuclei and texture statistics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.features import NucleiStainEncoder, StainTextureEncoder, create_encoder
from napari_trihrge.features.fullres import FULLRES_NAMES, MAX_UM_PER_PX, uniform_patterns
from napari_trihrge.io.image import TissueImage

NUCLEUS_RGB = (60, 40, 110)
CYTO_RGB = (205, 170, 215)
PX_UM = 0.5


def nuclei_image(n_nuclei: int, size_um: float = 300.0, radius_um: float = 3.5,
                 seed: int = 0) -> TissueImage:
    """Pink cytoplasm with ``n_nuclei`` dark round nuclei on a jittered grid (none touching)."""
    n_px = int(size_um / PX_UM)
    img = np.empty((n_px, n_px, 3), dtype=np.uint8)
    img[:] = CYTO_RGB
    side = int(np.ceil(np.sqrt(n_nuclei)))
    pitch_um = size_um / side
    rng = np.random.default_rng(seed)
    cells = rng.permutation(side * side)[:n_nuclei]
    jitter_um = max(0.0, pitch_um / 2 - radius_um - 1.5)
    centres = ((np.stack([cells // side, cells % side], axis=1) + 0.5) * pitch_um
               + rng.uniform(-jitter_um, jitter_um, size=(n_nuclei, 2)))
    rr, cc = np.mgrid[:n_px, :n_px] * PX_UM
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= radius_um ** 2] = NUCLEUS_RGB
    return TissueImage.from_array(img, PX_UM)


def test_uniform_patterns_of_a_peak_a_pit_an_edge_and_flat_ground():
    level = np.full((9, 12), 5, dtype=np.uint8)
    level[2, 2] = 9  # a peak: no neighbour as high -> 0
    level[6, 2] = 1  # a pit: every neighbour higher -> 8
    level[:, 8:] = 7  # a step up: below it every neighbour is at least the centre (8), on it
    # the 5 neighbours of the upper side (5)
    level[4, 5] = 9  # a peak beside a pit: still a peak
    codes = uniform_patterns(level)
    assert codes.dtype == np.uint8 and codes.shape == level.shape
    assert codes[2, 2] == 0 and codes[6, 2] == 8 and codes[4, 1] == 8
    assert codes[2, 7] == 8 and codes[2, 8] == 5
    assert codes[4, 5] == 0
    level[3, 4] = 9
    level[5, 4] = 9  # two higher neighbours apart: not uniform
    assert uniform_patterns(level)[4, 5] == 9
    assert uniform_patterns(level)[0, 0] == 3  # beyond the array is 0: 3 neighbours in


@pytest.fixture(scope="module")
def enc() -> NucleiStainEncoder:
    return NucleiStainEncoder()


def column(enc: NucleiStainEncoder, feats: np.ndarray, name: str) -> np.ndarray:
    return feats[:, enc.feature_names.index(name)]


def test_names_and_dim_extend_the_default_encoder(enc):
    base = StainTextureEncoder()
    assert enc.embed_dim == len(enc.feature_names) == base.embed_dim + 2 * len(FULLRES_NAMES)
    assert enc.feature_names[:base.embed_dim] == base.feature_names
    assert len(set(enc.feature_names)) == enc.embed_dim
    assert "nuclei_per_mm2@1" in enc.feature_names and "lbp_edge@1/2" in enc.feature_names
    assert enc.config_key() != base.config_key()


def test_registered_with_its_options():
    enc = create_encoder("stain-texture-nuclei", device="cuda", hf_token="x",
                         nuclei_scales=(1.0,), fine_um_per_px=4.0)
    assert isinstance(enc, NucleiStainEncoder)
    assert enc.nuclei_scales == (1.0,) and enc.fine_um_per_px == 4.0
    with pytest.raises(TrihrgeInputError, match="unexpected option for stain-texture-nuclei"):
        create_encoder("stain-texture-nuclei", grid=3)


@pytest.mark.parametrize("window_um", [24.0, 112.0])
def test_count_follows_nuclei_density(enc, window_um):
    centres = np.array([[150.0, 150.0], [100.0, 200.0]])
    sparse = enc.embed_windows(nuclei_image(36), centres, window_um)
    dense = enc.embed_windows(nuclei_image(144), centres, window_um)
    assert sparse.shape == dense.shape == (2, enc.embed_dim)
    assert np.isfinite(sparse).all() and np.isfinite(dense).all()
    if window_um >= 100:  # a window holding many nuclei reads the density: 400 vs 1600 /mm^2
        np.testing.assert_allclose(column(enc, sparse, "nuclei_per_mm2@1"), 400, rtol=0.25)
        np.testing.assert_allclose(column(enc, dense, "nuclei_per_mm2@1"), 1600, rtol=0.25)
    assert (column(enc, dense, "nuclear_fraction@1")
            > 2 * column(enc, sparse, "nuclear_fraction@1")).all()
    # the same nuclei (radius 3.5 um: 38.5 um^2) in both; where a box has under half a nucleus
    # the section's mean nucleus stands in
    for feats in (sparse, dense):
        np.testing.assert_allclose(column(enc, feats, "nucleus_area_um2_mean@1"), 38.5, rtol=0.3)
        assert (column(enc, feats, "nucleus_eccentricity_mean@1") < 0.6).all()


def test_outside_the_tissue_reads_as_white(enc):
    image = nuclei_image(100)
    far = enc.embed_windows(image, np.array([[-1000.0, -1000.0]]), 112.0)
    assert column(enc, far, "nuclei_per_mm2@1")[0] == 0
    assert column(enc, far, "nuclear_fraction@1")[0] == 0
    assert column(enc, far, "cytoplasm_fraction@1")[0] == 0


def test_image_without_nuclei_gives_finite_features():
    blank = TissueImage.from_array(np.full((400, 400, 3), CYTO_RGB, dtype=np.uint8), PX_UM)
    feats = NucleiStainEncoder().embed_windows(blank, np.array([[100.0, 100.0]]), 112.0)
    assert np.isfinite(feats).all()
    assert feats[0, NucleiStainEncoder().feature_names.index("nuclei_per_mm2@1")] == 0


def test_coarse_image_is_refused_before_work(enc):
    coarse = TissueImage.from_array(np.full((50, 50, 3), 200, dtype=np.uint8), 4.0)
    assert 4.0 > MAX_UM_PER_PX
    with pytest.raises(TrihrgeInputError, match="full resolution"):
        enc.embed_windows(coarse, np.array([[50.0, 50.0]]), 112.0)


def test_synthetic_sample_counts_its_true_nuclei(synthetic, enc):
    from napari_trihrge.io import get_image
    from napari_trihrge.tl import sample_geometry

    image = get_image(synthetic)
    rc_um, _, _ = sample_geometry(synthetic)
    window_um = 112.0
    feats = enc.embed_windows(image, rc_um, window_um)
    assert feats.shape == (len(rc_um), enc.embed_dim) and np.isfinite(feats).all()
    true_rc = np.asarray(synthetic.uns["truth"]["nuclei"]["rc_um"]).reshape(-1, 2)
    inside = (np.abs(true_rc[None, :, :] - rc_um[:, None, :]) < window_um / 2).all(-1)
    true_per_mm2 = inside.sum(1) / (window_um ** 2 * 1e-6)
    found = column(enc, feats, "nuclei_per_mm2@1")
    assert np.corrcoef(found, true_per_mm2)[0, 1] > 0.8
    assert found.std() > 0


def test_features_are_cached_apart_from_the_default_encoders(enc, tmp_path):
    from napari_trihrge.features import extract_features

    image = nuclei_image(64)
    centres = np.array([[150.0, 150.0], [60.0, 240.0]])
    first = extract_features(image, centres, enc, (24.0, 112.0), cache_dir=tmp_path)
    assert first.shape == (2, 2, enc.embed_dim)
    default = extract_features(image, centres, StainTextureEncoder(), (24.0, 112.0),
                               cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features_*.npy"))) == 2
    np.testing.assert_array_equal(first[..., :default.shape[-1]], default)
    again = extract_features(image, centres, NucleiStainEncoder(), (24.0, 112.0),
                             cache_dir=tmp_path)
    np.testing.assert_array_equal(again, first)
