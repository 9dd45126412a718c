"""Tissue mask: synthetic truth, real DLPFC lowres image, edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.conftest import shared_path

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.tissue import tissue_mask, tissue_mask_for

PINK = (235, 140, 190)


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def synthetic():
    from napari_trihrge.datasets import synthetic_sample

    return synthetic_sample(0, n_genes=8)


def test_synthetic_mask_matches_truth(synthetic):
    img = synthetic.uns["spatial"]["synthetic"]["images"]["hires"]
    truth = synthetic.uns["truth"]["tissue_8um"]
    mask = tissue_mask(img, um_per_px=1.0)
    assert mask.shape == img.shape[:2] and mask.dtype == bool
    assert _iou(mask[4::8, 4::8], truth) > 0.9


def test_mask_for_tissue_image(synthetic):
    img = synthetic.uns["spatial"]["synthetic"]["images"]["hires"]
    truth = synthetic.uns["truth"]["tissue_8um"]

    class Duck:  # duck-typed image without the return_um_per_px keyword
        um_per_px = 1.0
        shape_rc_um = (2400.0, 2400.0)

        def at_resolution(self, um_per_px):
            f = int(um_per_px)
            return img[::f, ::f]

    mask, px = tissue_mask_for(Duck(), 8.0)
    assert px == pytest.approx(8.0) and mask.shape == (300, 300)
    assert _iou(mask, truth) > 0.9

    from napari_trihrge.io.image import TissueImage

    mask2, px2 = tissue_mask_for(TissueImage.from_array(img, 1.0), 16.0)
    assert px2 == pytest.approx(16.0) and mask2.shape == (150, 150)
    assert _iou(mask2, truth[::2, ::2]) > 0.85


def test_dlpfc_lowres_spots_inside_mask():
    spatial = shared_path("dlpfc_151673", "spatial")
    from skimage.io import imread

    img = imread(spatial / "tissue_lowres_image.png")[..., :3]
    scalef = 0.045004502
    um_per_px = 55.0 / 96.40082438014726 / scalef  # ~12.7 um per lowres pixel
    mask = tissue_mask(img, um_per_px=um_per_px)
    pos = pd.read_csv(spatial / "tissue_positions_list.csv", header=None,
                      names=["barcode", "in_tissue", "array_row", "array_col", "pxl_row",
                             "pxl_col"])
    r = np.clip(np.rint(pos["pxl_row"] * scalef).astype(int), 0, img.shape[0] - 1)
    c = np.clip(np.rint(pos["pxl_col"] * scalef).astype(int), 0, img.shape[1] - 1)
    inside = mask[r, c]
    tissue = pos["in_tissue"].to_numpy() == 1
    assert inside[tissue].mean() > 0.9
    assert inside[~tissue].mean() < 0.15  # the fiducial frame and glass stay out


def test_blank_full_and_small_objects():
    white = np.full((400, 400, 3), 245, dtype=np.uint8)
    assert not tissue_mask(white, um_per_px=1.0).any()
    pink = np.empty_like(white)
    pink[:] = PINK
    assert tissue_mask(pink, um_per_px=1.0).all()

    img = white.copy()
    img[20:60, 20:60] = PINK  # 1600 um^2: dust
    img[120:380, 120:380] = PINK  # 67600 um^2 with a 100 x 100 um hole
    img[200:300, 200:300] = 245
    mask = tissue_mask(img, um_per_px=1.0, min_object_um2=20_000)
    assert not mask[40, 40]
    assert mask[250, 250] and mask[130, 370]  # hole filled, piece kept
    assert not mask[100, 100]
    kept_hole = tissue_mask(img, um_per_px=1.0, max_hole_um2=100.0)
    assert not kept_hole[250, 250] and kept_hole[130, 370]
    assert tissue_mask(img, um_per_px=1.0, min_object_um2=100.0)[40, 40]


def test_float_and_rgba_inputs_and_errors():
    img = np.full((64, 64, 4), 255, dtype=np.uint8)
    img[8:56, 8:56, :3] = PINK
    assert tissue_mask(img, um_per_px=8.0, min_object_um2=0)[32, 32]
    assert tissue_mask(img[..., :3] / 255.0, um_per_px=8.0, min_object_um2=0)[32, 32]
    with pytest.raises(TrihrgeInputError):
        tissue_mask(np.zeros((10, 10)), um_per_px=1.0)
    with pytest.raises(TrihrgeInputError):
        tissue_mask(img, um_per_px=0.0)
    with pytest.raises(TrihrgeInputError):
        tissue_mask_for(np.zeros((4, 4, 3)))
