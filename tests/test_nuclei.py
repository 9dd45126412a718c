"""Nuclei from H&E (classical, no weights), tiled segmentation, cells and measurements."""

import numpy as np
import pytest
from skimage.segmentation import expand_labels

from napari_trihrge import nuclei
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.metrics import instance_scores

PINK = np.array([235, 190, 215], dtype=np.float64)
PURPLE_OD = np.array([0.65, 0.70, 0.25])  # hematoxylin-like optical density per channel


def _he_image(centres_rc_px, radii_px, shape=(200, 200), seed=0):
    """A pink background with dark purple discs (nuclei) and their truth labels."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, dtype=np.int32)
    od = np.zeros(shape)
    for k, ((r, c), rad) in enumerate(zip(centres_rc_px, radii_px, strict=True)):
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= rad**2
        truth[disc & (truth == 0)] = k + 1
        od = np.maximum(od, disc * 1.0)
    rgb = PINK[None, None] * np.exp(-od[..., None] * PURPLE_OD * 2.3)
    rgb += rng.normal(0, 2.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def _grid_of_nuclei(shape=(400, 400), step=25, radius=6):
    centres = [(r, c) for r in range(step, shape[0] - step // 2, step)
               for c in range(step, shape[1] - step // 2, step)]
    return _he_image(centres, [radius] * len(centres), shape=shape)


def test_segment_nuclei_finds_each_disc():
    img, truth = _grid_of_nuclei()
    lab = nuclei.segment_nuclei(img, 0.5)
    assert lab.dtype == np.int32 and lab.shape == truth.shape
    scores = instance_scores(truth, lab)
    assert scores["f1"] == 1.0
    assert scores["aji"] > 0.8


def test_touching_nuclei_are_split_by_the_watershed():
    img, truth = _he_image([(50, 44), (50, 56)], [7, 7], shape=(100, 100))
    lab = nuclei.segment_nuclei(img, 0.5)
    assert len(np.unique(lab[lab > 0])) == 2
    assert instance_scores(truth, lab)["f1"] == 1.0


def test_size_limits_are_in_square_micrometres():
    img, _ = _he_image([(30, 30), (70, 70)], [2, 12], shape=(100, 100))
    # at 1 um/px: areas ~13 and ~450 um^2
    lab = nuclei.segment_nuclei(img, 1.0, min_area_um2=20, max_area_um2=600)
    assert len(np.unique(lab[lab > 0])) == 1 and lab[70, 70] > 0
    lab = nuclei.segment_nuclei(img, 1.0, min_area_um2=5, max_area_um2=100)
    assert lab[30, 30] > 0
    assert np.bincount(lab.ravel())[1:].max() <= 100  # nothing above the limit is kept whole


def test_blank_image_has_no_nuclei_and_bad_input_is_refused():
    blank = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert nuclei.segment_nuclei(blank, 0.5).max() == 0
    with pytest.raises(TrihrgeInputError, match="RGB"):
        nuclei.segment_nuclei(np.zeros((64, 64)), 0.5)
    with pytest.raises(TrihrgeInputError, match="pixel size"):
        nuclei.segment_nuclei(blank, 0)
    with pytest.raises(TrihrgeInputError, match="threshold"):
        nuclei.segment_nuclei(blank, 0.5, threshold="triangle")


def test_tiles_stitch_without_cut_or_doubled_nuclei():
    # nuclei placed on and around tile borders (tile 50 um = 100 px at 0.5 um/px)
    rng = np.random.default_rng(3)
    centres = rng.uniform(8, 392, size=(140, 2))
    keep = [0]
    for i in range(1, len(centres)):
        if np.min(np.linalg.norm(centres[keep] - centres[i], axis=1)) > 13:
            keep.append(i)
    img, truth = _he_image(centres[keep], [5.5] * len(keep), shape=(400, 400))
    opts = nuclei.NucleusOptions(threshold=0.05)
    whole = nuclei.segment_nuclei(img, 0.5, options=opts)
    seg = nuclei.segment_image(img, 0.5, options=opts, tile_um=50)
    assert seg.n_tiles == 16
    # the same nuclei, pixel for pixel, numbered differently
    scores = instance_scores(whole, seg.nuclei, iou=0.999)
    assert scores["f1"] == 1.0 and scores["n_pred"] == scores["n_true"]
    assert (whole > 0).sum() == (seg.nuclei > 0).sum()
    assert instance_scores(truth, seg.nuclei)["f1"] > 0.95


def test_segment_image_skips_tiles_without_tissue():
    img, _ = _grid_of_nuclei()
    tissue = np.zeros((40, 40), dtype=bool)  # a coarse mask, 10 px per mask pixel
    tissue[:20, :20] = True  # only the top-left quarter is tissue
    seg = nuclei.segment_image(img, 0.5, tile_um=50, tissue=tissue)
    assert seg.n_tiles == 9  # tiles touching the quarter (the mask is read one pixel wider)
    rows, cols = np.nonzero(seg.nuclei)
    assert rows.max() < 220 and cols.max() < 220  # centroids within one mask pixel of it
    assert rows.min() < 30 and cols.min() < 30


def test_expand_to_cells_matches_expand_labels_across_tiles():
    img, _ = _grid_of_nuclei(shape=(300, 300), step=18, radius=5)
    lab = nuclei.segment_nuclei(img, 0.5)
    cells = nuclei.expand_to_cells(lab, 0.5, 3.0, tile_um=40)
    np.testing.assert_array_equal(cells, expand_labels(lab, 6.0))
    assert (cells[lab > 0] == lab[lab > 0]).all()  # nuclei stay inside their cell
    with pytest.raises(TrihrgeInputError):
        nuclei.expand_to_cells(lab, 0.5, -1.0)


def test_label_measurements_centroid_area_shape():
    lab = np.zeros((60, 80), dtype=np.int32)
    lab[10:20, 10:30] = 1  # 10 x 20 px rectangle
    lab[40:50, 60:70] = 3  # label 2 absent
    img = np.full((60, 80, 3), 200, dtype=np.uint8)
    table = nuclei.label_measurements(lab, 0.5, image=img, tile_um=10)
    assert list(table.index) == [1, 2, 3]
    assert table.loc[1, "area_um2"] == pytest.approx(200 * 0.25)
    assert table.loc[1, "row_um"] == pytest.approx(14.5 * 0.5)
    assert table.loc[1, "x_px"] == pytest.approx(19.5)
    assert table.loc[1, "major_axis_um"] > table.loc[1, "minor_axis_um"]
    assert table.loc[3, "eccentricity"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc[2, "area_um2"] == 0 and np.isnan(table.loc[2, "row_um"])
    assert np.isfinite(table.loc[1, "hematoxylin_od"])


def test_hematoxylin_is_rgb2hed():
    from skimage.color import rgb2hed

    rgb = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3)).astype(np.uint8)
    np.testing.assert_allclose(nuclei.hematoxylin(rgb), rgb2hed(rgb)[..., 0], atol=1e-6)
    as_float = rgb / 255.0
    np.testing.assert_allclose(nuclei.hematoxylin(as_float), rgb2hed(as_float)[..., 0], atol=1e-6)
