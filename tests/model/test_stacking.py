import numpy as np
import pytest

from napari_trihrge.metrics import fair_pcc
from napari_trihrge.model.stacking import RidgeHead, fit_gene_blend, fold_indices


def _data(n=200, g=30, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, g))
    good = truth + 0.5 * rng.normal(size=(n, g))  # informative candidate
    noise = rng.normal(size=(n, g))  # uninformative candidate
    return truth, good, noise


def test_blend_weights_follow_the_informative_candidate():
    truth, good, noise = _data()
    blend = fit_gene_blend({"good": good, "noise": noise}, truth)
    assert (blend.weights >= 0).all()
    assert blend.weights[:, 0].mean() > 0.5
    assert blend.weights[:, 1].mean() < 0.1
    t2, g2, n2 = _data(seed=1)
    pred = blend.predict({"good": g2, "noise": n2})
    assert np.nanmean(fair_pcc(pred, t2)) > np.nanmean(fair_pcc(g2, t2)) - 0.02


def test_blend_never_flips_a_candidate_and_never_predicts_a_constant():
    truth, good, _ = _data()
    # a candidate anti-correlated with the truth out of fold gets weight 0, not a negative one;
    # the gene then keeps the shared weights instead of a constant prediction
    blend = fit_gene_blend({"flipped": -good}, truth)
    assert (blend.weights >= 0).all()
    pred = blend.predict({"flipped": -good})
    assert (np.ptp(pred, axis=0) >= 0).all()


def test_ridge_head_on_image_and_neighbours():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(120, 2, 6))
    nb = rng.normal(size=(120, 10))
    y = feats[:, 0, :2].sum(axis=1, keepdims=True) + nb[:, :10] * 0.5
    head = RidgeHead.fit(feats[:80], nb[:80], y[:80])
    pred = head.predict(feats[80:], nb[80:])
    assert pred.shape == (40, 10)
    assert np.nanmean(fair_pcc(pred, y[80:])) > 0.5
    image_only = RidgeHead.fit(feats[:80], None, y[:80])
    assert image_only.predict(feats[80:], None).shape == (40, 10)
    with pytest.raises(ValueError):
        RidgeHead.fit(None, None, y)


def test_folds_cover_every_spot_once():
    folds = fold_indices(23, 5, seed=3)
    assert len(folds) == 5
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(23))
