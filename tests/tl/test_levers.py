"""The model levers of RunConfig (count loss, gene programs, denoised targets) through recovery."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import tl
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.tl._shared import _count_targets, _fit_stacked


def tiny(**kw):
    return tl.RunConfig(n_top_genes=40, model=dict(TINY_MODEL), train=dict(TINY_TRAIN), **kw)


@pytest.mark.parametrize("kw,match", [
    ({"loss": "huber"}, "loss"),
    ({"output_rank": -2}, "output_rank"),
    ({"target_smoothing": 1.0}, "target_smoothing"),
    ({"target_smoothing": 0.3, "loss": "poisson"}, "cannot be combined"),
    ({"target_smoothing_k": 0}, "target_smoothing_k"),
])
def test_bad_lever_settings_are_refused_before_any_work(synthetic, kw, match):
    with pytest.raises(TrihrgeInputError, match=match):
        tl.recovery(synthetic, config=tiny(**kw))


@pytest.mark.parametrize("kw", [{"loss": "poisson"}, {"loss": "negative_binomial"},
                                {"output_rank": 4}, {"target_smoothing": 0.5}])
def test_recovery_runs_with_each_lever_and_records_it(synthetic, kw):
    res = tl.recovery(synthetic, seed=1, config=tiny(stacking=(), **kw))
    model = res.fits[0].model
    for key, value in kw.items():
        assert res.config[key] == value
        if key in ("loss", "output_rank"):
            assert getattr(model.config, key) == value
    if kw.get("loss", "mse") != "mse":
        assert model.config.output_activation == "softplus"
    pred = np.asarray(res.predictions.X)
    assert np.isfinite(pred).all() and (pred >= 0).all()
    assert res.metrics["n_genes_constant_prediction"] < pred.shape[1] // 2


def test_count_targets_are_the_raw_counts_and_whole_library(synthetic):
    from napari_trihrge.pp import prepare_expression

    expr = prepare_expression(synthetic, n_top_genes=40)
    assert _count_targets(tiny(), synthetic, expr) == {}
    counts = _count_targets(tiny(loss="poisson"), synthetic, expr)
    library = np.asarray(synthetic[expr.obs_names].X.sum(axis=1)).ravel()
    np.testing.assert_allclose(counts["library_size"], library, rtol=1e-6)
    assert (counts["library_size"] > counts["counts"].sum(axis=1)).all()  # every gene, not 40
    # the log-normalised targets are the counts over the library, as the count loss reads them
    np.testing.assert_allclose(np.log1p(counts["counts"] / library[:, None] * 1e4),
                               np.asarray(expr.X), rtol=1e-4, atol=1e-4)


def test_denoised_targets_train_the_learners_but_the_blend_is_weighted_on_the_measurement():
    rng = np.random.default_rng(0)
    rc_um = np.stack(np.meshgrid(np.arange(8) * 100.0, np.arange(8) * 100.0), -1).reshape(-1, 2)
    y = rng.gamma(2.0, size=(64, 5)).astype(np.float32)
    feats = rng.normal(size=(64, 1, 3)).astype(np.float32)
    cfg = tiny(stacking=("knn6", "ridge"), target_smoothing=0.5, neighbour_input=False)
    raw = _fit_stacked(tiny(stacking=("knn6", "ridge"), neighbour_input=False), feats, y, rc_um,
                       None, None)
    smoothed = _fit_stacked(cfg, feats, y, rc_um, None, None)
    assert np.array_equal(smoothed.src_y, y)  # kNN and the blend see the measurement
    assert not np.allclose(smoothed.ridge.predict(feats, None), raw.ridge.predict(feats, None))


@pytest.mark.parametrize("kw", [{"loss": "poisson"}, {"target_smoothing": 0.25}])
def test_train_and_transfer_refuse_the_levers_they_do_not_implement(synthetic, kw):
    with pytest.raises(TrihrgeInputError, match="train does not support"):
        tl.train(synthetic, config=tiny(**kw))
    with pytest.raises(TrihrgeInputError, match="transfer does not support"):
        tl.transfer([synthetic], synthetic.copy(), config=tiny(**kw))


def test_enhance_dense_map_with_a_count_loss_and_gene_programs(synthetic):
    res = tl.enhance(synthetic, factor=2, stride_um=64.0, trust=False,
                     config=tiny(loss="poisson", output_rank=4))
    inside = np.asarray(res.maps.values)[:, res.maps.mask]
    assert np.isfinite(inside).all() and (inside >= 0).all()
    assert res.metrics["consistency"]["pcc_mean"] > 0.3  # the map follows the measured spots
    model = res.fits[0].model
    assert model.config.loss == "poisson" and model.config.output_rank == 4


def test_map_store_of_a_count_loss_gene_program_model_equals_the_direct_prediction(synthetic):
    from napari_trihrge import geometry
    from napari_trihrge.io import map_store
    from napari_trihrge.tl._maps import predict_maps
    from napari_trihrge.tl._shared import _encoder_and_image, sample_geometry

    cfg = tiny(loss="poisson", output_rank=4, stacking_folds=3)
    res = tl.enhance(synthetic, factor=2, stride_um=64.0, trust=False, map_store=True,
                     config=cfg)
    assert isinstance(res.maps, map_store.FactorMaps)
    assert res.maps.weights.activation == "softplus"
    image, encoder = _encoder_and_image(synthetic, cfg)
    rc_um, _, _ = sample_geometry(res.spots)
    grid = geometry.DenseGrid(res.maps.origin_rc_um, res.maps.stride_um, res.maps.mask)
    direct = predict_maps(res.model if res.model is not None else res.fits, image, encoder, rc_um, np.asarray(res.spots.X),
                          (float(cfg.local_window_um), *cfg.windows_um), 64.0, cfg,
                          genes=list(res.spots.var_names), grid=grid)
    inside = res.maps.mask
    stored = np.asarray(res.maps.values)[:, inside]
    assert np.abs(stored - np.asarray(direct.values)[:, inside]).max() < 1e-4
    assert stored.std() > 0.05
