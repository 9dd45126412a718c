"""The model levers of RunConfig (count loss, gene programs, denoised targets, neighbour images)."""

from __future__ import annotations

import dataclasses

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


# --- the neighbouring spots' images (RunConfig.neighbour_images) -----------------------------


@pytest.mark.parametrize("kw,match", [
    ({"neighbour_images": -1}, "neighbour_images must be a whole number"),
    ({"neighbour_images": 2.5}, "neighbour_images must be a whole number"),
    ({"neighbour_images": True}, "neighbour_images must be a whole number"),
    ({"neighbour_images": 4, "image_input": False}, "needs the image input"),
    ({"neighbour_images": 100_000}, "neighbour_images=100000 averages"),
    ({"neighbour_images": 4, "neighbour_images_windows": "largest"}, "must be one of spot, all"),
])
def test_bad_neighbour_images_are_refused_before_any_work(synthetic, kw, match, monkeypatch):
    from napari_trihrge.tl import _shared

    def no_features(*a, **k):
        raise AssertionError("features computed before the check")

    monkeypatch.setattr(_shared, "_features", no_features)
    for run in (lambda c: tl.recovery(synthetic, config=c),
                lambda c: tl.enhance(synthetic, config=c), lambda c: tl.train(synthetic, config=c)):
        with pytest.raises(TrihrgeInputError, match=match):
            run(tiny(**kw))


def test_neighbour_image_window_is_the_mean_of_the_nearest_other_spots(synthetic):
    from scipy.spatial.distance import cdist

    from napari_trihrge import geometry
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl._shared import (
        NeighbourImages,
        _encoder_and_image,
        _features,
        _spot_features,
    )

    # the spots moved by up to 3 um, so no two neighbours are at the same distance (no ties)
    rng = np.random.default_rng(0)
    sample = synthetic.copy()
    um_per_px = float(sample.uns["trihrge"]["um_per_px"])
    sample.obsm["spatial"] = sample.obsm["spatial"] + rng.uniform(-3, 3, (sample.n_obs, 2)
                                                                  ) / um_per_px
    cfg = tiny(neighbour_images=3, windows_um=(336.0, 112.0))
    rc_um, _, _ = tl.sample_geometry(sample)
    image, encoder = _encoder_and_image(sample, cfg)
    windows = (24.0, *cfg.windows_um)  # the dense path: the local window first
    own = _features(image, encoder, rc_um, windows, cfg, Progress(), dense=True)
    feats, images = _spot_features(image, encoder, rc_um, windows, cfg, Progress(), dense=True)
    assert feats.shape == (own.shape[0], own.shape[1] + 1, own.shape[2])
    np.testing.assert_array_equal(feats[:, :-1], own)

    def by_hand(at_rc_um, window=2):  # the 3 nearest spots after the nearest; 112 um: index 2
        order = np.argsort(cdist(at_rc_um, rc_um), axis=1)
        return own[order[:, 1:4], window].mean(axis=1)

    np.testing.assert_allclose(feats[:, -1], by_hand(rc_um), rtol=1e-5, atol=1e-6)
    # locations between the spots: their nearest spot is left out, as a spot is at itself
    spacing_um = geometry.spot_spacing_um(rc_um)
    at = rc_um[:20] + rng.uniform(-0.4, 0.4, (20, 2)) * spacing_um
    extra = _features(image, encoder, at, windows, cfg, Progress(), dense=True,
                      neighbour_images=images)[:, -1]
    np.testing.assert_allclose(extra, by_hand(at), rtol=1e-5, atol=1e-6)
    assert not np.allclose(extra, feats[:20, -1])  # not simply the nearest spot's own window
    # 'all': every window of the neighbours, each one more window
    every = NeighbourImages.from_spots(tiny(neighbour_images=3, neighbour_images_windows="all"),
                                       own, rc_um, windows, dense=True).append_to(own[:20], at)
    assert every.shape[1] == 2 * own.shape[1]
    for w in range(own.shape[1]):
        np.testing.assert_allclose(every[:, own.shape[1] + w], by_hand(at, w), rtol=1e-5,
                                   atol=1e-6)


