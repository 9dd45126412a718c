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


def test_spot_scores_exclude_and_count_constant_genes():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 4))
    true[:, 3] = 1.0
    summary, table = spot_scores(true + 0.1 * rng.normal(size=true.shape), true, list("abcd"),
                                 baseline=np.zeros_like(true) + rng.normal(size=true.shape))
    assert summary["n_genes_constant_excluded"] == 1
    assert summary["pcc_mean"] > 0.9
    assert summary["baseline_pcc_mean"] < 0.5
    assert summary["mse"] == pytest.approx(0.01, rel=0.3)  # noise sd 0.1 on every gene
    assert list(table.columns[:3]) == ["pcc", "mse", "mae"]


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
