"""Accuracy checks on the synthetic sample with a small, fast configuration: the dense map beats
interpolated spot values where the image carries information, the ensemble spread points at the
errors, noise genes are not turned into tissue structure, and the cross-section transfer task."""

import numpy as np
import pytest

from conftest import SMALL_MODEL, TINY_TRAIN
from napari_trihrge import evaluation
from napari_trihrge import tl as tasks


def _subset(adata, per_class=8):
    cls = adata.var["gene_class"].to_numpy()
    keep = np.concatenate([np.flatnonzero(cls == c)[:per_class]
                           for c in ("marker", "density", "gradient", "noise")])
    return adata[:, keep].copy()


#: how much better than interpolated spots the map must be where the image informs (PCC)
MARGIN_OVER_INTERPOLATION = 0.03


def _enhance_small(image_input: bool = True):
    from napari_trihrge.datasets import synthetic_sample

    adata = _subset(synthetic_sample(seed=0, size_um=(1200.0, 1200.0)), per_class=6)
    cfg = tasks.RunConfig(n_top_genes=adata.n_vars, ensemble=3, model=dict(SMALL_MODEL),
                          train={**TINY_TRAIN, "max_epochs": 40, "patience": 8},
                          image_input=image_input)
    res = tasks.enhance(adata, factor=2, stride_um=32.0, config=cfg)
    um = float(res.spots.uns["trihrge"]["um_per_px"])
    rc = np.asarray(res.spots.obsm["spatial"])[:, ::-1] * um
    summary, _ = evaluation.superres_scores(adata, res.maps, rc, np.asarray(res.spots.X))
    structure = evaluation.structure_scores(adata, res.maps, rc, np.asarray(res.spots.X))
    return res, summary, structure


@pytest.fixture(scope="module")
def enhanced():
    return _enhance_small()


@pytest.fixture(scope="module")
def without_image():
    """The same run with the image input switched off (neighbour input only)."""
    return _enhance_small(image_input=False)


@pytest.mark.slow
def test_map_beats_interpolation_where_the_image_informs(enhanced):
    _, summary, _ = enhanced
    by = summary["by_gene_class"]
    for cls in ("marker", "density"):
        assert by[cls]["pcc_mean"] > by[cls]["baseline_interp_pcc_mean"] + \
            MARGIN_OVER_INTERPOLATION, (cls, by[cls])


@pytest.mark.slow
def test_without_the_image_the_map_does_not_beat_interpolation(enhanced, without_image):
    """The control for the test above: the margin is the image's doing, so the same model
    without the image input fails it and scores clearly below the model with it."""
    by = enhanced[1]["by_gene_class"]
    blind = without_image[1]["by_gene_class"]
    for cls in ("marker", "density"):
        assert blind[cls]["pcc_mean"] <= blind[cls]["baseline_interp_pcc_mean"] + \
            MARGIN_OVER_INTERPOLATION, (cls, blind[cls])
        assert by[cls]["pcc_mean"] > blind[cls]["pcc_mean"] + 0.05, (cls, by[cls], blind[cls])


@pytest.mark.slow
def test_ensemble_spread_is_larger_where_the_error_is_larger(enhanced):
    _, summary, _ = enhanced
    # where the ensemble disagrees most, the marker maps are clearly more wrong
    marker = summary["by_gene_class"]["marker"]
    assert marker["error_ratio_high_vs_low_spread"] > 1.1, marker


@pytest.mark.slow
def test_ensemble_spread_tracks_the_error_per_pixel(enhanced):
    _, summary, _ = enhanced
    assert summary["spread_error_pcc_mean"] > 0.05, summary["spread_error_pcc_mean"]


@pytest.mark.slow
def test_noise_genes_are_not_hallucinated_into_structure(enhanced):
    _, _, s = enhanced
    # the noise maps are much quieter than the marker maps and follow the domains far less
    assert s["noise"]["rel_sd_map"] < 0.5 * s["marker"]["rel_sd_map"]
    assert s["noise"]["eta2_map"] < s["marker"]["eta2_map"]


@pytest.mark.slow
def test_map_is_consistent_with_the_measured_spots(enhanced):
    res, _, _ = enhanced
    assert res.metrics["consistency"]["pcc_mean"] > 0.3


def test_transfer_predicts_an_unseen_region_from_the_image(synthetic):
    adata = _subset(synthetic)
    cols = adata.obsm["spatial"][:, 0]
    left, right = adata[cols < np.median(cols)].copy(), adata[cols >= np.median(cols)].copy()
    cfg = tasks.RunConfig(n_top_genes=adata.n_vars, model=dict(SMALL_MODEL),
                          train={**TINY_TRAIN, "max_epochs": 20})
    res = tasks.transfer([left], right, config=cfg)
    m = res.metrics
    assert res.predictions.n_obs == right.n_obs
    assert res.predictions.layers["measured"].shape == res.predictions.shape
    assert m["n_train_spots"] == left.n_obs
    # every gene varies across the target and none is predicted as a constant; a constant (the
    # training mean) scores PCC 0 and a clearly larger error than the model
    assert m["n_genes_scored"] == adata.n_vars and m["n_genes_constant_prediction"] == 0
    assert m["baseline_train_mean_pcc_mean"] == 0.0
    assert m["mse"] < 0.8 * m["baseline_train_mean_mse"], (m["mse"], m["baseline_train_mean_mse"])
    assert m["baseline_ridge_pcc_mean"] > 0.3  # the ridge head sees the domains too (measured 0.55)
    markers = res.per_gene.index.isin(adata.var_names[adata.var["gene_class"] == "marker"])
    assert res.per_gene.loc[markers, "pcc"].mean() > 0.3  # domains are visible in the image


def test_transfer_needs_the_image(synthetic):
    from napari_trihrge.errors import TrihrgeInputError

    with pytest.raises(TrihrgeInputError, match="image"):
        tasks.transfer([synthetic], synthetic, config=tasks.RunConfig(image_input=False))
