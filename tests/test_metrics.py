import numpy as np
import pytest

from napari_trihrge.metrics import kmeans_ari, map_scores, per_gene_pcc, spot_scores
from napari_trihrge.neighbours import idw_interpolate


def test_per_gene_pcc_known_values_and_constant_genes():
    true = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 4.0], [3.0, 2.0, 3.0]])
    pred = np.array([[2.0, 1.0, 1.0], [4.0, 2.0, 2.0], [6.0, 3.0, 3.0]])
    r = per_gene_pcc(pred, true)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1])  # constant truth
    assert r[2] == pytest.approx(-1.0)


def test_spot_scores_count_constant_predictions_as_zero_and_skip_constant_truth():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 4))
    true[:, 3] = 1.0  # does not vary among the scored spots: cannot be scored
    pred = true + 0.1 * rng.normal(size=true.shape)
    pred[:, 2] = 0.0  # a dead output: counts as PCC 0, never dropped
    noise = rng.normal(size=true.shape)
    noise[:, 2] = true[:, 2]  # the baseline gets the dead gene right
    summary, table = spot_scores(pred, true, list("abcd"), baselines={"noise": noise})
    assert summary["n_genes"] == 4
    assert summary["n_genes_scored"] == 3
    assert summary["n_genes_constant_truth"] == 1
    assert summary["n_genes_constant_prediction"] == 1
    assert table.loc["c", "pcc"] == 0.0
    assert np.isnan(table.loc["d", "pcc"])
    expected = np.mean([table.loc["a", "pcc"], table.loc["b", "pcc"], 0.0])
    assert summary["pcc_mean"] == pytest.approx(expected)
    assert 0.6 < summary["pcc_mean"] < 0.7  # two genes near 1, one at 0
    assert 0.0 < summary["baseline_noise_pcc_mean"] < 0.6  # about (0 + 0 + 1) / 3
    assert summary["fraction_genes_better_than_noise"] == pytest.approx(2 / 3)
    assert list(table.columns[:3]) == ["pcc", "mse", "mae"]
    assert "pcc_noise" in table


