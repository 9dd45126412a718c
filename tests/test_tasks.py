import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import tasks
from napari_trihrge.errors import Cancelled, TrihrgeInputError
from napari_trihrge.progress import Progress


def tiny(**kw):
    return tasks.RunConfig(n_top_genes=40, model=dict(TINY_MODEL), train=dict(TINY_TRAIN), **kw)


def test_recovery_scores_hidden_spots_only(synthetic):
    res = tasks.recovery(synthetic, holdout_fraction=0.5, seed=3, annotation="domain",
                         config=tiny())
    n = synthetic.n_obs
    assert res.predictions.n_obs == round(n * 0.5)
    m = res.metrics
    for key in ("pcc_mean", "mse", "mae", "ari", "baseline_knn_pcc_mean"):
        assert np.isfinite(m[key]), key
    # the hidden spots are not among the training spots
    assert res.predictions.obs_names.isin(synthetic.obs_names).all()
    assert res.predictions.layers["measured"].shape == res.predictions.shape
    assert res.per_gene["pcc"].is_monotonic_decreasing
    assert set(res.timings_s) >= {"genes", "features", "training", "prediction"}


def test_recovery_is_reproducible(synthetic):
    a = tasks.recovery(synthetic, seed=1, config=tiny())
    b = tasks.recovery(synthetic, seed=1, config=tiny())
    np.testing.assert_allclose(a.predictions.X, b.predictions.X, rtol=1e-5, atol=1e-6)


def test_bad_holdout_fraction(synthetic):
    with pytest.raises(TrihrgeInputError, match="between 0 and 1"):
        tasks.recovery(synthetic, holdout_fraction=1.5, config=tiny())


def test_enhance_virtual_spots_and_dense_map(synthetic):
    res = tasks.enhance(synthetic, factor=4, stride_um=32.0, config=tiny(ensemble=2))
    assert res.virtual.n_obs == 4 * synthetic.n_obs
    assert res.virtual.obs["is_measured"].sum() == synthetic.n_obs
    maps = res.maps
    assert maps.values.shape[0] == res.spots.n_vars
    inside = np.asarray(maps.values)[:, maps.mask]
    assert np.isfinite(inside).all() and (inside >= 0).all()
    assert np.isnan(np.asarray(maps.values)[:, ~maps.mask]).all()
    assert maps.std is not None
    assert np.isfinite(res.metrics["consistency"]["pcc_mean"])


def test_cancel_stops_the_run(synthetic):
    progress = Progress()
    progress.cancel()
    with pytest.raises(Cancelled):
        tasks.recovery(synthetic, config=tiny(), progress=progress)


def test_annotation_file_must_match(synthetic, tmp_path):
    f = tmp_path / "labels.tsv"
    f.write_text("barcode\tlabel\nnope-1\tA\nnope-2\tB\n")
    with pytest.raises(TrihrgeInputError, match="no barcode of the annotation"):
        tasks.recovery(synthetic, annotation=str(f), config=tiny())


def test_recovery_blend_scores_its_candidates_on_the_same_genes(synthetic):
    res = tasks.recovery(synthetic, seed=2, config=tiny(stacking_folds=3))
    m = res.metrics
    for name in ("knn6", "knn12", "ridge", "network"):
        assert m[f"blend_weight_{name}_mean"] >= 0
    for key in ("baseline_ridge_pcc_mean", "baseline_network_pcc_mean", "pcc_top100",
                "baseline_knn_pcc_mean", "n_genes_constant_prediction"):
        assert np.isfinite(m[key]), key
    assert len(res.fits) == 3  # one network per fold
    alone = tasks.recovery(synthetic, seed=2, config=tiny(stacking=()))
    assert len(alone.fits) == 1 and "blend_weight_ridge_mean" not in alone.metrics


def test_unknown_stacking_candidate(synthetic):
    with pytest.raises(TrihrgeInputError, match="stacking"):
        tasks.recovery(synthetic, config=tiny(stacking=("knn6", "lasso")))