def test_recovery_and_enhance_with_a_map_store_use_the_neighbour_images(synthetic):
    from napari_trihrge import geometry
    from napari_trihrge.io import map_store
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl._maps import predict_maps
    from napari_trihrge.tl._shared import _encoder_and_image, _spot_features

    cfg = tiny(neighbour_images=4, stacking_folds=3)
    rec = tl.recovery(synthetic, seed=1, config=cfg)
    default = tl.recovery(synthetic, seed=1, config=tiny(stacking_folds=3))
    assert rec.config["neighbour_images"] == 4
    assert rec.fits[0].model.config.n_scales == default.fits[0].model.config.n_scales + 1
    assert rec.metrics["pcc_mean"] > rec.metrics["baseline_knn_pcc_mean"]
    assert rec.metrics["pcc_mean"] != default.metrics["pcc_mean"]

    res = tl.enhance(synthetic, factor=2, stride_um=64.0, trust=False, map_store=True,
                     config=cfg)
    assert isinstance(res.maps, map_store.FactorMaps)
    assert res.fits[0].model.config.n_scales == 4  # local, 112, 336 um + the neighbours'
    assert np.isfinite(np.asarray(res.virtual.X)).all()
    # the store (upstream of it: the features with the window) equals the direct prediction
    image, encoder = _encoder_and_image(synthetic, cfg)
    rc_um, _, _ = tl.sample_geometry(res.spots)
    windows = (float(cfg.local_window_um), *cfg.windows_um)
    _, images = _spot_features(image, encoder, rc_um, windows, cfg, Progress(), dense=True)
    grid = geometry.DenseGrid(res.maps.origin_rc_um, res.maps.stride_um, res.maps.mask)
    direct = predict_maps(res.model, image, encoder, rc_um, np.asarray(res.spots.X), windows,
                          64.0, cfg, genes=list(res.spots.var_names), grid=grid,
                          neighbour_images=images)
    stored = np.asarray(res.maps.values)[:, res.maps.mask]
    assert np.abs(stored - np.asarray(direct.values)[:, res.maps.mask]).max() < 1e-4
    assert stored.std() > 0.05
    assert res.metrics["consistency"]["pcc_mean"] > 0.3  # the map follows the measured spots


def test_a_model_trained_with_neighbour_images_records_them_for_predict(synthetic, tmp_path):
    from napari_trihrge.io.model_folder import load_model_folder
    from napari_trihrge.tl._model_io import prediction_config

    trained = tl.train(synthetic, config=tiny(neighbour_images=4,
                                              neighbour_images_windows="all"))
    trained.model.save(tmp_path / "model")
    loaded = load_model_folder(tmp_path / "model")
    assert loaded.description["neighbour_images"] == 4
    assert loaded.description["neighbour_images_windows"] == "all"
    assert loaded.nets[0].config.n_scales == 6  # local, 112, 336 um and the neighbours' three
    again = prediction_config(loaded, device="cpu", cache_dir=None, hf_token=None)
    assert (again.neighbour_images, again.neighbour_images_windows) == (4, "all")
    res = tl.predict(tmp_path / "model", synthetic, factor=2, stride_um=64.0)
    assert res.config["neighbour_images"] == 4
    assert res.metrics["spots"]["pcc_mean"] > res.metrics["spots"]["baseline_knn_pcc_mean"]
    inside = np.asarray(res.maps.values)[:, res.maps.mask]
    assert np.isfinite(inside).all()
    # a model without them predicts without them (older folders lack the field: 0)
    description = {k: v for k, v in loaded.description.items()
                   if not k.startswith("neighbour_images")}
    old = prediction_config(dataclasses.replace(loaded, description=description), device="cpu",
                            cache_dir=None, hf_token=None)
    assert (old.neighbour_images, old.neighbour_images_windows) == (0, "spot")


def test_transfer_adds_each_sections_neighbour_images(synthetic):
    res = tl.transfer([synthetic], synthetic.copy(), config=tiny(neighbour_images=4))
    plain = tl.transfer([synthetic], synthetic.copy(), config=tiny())
    assert res.fits[0].model.config.n_scales == plain.fits[0].model.config.n_scales + 1
    assert res.metrics["pcc_mean"] != plain.metrics["pcc_mean"]
    assert np.isfinite(np.asarray(res.predictions.X)).all()