def test_a_model_that_zeroes_half_the_genes_cannot_beat_knn():
    """The failure the fair score exists for: a model that is good on the easy genes and
    outputs exactly 0 for the hard half must not look better than interpolation."""
    rng = np.random.default_rng(1)
    n_visible, n_hidden, n_genes = 300, 300, 40
    rc = rng.uniform(0, 2000, size=(n_visible + n_hidden, 2))
    # smooth spatial fields plus noise, so kNN interpolation carries real signal for every gene
    centres = rng.uniform(0, 2000, size=(n_genes, 2))
    field = np.exp(-((rc[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * 500.0**2))
    y = field + 0.15 * rng.normal(size=field.shape)
    vis, hid = np.arange(n_visible), np.arange(n_visible, n_visible + n_hidden)
    knn = idw_interpolate(rc[vis], y[vis], rc[hid], 12)
    model = knn.copy()
    easy = np.arange(n_genes) < n_genes // 2
    model[:, easy] += 0.05 * (y[hid][:, easy] - knn[:, easy])  # slightly better on easy genes
    model[:, ~easy] = 0.0  # dead outputs for the hard half
    summary, table = spot_scores(model, y[hid], [f"g{i}" for i in range(n_genes)],
                                 baselines={"knn12": knn})
    assert summary["n_genes_constant_prediction"] == n_genes // 2
    assert summary["pcc_mean"] < summary["baseline_knn12_pcc_mean"]
    # the old definition (constant genes dropped from the model's mean only) said the opposite
    old_model_mean = np.nanmean(per_gene_pcc(model, y[hid]))
    assert old_model_mean > summary["baseline_knn12_pcc_mean"]


def test_best_baseline_picks_the_higher_fair_score():
    from napari_trihrge.metrics import best_baseline

    rng = np.random.default_rng(2)
    true = rng.normal(size=(80, 5))
    good = true + 0.5 * rng.normal(size=true.shape)
    bad = true + 3.0 * rng.normal(size=true.shape)
    summary, table = spot_scores(true, true, list("abcde"), baselines={"k6": bad, "k12": good})
    best = best_baseline(summary, table, ["k6", "k12"], "knn")
    assert best["baseline_knn_method"] == "k12"
    assert best["baseline_knn_pcc_mean"] == summary["baseline_k12_pcc_mean"]
    assert (table["pcc_baseline"] == table["pcc_k12"]).all()


def test_ari_recovers_clusters_and_ignores_missing_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 40).astype(object)
    x = rng.normal(size=(120, 20)) * 0.2
    x[:40, 0] += 5
    x[40:80, 1] += 5
    labels[0] = None
    assert kmeans_ari(x, labels) > 0.95
    assert kmeans_ari(rng.normal(size=(120, 20)), labels) < 0.1


def test_map_scores_perfect_and_noise():
    rng = np.random.default_rng(1)
    truth = rng.random((2, 20, 20))
    mask = np.ones((20, 20), bool)
    s, _ = map_scores(truth * 3 + 1, truth, mask, ["g1", "g2"])
    assert s["pcc_mean"] == pytest.approx(1.0)
    assert s["ssim_mean"] == pytest.approx(1.0)
    assert s["rmse"] == pytest.approx(0.0, abs=1e-9)
    s2, _ = map_scores(rng.random((2, 20, 20)), truth, mask, ["g1", "g2"])
    assert s2["pcc_mean"] < 0.3 and s2["ssim_mean"] < 0.5


def test_idw_exact_hit_and_leave_one_out():
    src = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    vals = np.array([[1.0], [2.0], [3.0]])
    np.testing.assert_allclose(idw_interpolate(src, vals, src[:1], k=3), [[1.0]])
    loo = idw_interpolate(src, vals, src, k=2, exclude_self=True)
    assert loo[0, 0] == pytest.approx(2.5)  # mean of the two others at equal distance
    mid = idw_interpolate(src, vals, np.array([[0.0, 5.0]]), k=2)
    assert mid[0, 0] == pytest.approx(1.5)


def test_idw_exclude_index_leaves_out_the_given_source():
    src = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 20.0]])
    vals = np.array([[1.0], [2.0], [3.0]])
    dst = np.array([[0.0, 1.0], [0.0, 19.0]])
    out = idw_interpolate(src, vals, dst, k=1, exclude_index=np.array([0, 1]))
    np.testing.assert_allclose(out, [[2.0], [3.0]])  # nearest remaining source
    out2 = idw_interpolate(src, vals, dst, k=2, exclude_index=np.array([2, 0]))
    assert out2[0, 0] < 1.5 and out2[1, 0] > 2.0  # excluded source not among the nearest: ignored


