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


#: a glass slide with a pink colour cast and an eosin haze next to the tissue, as on the her2st
#: JPEGs (colours measured there on glass and in the haze)
PINK_GLASS = (234, 219, 235)
EOSIN_HAZE = (226, 184, 215)


def _pink_glass_with_haze(img, tissue, um_per_px, seed=0):
    """``img`` with its glass (outside ``tissue``) recoloured pink, plus a soft eosin haze
    blob (200 um radius) on the glass next to the tissue; returns (image, haze core mask)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    out = img.copy()
    glass = ~tissue
    dist_px = ndi.distance_transform_edt(glass)
    # the haze centre: a glass pixel about 250 um from the tissue, far from the image border
    h, w = tissue.shape
    border = np.zeros_like(glass)
    border[h // 8:-h // 8, w // 8:-w // 8] = True
    cand = np.argwhere(border & (np.abs(dist_px * um_per_px - 250.0) < 10.0))
    centre = cand[len(cand) // 2]
    rr, cc = np.mgrid[:h, :w]
    strength = np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2)
                      * um_per_px**2 / (2 * 200.0**2))
    colour = (np.asarray(PINK_GLASS, float)[None, None] + strength[..., None]
              * (np.asarray(EOSIN_HAZE, float) - PINK_GLASS)[None, None])
    colour += rng.normal(0.0, 1.5, colour.shape)
    out[glass] = np.clip(colour[glass], 0, 255).astype(np.uint8)
    return out, glass & (strength > 0.5)


def test_pink_glass_and_eosin_haze_are_not_tissue(synthetic, tmp_path):
    """A bare JPEG on pinkish glass with an eosin haze: the haze is coloured like tissue
    (saturation above the tissue threshold) but absorbs little light, so it stays out."""
    from PIL import Image

    img = synthetic.uns["spatial"]["synthetic"]["images"]["hires"]
    truth = synthetic.uns["truth"]["tissue_8um"]
    tissue_px = np.kron(truth, np.ones((8, 8), bool))[:img.shape[0], :img.shape[1]]
    pink, haze = _pink_glass_with_haze(img, tissue_px, 1.0)
    assert haze.sum() > 60_000  # the haze core is a large object (> min_object_um2)
    Image.fromarray(pink).save(tmp_path / "slide.jpg", quality=90)
    jpeg = np.asarray(Image.open(tmp_path / "slide.jpg").convert("RGB"))
    mask = tissue_mask(jpeg, um_per_px=1.0)
    assert _iou(mask[4::8, 4::8], truth) > 0.9
    assert mask[haze].mean() < 0.02


def test_her2st_jpeg_mask_follows_the_spots_not_the_haze():
    """The her2st H&E JPEGs (C3-C5 have pinkish glass with an eosin haze beside the tissue):
    the mask holds the spots under tissue and little beyond them."""
    from PIL import Image
    from scipy.spatial import cKDTree

    folder = shared_path("her2st", "C3")
    Image.MAX_IMAGE_PIXELS = None
    im = Image.open(folder / "C3_HE.jpg").convert("RGB")
    f = 12  # ~8 um per pixel, the mask's working resolution
    small = np.asarray(im.resize((im.width // f, im.height // f), Image.BOX))
    um_per_px = 0.68 * f
    mask = tissue_mask(small, um_per_px=um_per_px)
    sel = pd.read_csv(folder / "C3_selection.tsv", sep="\t")
    sel = sel[sel["selected"] == 1]
    rc = np.stack([sel["pixel_y"], sel["pixel_x"]], axis=1) / f
    r, c = np.clip(rc.astype(int), 0, np.array(mask.shape) - 1).T
    assert mask[r, c].mean() > 0.97
    # tissue pixels farther than 250 um from every spot centre (spots are 200 um apart)
    ii, jj = np.nonzero(mask)
    d_um = cKDTree(rc).query(np.stack([ii, jj], axis=1))[0] * um_per_px
    assert (d_um > 250.0).mean() < 0.05
