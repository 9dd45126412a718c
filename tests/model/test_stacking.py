import numpy as np
import pytest

from napari_trihrge.metrics import fair_pcc
from napari_trihrge.model.stacking import (
    RidgeHead,
    detail_base,
    fit_detail_transfer,
    fit_gene_blend,
    fold_indices,
)
from napari_trihrge.neighbours import idw_apply, idw_apply_linear, idw_interpolate, idw_weights


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


def test_ridge_inputs_from_the_spots_neighbour_pcs_equal_those_of_the_interpolation():
    rng = np.random.default_rng(1)
    spots = rng.gamma(2.0, 1.0, (50, 30)).astype(np.float32)
    idx, w = idw_weights(rng.uniform(0, 300, (50, 2)), rng.uniform(0, 300, (90, 2)), k=6)
    nb = idw_apply(idx, w, spots)
    feats = rng.normal(size=(90, 2, 4))
    head = RidgeHead.fit(feats, nb, rng.normal(size=(90, 3)), n_pcs=5)
    pcs = idw_apply_linear(idx, w, *head.neighbour_pcs_table(spots))
    np.testing.assert_allclose(head.standardised_inputs(feats, None, neighbour_pcs=pcs),
                               head.standardised_inputs(feats, nb), rtol=0, atol=1e-4)
    image_only = RidgeHead.fit(feats, None, rng.normal(size=(90, 3)))
    assert image_only.neighbour_pcs_table(spots) is None


def test_folds_cover_every_spot_once():
    folds = fold_indices(23, 5, seed=3)
    assert len(folds) == 5
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(23))


def _field(rc_um, n_genes):
    """A smooth trend that interpolation follows plus a fine detail only an image sees."""
    trend = np.sin(rc_um[:, :1] / 400.0) + np.cos(rc_um[:, 1:] / 500.0)
    detail = np.sin(rc_um[:, :1] / 37.0) * np.cos(rc_um[:, 1:] / 23.0)
    return np.tile(trend, n_genes), np.tile(detail, n_genes)


def test_detail_transfer_keeps_the_spots_and_adds_the_image_detail():
    rng = np.random.default_rng(0)
    n_genes = 8
    ii, jj = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    spots = np.stack([ii.ravel(), jj.ravel()], axis=1) * 100.0
    trend, detail = _field(spots, n_genes)
    y = trend + detail + 0.1 * rng.normal(size=trend.shape)
    image = detail + 0.1 * rng.normal(size=trend.shape)  # an image model's fitted prediction
    noise = rng.normal(size=trend.shape)
    oof = {"knn6": idw_interpolate(spots, y, spots, 6, exclude_self=True),
           "knn12": idw_interpolate(spots, y, spots, 12, exclude_self=True)}
    base = detail_base(list(oof))
    assert base == "knn6"
    k = int(base[3:])
    details = {name: f - idw_interpolate(spots, f, spots, k, exclude_self=True)
               for name, f in (("image", image), ("noise", noise))}
    transfer = fit_detail_transfer(details, y, oof[base], base)
    weights = transfer.detail.weights  # (genes, image candidates): image, noise
    assert transfer.detail.names == ["image", "noise"]
    assert weights[:, 0].mean() > 0.5 and weights[:, 1].mean() < 0.1
    blend = transfer.as_blend(["knn6", "knn12", "image", "noise"])
    level = transfer.spots_level(y, {"image": image, "noise": noise})

    def predict(at_um, image_at, noise_at):
        return blend.predict({"knn6": idw_interpolate(spots, level, at_um, 6),
                              "knn12": idw_interpolate(spots, level, at_um, 12),
                              "image": image_at, "noise": noise_at})

    # at a measured spot: its measurement
    np.testing.assert_allclose(predict(spots, image, noise), y, atol=1e-4)
    # between the spots: the detail interpolation misses
    between = rng.uniform(0, 1100, size=(400, 2))
    trend_b, detail_b = _field(between, n_genes)
    pred = predict(between, detail_b, rng.normal(size=trend_b.shape))
    truth = trend_b + detail_b
    knn = max(np.nanmean(fair_pcc(idw_interpolate(spots, y, between, k), truth)) for k in (6, 12))
    assert np.nanmean(fair_pcc(pred, truth)) > knn + 0.1


def test_detail_transfer_needs_a_knn_candidate():
    assert detail_base(["good"]) is None