def _poisson_counts(n_spots: int = 400, seed: int = 0):
    """Raw counts of four genes plus a large background: 'signal' follows a spatial factor at a
    high depth, 'shallow' the same factor at a low depth, 'flat' has one rate everywhere (pure
    counting noise), 'absent' is never detected."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    factor = np.exp(rng.normal(size=n_spots))
    rates = np.stack([200 * factor, 0.5 * factor, np.full(n_spots, 20.0), np.zeros(n_spots),
                      np.full(n_spots, 5000.0)], axis=1)
    x = rng.poisson(rates).astype(np.float32)
    return ad.AnnData(X=x, var=pd.DataFrame(index=["signal", "shallow", "flat", "absent",
                                                   "background"]))


def test_noise_ceiling_orders_genes_by_how_well_they_are_measured():
    from napari_trihrge.metrics import noise_ceiling

    adata = _poisson_counts()
    genes = ["signal", "shallow", "flat", "absent"]
    summary, ceiling = noise_ceiling(adata, genes)
    assert ceiling["signal"] > 0.95  # deep and structured: nearly perfectly measured
    assert 0.2 < ceiling["shallow"] < ceiling["signal"] - 0.2  # the same factor, few counts
    assert ceiling["flat"] < 0.35  # counting noise only (a small r may stay above 0)
    assert np.isnan(ceiling["absent"])  # does not vary: not scored, as in spot_scores
    assert summary["noise_ceiling_n_genes"] == 3
    expected = np.mean([ceiling["signal"], ceiling["shallow"], ceiling["flat"]])
    assert summary["noise_ceiling_pcc_mean"] == pytest.approx(expected)
    again, _ = noise_ceiling(adata, genes)  # fixed seed: one ceiling per sample
    assert again == summary
    other, _ = noise_ceiling(adata, genes, seed=5)
    assert other["noise_ceiling_pcc_mean"] != summary["noise_ceiling_pcc_mean"]
    sub, _ = noise_ceiling(adata, genes, spots=np.arange(100))
    assert sub["noise_ceiling_pcc_mean"] != summary["noise_ceiling_pcc_mean"]


def test_noise_ceiling_is_spearman_brown_of_the_split_halves():
    """Against a direct computation: split with the same generator, log-normalise each half over
    every gene, correlate, correct to full depth and take the root."""
    from napari_trihrge.metrics import NOISE_CEILING_SEED, noise_ceiling

    adata = _poisson_counts(seed=3)
    x = adata.X.astype(np.int64)
    # the same draw order as the function: the stored (non-zero) counts, row-major
    rows, cols = np.nonzero(x)
    half = np.zeros_like(x)
    half[rows, cols] = np.random.default_rng(NOISE_CEILING_SEED).binomial(x[rows, cols], 0.5)

    def log_norm(c):
        return np.log1p(c / c.sum(axis=1, keepdims=True) * 1e4)

    r = per_gene_pcc(log_norm(half)[:, :2], log_norm(x - half)[:, :2])
    expected = np.sqrt(2 * r / (1 + r))
    _, ceiling = noise_ceiling(adata, ["signal", "shallow"])
    np.testing.assert_allclose(ceiling.to_numpy(), expected, rtol=1e-6)


def test_noise_ceiling_needs_whole_counts_and_sits_beside_the_scores():
    from napari_trihrge.metrics import add_noise_ceiling, noise_ceiling

    adata = _poisson_counts()
    logged = adata.copy()
    logged.X = np.log1p(logged.X)
    summary, ceiling = noise_ceiling(logged, ["signal"])
    assert np.isnan(summary["noise_ceiling_pcc_mean"]) and "raw counts" in \
        summary["noise_ceiling_note"]
    truth = np.log1p(adata.X[:, :3] / adata.X.sum(axis=1, keepdims=True) * 1e4)
    pred = truth + np.random.default_rng(1).normal(size=truth.shape)
    scores, table = spot_scores(pred, truth, ["signal", "shallow", "flat"])
    add_noise_ceiling(scores, table, adata)
    assert scores["fraction_of_ceiling"] == pytest.approx(
        scores["pcc_mean"] / scores["noise_ceiling_pcc_mean"])
    assert table.loc["signal", "noise_ceiling"] > table.loc["flat", "noise_ceiling"]


def test_instance_scores_perfect_partial_and_split():
    from napari_trihrge.metrics import instance_scores

    truth = np.zeros((20, 20), dtype=int)
    truth[2:6, 2:6] = 1  # 16 px
    truth[10:14, 10:14] = 2
    perfect = instance_scores(truth, truth * 7)
    assert perfect["f1"] == perfect["pq"] == perfect["aji"] == 1.0
    pred = np.zeros_like(truth)
    pred[2:6, 2:5] = 1  # IoU 12/16 with truth 1
    pred[10:14, 10:12] = 2  # IoU 8/16 = 0.5 with truth 2: a match at >= 0.5
    pred[17:19, 17:19] = 3  # false positive, 4 px
    s = instance_scores(truth, pred)
    assert (s["n_matched"], s["n_true"], s["n_pred"]) == (2, 2, 3)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0
    assert s["sq"] == pytest.approx((0.75 + 0.5) / 2)
    assert s["pq"] == pytest.approx(s["f1"] * s["sq"])
    assert s["aji"] == pytest.approx((12 + 8) / (16 + 16 + 4))
    with pytest.raises(ValueError):
        instance_scores(truth, pred[:10])


def test_idw_interpolate_in_blocks_is_the_weighted_mean_of_the_neighbours():
    from napari_trihrge.neighbours import idw_weights

    rng = np.random.default_rng(3)
    src, dst = rng.uniform(0, 100, (40, 2)), rng.uniform(0, 100, (25, 2))
    vals = rng.gamma(1.0, 1.0, (40, 7))
    idx, w = idw_weights(src, dst, 6)
    expected = (w[:, :, None] * vals[idx]).sum(axis=1)
    np.testing.assert_allclose(idw_interpolate(src, vals, dst, 6, block=4), expected,
                               rtol=1e-5)
