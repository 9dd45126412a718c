import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import tl as tasks
from napari_trihrge.errors import Cancelled, TrihrgeInputError
from napari_trihrge.metrics import TRUST_COLUMNS, fair_pcc
from napari_trihrge.progress import Progress


def tiny(**kw):
    return tasks.RunConfig(n_top_genes=40, model=dict(TINY_MODEL), train=dict(TINY_TRAIN), **kw)


def _mean_fair_pcc(pred, measured) -> float:
    """Mean per-gene PCC over the genes that vary among the measured spots (numpy only); a gene
    predicted as a constant counts as 0."""
    pred, measured = np.asarray(pred, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    pccs = [0.0 if np.ptp(p) == 0 else np.corrcoef(p, t)[0, 1]
            for p, t in zip(pred.T, measured.T, strict=True) if np.ptp(t) > 0]
    return float(np.mean(pccs))


def test_recovery_scores_hidden_spots_only(synthetic):
    res = tasks.recovery(synthetic, holdout_fraction=0.5, seed=3, annotation="domain",
                         config=tiny())
    n = synthetic.n_obs
    assert res.predictions.n_obs == round(n * 0.5)
    m = res.metrics
    # the score is the mean per-gene PCC of the hidden spots (recomputed here by hand), with
    # fewer than 100 genes the top-100 score is the same; the image-informed model beats
    # interpolating the visible spots, and its clusters follow the tissue domains more closely
    assert m["pcc_mean"] == pytest.approx(
        _mean_fair_pcc(res.predictions.X, res.predictions.layers["measured"]), rel=1e-6)
    # (the same genes' PCCs, summed in another order: equal up to the last bits)
    assert m["pcc_top100"] == pytest.approx(m["pcc_mean"], rel=1e-12)
    assert m["pcc_mean"] > m["baseline_knn_pcc_mean"]
    assert m["ari"] > m["ari_baseline_knn"]
    assert m["mse"] > 0 and m["mae"] > 0
    assert m["n_genes_scored"] == 40 - m["n_genes_constant_truth"]
    # the predictions are exactly the hidden spots, and none of them was a training spot
    hidden, visible = tasks._shared._holdout_split(n, 0.5, 3)
    assert np.intersect1d(hidden, visible).size == 0 and len(hidden) + len(visible) == n
    assert list(res.predictions.obs_names) == list(synthetic.obs_names[hidden])
    assert (m["n_hidden"], m["n_visible"]) == (len(hidden), len(visible))
    assert res.predictions.layers["measured"].shape == res.predictions.shape
    assert res.per_gene["pcc"].dropna().is_monotonic_decreasing
    assert set(res.timings_s) >= {"genes", "features", "training", "prediction"}
    # the result is also recorded on the AnnData it was given (scanpy style)
    record = synthetic.uns["trihrge_recovery"]
    assert record["task"] == "recovery" and record["metrics"]["pcc_mean"] == m["pcc_mean"]
    scored = synthetic.obs["trihrge_recovery_scored"].to_numpy()
    assert scored.sum() == len(hidden) and scored[hidden].all()
    stored = synthetic.obsm["trihrge_recovery"].loc[res.predictions.obs_names]
    np.testing.assert_allclose(stored[list(res.predictions.var_names)].to_numpy(),
                               np.asarray(res.predictions.X))
    gene = res.per_gene["pcc"].dropna().index[0]
    assert synthetic.var.loc[gene, "trihrge_recovery_pcc"] == pytest.approx(
        res.per_gene.loc[gene, "pcc"])
    # the noise ceiling of the hidden spots sits beside the score, on the same genes
    from napari_trihrge.metrics import noise_ceiling

    ceiling, per_gene = noise_ceiling(synthetic, list(res.predictions.var_names),
                                      spots=synthetic.obs_names[hidden])
    assert m["noise_ceiling_pcc_mean"] == pytest.approx(ceiling["noise_ceiling_pcc_mean"])
    assert m["noise_ceiling_n_genes"] == m["n_genes_scored"]
    assert m["fraction_of_ceiling"] == pytest.approx(m["pcc_mean"] / m["noise_ceiling_pcc_mean"])
    assert m["pcc_mean"] < m["noise_ceiling_pcc_mean"]
    np.testing.assert_allclose(res.per_gene["noise_ceiling"].to_numpy(),
                               per_gene.reindex(res.per_gene.index).to_numpy())


def test_recovery_never_sees_the_hidden_expression(synthetic):
    """Shuffling the counts among the hidden spots (gene totals, detection and so the gene
    selection unchanged) leaves every prediction as it was: nothing of the hidden spots'
    expression reaches training or prediction. Equal predictions also show the run is
    reproducible."""
    hidden, _ = tasks._shared._holdout_split(synthetic.n_obs, 0.5, 1)
    shuffled = synthetic.copy()
    x = shuffled.X.toarray() if hasattr(shuffled.X, "toarray") else np.array(shuffled.X)
    x[hidden] = x[np.random.default_rng(0).permutation(hidden)]
    shuffled.X = type(synthetic.X)(x) if hasattr(synthetic.X, "toarray") else x
    a = tasks.recovery(synthetic, seed=1, config=tiny())
    b = tasks.recovery(shuffled, seed=1, config=tiny())
    assert list(a.predictions.var_names) == list(b.predictions.var_names)
    # the shuffle did change what is measured at the hidden spots ...
    assert not np.allclose(a.predictions.layers["measured"], b.predictions.layers["measured"])
    # ... but not a single prediction
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
    # the map averaged over each measured spot follows the measured values (measured: 0.75)
    assert res.metrics["consistency"]["pcc_mean"] > 0.5


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


def _check_trust_columns(var, per_gene):
    for col in TRUST_COLUMNS:
        assert col in var, col
    scored = np.isfinite(var["pcc"].to_numpy())
    assert scored.sum() > 0
    np.testing.assert_allclose(var["pcc_gain"][scored],
                               (var["pcc"] - var["pcc_baseline_knn"])[scored])
    assert var["beats_interpolation"].dtype == bool
    assert (var["beats_interpolation"].to_numpy() == (var["pcc_gain"].to_numpy() > 0)).all()
    assert not var["beats_interpolation"][~scored].any()  # unscored genes are never trusted
    assert per_gene.loc[var.index, "pcc_gain"].equals(var["pcc_gain"])


def test_recovery_with_sparse_genes_reports_the_fair_score_and_trust(synthetic):
    """All genes of the synthetic sample, the sparse ones included: every gene that varies
    among the hidden spots is scored (a constant prediction counting as 0), the constant
    predictions are counted, and the per-gene trust columns come with the predictions."""
    res = tasks.recovery(synthetic, seed=2, config=tasks.RunConfig(
        n_top_genes=synthetic.n_vars, model=dict(TINY_MODEL), train=dict(TINY_TRAIN)))
    m, pred = res.metrics, res.predictions
    measured = pred.layers["measured"]
    varies = np.ptp(measured, axis=0) > 0
    sparse = (pred.var_names.to_series().map(synthetic.var["gene_class"]) == "sparse").to_numpy()
    assert sparse.sum() > 100 and (varies & sparse).sum() > 80  # sparse genes are scored
    assert m["n_genes_scored"] == varies.sum()
    constant = varies & (np.ptp(np.asarray(pred.X), axis=0) <= 0)
    assert m["n_genes_constant_prediction"] == constant.sum()
    assert m["pcc_mean"] == pytest.approx(np.nanmean(fair_pcc(pred.X, measured)[varies]))
    knn = pred.layers["knn"]
    assert m["baseline_knn_pcc_mean"] == pytest.approx(np.mean(fair_pcc(knn, measured)[varies]))
    assert m["baseline_knn_pcc_mean"] == max(m["baseline_knn6_pcc_mean"],
                                             m["baseline_knn12_pcc_mean"])
    _check_trust_columns(pred.var, res.per_gene)
    assert m["n_genes_beating_interpolation"] == pred.var["beats_interpolation"].sum()
    trust = pred.uns["trihrge"]["trust"]
    assert trust["heldout_fraction"] == 0.5 and trust["n_hidden"] == pred.n_obs
    assert trust["baseline_knn_k"] in tasks.BASELINE_KS


def test_enhance_measures_per_gene_trust_on_a_held_out_split(synthetic):
    res = tasks.enhance(synthetic, factor=2, config=tiny())
    var = res.virtual.var
    _check_trust_columns(var, res.trust)
    # the per-gene trust is also recorded on the input AnnData
    assert synthetic.uns["trihrge_enhance"]["task"] == "enhance"
    np.testing.assert_allclose(
        synthetic.var.loc[res.trust.index, "trihrge_enhance_pcc_gain"].to_numpy(float),
        res.trust["pcc_gain"].to_numpy(float))
    trust = res.virtual.uns["trihrge"]["trust"]
    n_hidden = round(synthetic.n_obs * tasks.TRUST_HOLDOUT_FRACTION)
    assert trust["n_hidden"] == n_hidden and trust["n_visible"] == synthetic.n_obs - n_hidden
    assert "kNN" in trust["baseline"] and "model" in trust
    assert res.metrics["trust"]["n_genes_beating_interpolation"] == var["beats_interpolation"].sum()
    assert "trust" in res.timings_s
    # the noise ceiling of the held-out spots sits beside the held-out score
    t = res.metrics["trust"]
    assert t["pcc_mean"] < t["noise_ceiling_pcc_mean"] <= 1.0 and "noise_ceiling" in res.trust
    assert t["fraction_of_ceiling"] == pytest.approx(t["pcc_mean"] / t["noise_ceiling_pcc_mean"])
    # the trust model is not among the models the run saves (the final blend: one network per fold)
    assert len(res.fits) == res.config["stacking_folds"]
    # the trust columns describe the blend; its candidates were scored on the same genes
    assert {"pcc_ridge", "pcc_network"} <= set(res.trust.columns)
    for name in tasks.STACKING_CANDIDATES:
        assert (var[f"blend_weight_{name}"] >= 0).all()
    alone = tasks.enhance(synthetic, factor=2, config=tiny(stacking=()), trust=False)
    assert len(alone.fits) == 1 and "blend_weight_network" not in alone.virtual.var


def test_enhance_blended_map_is_not_worse_than_interpolation_against_the_truth(synthetic):
    """The dense map is recovery's per-gene blend at every pixel: against the synthetic
    sample's truth it is no worse than the measured spots interpolated onto the same pixels,
    over all genes, in every gene class (the image-free gradient genes included, where the
    network alone loses), and per gene within 0.05. The network alone with these tiny settings
    fails this (its sparse and gradient genes fall below interpolation)."""
    from napari_trihrge.evaluation import superres_scores

    res = tasks.enhance(synthetic, factor=2, stride_um=32.0,
                        config=tiny(stacking_folds=3, map_method="blend"), trust=False)
    v = res.virtual
    # measured spots stay marked, and there kNN returns the measurement itself
    assert v.obs["is_measured"].sum() == synthetic.n_obs
    assert (v.obs["parent"][v.obs["is_measured"]].to_numpy() == res.spots.obs_names).all()
    rc_um = np.asarray(res.spots.obsm["spatial"], dtype=float)[:, ::-1] * float(
        res.spots.uns["trihrge"]["um_per_px"])
    summary, table = superres_scores(synthetic, res.maps, rc_um, np.asarray(res.spots.X))
    assert summary["pcc_mean"] >= summary["baseline_interp_pcc_mean"]
    for cls, s in summary["by_gene_class"].items():
        assert s["pcc_mean"] >= s["baseline_interp_pcc_mean"] - 0.03, cls
    assert (table["pcc"] >= table["pcc_baseline_interp"] - 0.05).all()
    # the spread of the blend is the fold networks' spread times each gene's network weight
    assert res.maps.std is not None
    inside = np.asarray(res.maps.std)[:, res.maps.mask]
    assert np.isfinite(inside).all() and (inside >= 0).all()


def test_enhance_residual_map_keeps_the_spots_and_adds_the_image_detail(synthetic):
    """map_method='residual': interpolation of the measured spots plus the image candidates'
    detail. At a measured spot the virtual spot is the measurement; between the spots the map
    is not interpolation alone, and against the synthetic truth it is no worse than it."""
    from napari_trihrge.evaluation import superres_scores

    res = tasks.enhance(synthetic, factor=2, stride_um=32.0,
                        config=tiny(stacking_folds=3, map_method="residual"), trust=False)
    v = res.virtual
    measured = v.obs["is_measured"].to_numpy()
    np.testing.assert_allclose(np.asarray(v.X)[measured], np.asarray(res.spots.X), atol=1e-4)
    weights = res.model.blend.weights  # weight 1 on the base kNN, the detail weights on the rest
    detail = [c for c, n in enumerate(res.model.blend.names) if not n.startswith("knn")]
    assert weights[:, detail].max() > 0
    rc_um = np.asarray(res.spots.obsm["spatial"], dtype=float)[:, ::-1] * float(
        res.spots.uns["trihrge"]["um_per_px"])
    summary, _ = superres_scores(synthetic, res.maps, rc_um, np.asarray(res.spots.X))
    assert summary["pcc_mean"] > summary["baseline_interp_pcc_mean"]
    with pytest.raises(TrihrgeInputError, match="map method"):
        tasks.enhance(synthetic, factor=2, config=tiny(map_method="kriging"), trust=False)


def test_enhance_without_trust(synthetic):
    res = tasks.enhance(synthetic, factor=2, config=tiny(), trust=False)
    assert res.trust is None and "trust" not in res.metrics and "trust" not in res.timings_s
    assert not set(TRUST_COLUMNS) & set(res.virtual.var.columns)
    assert res.virtual.uns["trihrge"]["trust"]["measured"] is False


def test_enhance_trust_needs_enough_spots(synthetic):
    with pytest.raises(TrihrgeInputError, match="--no-trust"):  # 9 spots left to train on
        tasks.enhance(synthetic[:22].copy(), factor=2, config=tiny(), trust_holdout_fraction=0.6)
    with pytest.raises(TrihrgeInputError, match="12 spots; training needs at least 20"):
        tasks.enhance(synthetic[:12].copy(), factor=2, config=tiny(), trust=False)


def test_recovery_blend_scores_its_candidates_on_the_same_genes(synthetic):
    res = tasks.recovery(synthetic, seed=2, config=tiny(stacking_folds=3))
    m = res.metrics
    for name in ("knn6", "knn12", "ridge", "network"):
        assert m[f"blend_weight_{name}_mean"] >= 0
    # weighted on out-of-fold predictions, the blend is about as good as its best candidate
    # (measured: blend 0.63, ridge 0.62, kNN 0.37, network 0.37); 40 genes: top 100 = all
    best = max(m[f"baseline_{name}_pcc_mean"] for name in ("knn", "ridge", "network"))
    assert m["pcc_mean"] > best - 0.05
    assert m["pcc_top100"] == pytest.approx(m["pcc_mean"], rel=1e-12)  # summed in another order
    pred = res.predictions
    varies = np.ptp(np.asarray(pred.layers["measured"]), axis=0) > 0
    assert m["n_genes_constant_prediction"] == int(
        (np.ptp(np.asarray(pred.X), axis=0)[varies] == 0).sum())
    # the blend is scored on the very spots and genes its candidates are
    assert m["baseline_knn_pcc_mean"] == max(m["baseline_knn6_pcc_mean"],
                                             m["baseline_knn12_pcc_mean"])
    assert len(res.fits) == 3  # one network per fold
    alone = tasks.recovery(synthetic, seed=2, config=tiny(stacking=()))
    assert len(alone.fits) == 1 and "blend_weight_ridge_mean" not in alone.metrics


def test_unknown_stacking_candidate(synthetic):
    with pytest.raises(TrihrgeInputError, match="stacking"):
        tasks.recovery(synthetic, config=tiny(stacking=("knn6", "lasso")))


def test_one_holdout_split_with_one_edge_rule():
    """recovery, enhance's trust estimate and train's per-section hold-out share one split: at
    least one spot hidden and MIN_TRAINING_SPOTS left; train's optional hold-out hides nothing
    where that cannot be (or with fraction 0), the others refuse."""
    split = tasks._shared._holdout_split
    least = tasks._shared.MIN_TRAINING_SPOTS
    hidden, visible = split(100, 0.1, 7)
    assert len(hidden) == 10 and len(visible) == 90
    assert np.array_equal(np.sort(np.concatenate([hidden, visible])), np.arange(100))
    assert np.array_equal(split(100, 0.1, 7, optional=True)[0], hidden)  # same draw
    for n, fraction in ((least, 0.5), (100, 0.001)):
        with pytest.raises(TrihrgeInputError, match="too few"):
            split(n, fraction, 0)
        none, every = split(n, fraction, 0, optional=True)
        assert len(none) == 0 and np.array_equal(every, np.arange(n))
    assert len(split(50, 0.0, 0, optional=True)[0]) == 0
    with pytest.raises(TrihrgeInputError, match="between 0 and 1"):
        split(50, 0.0, 0)
