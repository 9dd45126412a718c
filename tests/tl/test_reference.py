"""Other sections of a study as extra training data of recovery and enhance (``reference=``)."""

import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import tl
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io.model_folder import load_model_folder
from napari_trihrge.tl import _reference


def tiny(**kw):
    return tl.RunConfig(n_top_genes=40, model=dict(TINY_MODEL), train=dict(TINY_TRAIN), **kw)


@pytest.fixture(scope="module")
def _study():
    from napari_trihrge.datasets import synthetic_sample

    # three sections of one "study": the same genes, the same image-to-expression rules
    return [synthetic_sample(seed=s, size_um=(1200.0, 1200.0), n_genes=80) for s in (5, 6, 7)]


@pytest.fixture
def study(_study):
    return [a.copy() for a in _study]


def test_references_teach_the_image_parts_and_kNN_stays_within_the_section(study):
    section, *refs = study
    alone = tl.recovery(section, seed=1, config=tiny())
    both = tl.recovery(section, seed=1, config=tiny(), reference=refs)
    a, b = alone.metrics, both.metrics
    # the same hidden spots and genes; kNN, the section's own interpolation, is unchanged
    assert list(alone.predictions.obs_names) == list(both.predictions.obs_names)
    assert list(alone.predictions.var_names) == list(both.predictions.var_names)
    assert b["baseline_knn_pcc_mean"] == a["baseline_knn_pcc_mean"]
    np.testing.assert_array_equal(alone.predictions.layers["knn"], both.predictions.layers["knn"])
    # the image ridge head learns from three times the spots: it predicts the hidden spots better
    assert b["baseline_ridge_pcc_mean"] > a["baseline_ridge_pcc_mean"]
    assert b["reference_spots"] == [r.n_obs for r in refs]
    assert b["reference_weight"] is None


def test_the_hidden_spots_never_reach_training_with_references(study):
    """Shuffling the counts among the section's hidden spots leaves every prediction of a run
    with references as it was."""
    section, *refs = study
    hidden, _ = tl._shared._holdout_split(section.n_obs, 0.5, 1)
    shuffled = section.copy()
    x = np.asarray(shuffled.X.todense() if hasattr(shuffled.X, "todense") else shuffled.X)
    x[hidden] = x[np.random.default_rng(0).permutation(hidden)]
    shuffled.X = type(section.X)(x) if hasattr(section.X, "todense") else x
    a = tl.recovery(section, seed=1, config=tiny(), reference=refs)
    b = tl.recovery(shuffled, seed=1, config=tiny(), reference=refs)
    assert not np.allclose(a.predictions.layers["measured"], b.predictions.layers["measured"])
    np.testing.assert_allclose(a.predictions.X, b.predictions.X, rtol=1e-5, atol=1e-6)


def test_blend_weights_are_fit_on_the_sections_own_spots(study):
    """The per-gene blend is fit on the section's own out-of-fold spots only: its target mean
    is the mean of the section's training spots, not of the pooled spots."""
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl._shared import _fit_stacked

    rng = np.random.default_rng(0)
    n, genes = 40, 5
    feats = rng.normal(size=(n, 2, 3)).astype(np.float32)
    y = rng.random((n, genes)).astype(np.float32)
    rc_um = rng.random((n, 2)) * 1000
    ref = _reference.ReferenceData(features=rng.normal(size=(60, 2, 3)).astype(np.float32),
                                   targets=(5 + rng.random((60, genes))).astype(np.float32),
                                   neighbour=None, names=["other"], n_spots=[60])
    cfg = tiny(stacking=("knn6", "ridge"), neighbour_input=False)
    model = _fit_stacked(cfg, feats, y, rc_um, None, Progress(), reference=ref)
    np.testing.assert_allclose(model.blend.target_mean, y.mean(axis=0), rtol=1e-6)
    # ... while the ridge head was fit on both: its intercept sits between the two means
    assert np.all(model.ridge.model.intercept_ > y.mean(axis=0) + 1)


def test_reference_weight_caps_the_reference_spots():
    ref = _reference.ReferenceData(features=np.zeros((100, 1, 1), np.float32),
                                   targets=np.zeros((100, 2), np.float32), neighbour=None,
                                   names=["a"], n_spots=[100])
    assert len(ref.take(30, seed=0)) == 100  # no weight: every spot
    ref.weight = 2.0
    idx = ref.take(30, seed=0)
    assert len(idx) == 60 and len(np.unique(idx)) == 60
    ref.weight = 10.0
    assert len(ref.take(30, seed=0)) == 100
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(TrihrgeInputError, match="reference weight"):
            _reference.check_reference_weight(bad)


def test_the_section_itself_is_refused_as_its_own_reference(study):
    section = study[0]
    section.uns["trihrge"]["source"] = "/data/section_a"
    with pytest.raises(TrihrgeInputError, match="the section itself"):
        tl.recovery(section, config=tiny(), reference=[section])
    # a subset of it, read from the same source, would hold its hidden spots too
    part = section[: int(section.n_obs * 0.8)].copy()
    with pytest.raises(TrihrgeInputError, match="the section itself"):
        tl.enhance(section, config=tiny(), reference=part)


def test_spots_of_another_size_are_refused_and_another_platform_warned(study):
    section, ref, _ = study
    big = ref.copy()
    big.uns["trihrge"]["spot_diameter_um"] = 100.0
    with pytest.raises(TrihrgeInputError, match="cannot train one model"):
        tl.recovery(section, config=tiny(), reference=[big])
    other = ref.copy()
    other.uns["trihrge"]["platform"] = "generic"
    with pytest.warns(UserWarning, match="is generic, the section is visium"):
        _reference.check_references(section, [other])


def test_genes_a_reference_lacks_are_left_out_with_a_warning(study):
    section, ref, _ = study
    expr_genes = list(tl.recovery(section, seed=1, config=tiny(stacking=()),
                                  ).predictions.var_names)
    missing = expr_genes[:3]
    ref = ref[:, [g for g in ref.var_names if g not in missing]].copy()
    with pytest.warns(UserWarning, match="3 of the section's 40 selected genes"):
        res = tl.recovery(section, seed=1, config=tiny(stacking=()), reference=ref)
    assert list(res.predictions.var_names) == expr_genes[3:]
    with pytest.raises(TrihrgeInputError, match="measure only"):
        _reference.shared_genes(expr_genes, [ref[:, :5].copy()])


def test_enhance_learns_from_references(study):
    """With a dense map the reference spots join the spot-level loss (their sub-locations
    masked out of the aggregation loss)."""
    section, *refs = study
    res = tl.enhance(section, factor=2, stride_um=64.0, config=tiny(marker_panel=None),
                     reference=refs, reference_weight=1.0, trust=False)
    assert res.metrics["reference_sections"] == [r.uns["trihrge"]["sample"] for r in refs]
    assert res.metrics["reference_weight"] == 1.0
    assert res.virtual.n_vars == 40 and np.isfinite(res.virtual.X).all()
    inside = np.asarray(res.maps.values)[:, np.asarray(res.maps.mask)]
    assert inside.size and np.isfinite(inside).all()  # the map inside the tissue


@pytest.mark.parametrize("lever", [{"loss": "poisson"}, {"target_smoothing": 0.25}])
def test_references_with_a_count_loss_or_denoised_targets_are_refused(study, lever):
    """Their reference spots would lack raw counts / neighbours: refused before any work."""
    section, *refs = study
    with pytest.raises(TrihrgeInputError, match="cannot be combined yet"):
        tl.recovery(section, seed=1, config=tiny(**lever), reference=refs)


# --- a trained model folder as a reference ------------------------------------------------------


@pytest.fixture(scope="module")
def study_model(_study, tmp_path_factory):
    """An image-only model of the study's other two sections, saved as `trihrge train` does."""
    model = tl.train([a.copy() for a in _study[1:]], image_only=True, config=tiny()).model
    return model.save(tmp_path_factory.mktemp("models") / "others")


def test_a_trained_model_joins_the_blend_as_a_candidate(study, study_model):
    section = study[0]
    alone = tl.recovery(section.copy(), seed=1, config=tiny())
    res = tl.recovery(section, seed=1, config=tiny(), reference=[str(study_model)])
    m, a = res.metrics, alone.metrics
    # the run's own genes, spots and candidates are untouched: the model is one more candidate
    assert list(res.predictions.var_names) == list(alone.predictions.var_names)
    for key in ("baseline_knn_pcc_mean", "baseline_ridge_pcc_mean",
                "baseline_network_pcc_mean"):
        assert m[key] == a[key]
    genes = list(res.predictions.var_names)
    model_genes = set(load_model_folder(study_model).genes)
    shared = [g for g in genes if g in model_genes]
    assert m["reference_models"] == ["model"]
    assert m["reference_model_genes"] == [len(shared)] and 10 <= len(shared) < len(genes)
    assert np.isfinite(m["baseline_model_pcc_mean"]) and m["blend_weight_model_mean"] > 0
    assert m["pcc_mean"] != a["pcc_mean"]


def _candidate_and_prediction(section, model_path):
    """The model candidate at the section's spots and `predict` of the same model there."""
    from napari_trihrge.progress import Progress
    from napari_trihrge.tl._shared import _genes_stage, _Timer, sample_geometry

    expr = _genes_stage(section, tiny(), _Timer(), Progress())
    genes = list(expr.var_names)
    model = load_model_folder(model_path)
    [ref] = _reference.model_references([model], section[expr.obs_names], genes, tiny(),
                                        Progress())
    rc_um, _, _ = sample_geometry(expr)
    direct = tl.predict(str(model_path), section.copy())
    spots = direct.virtual[direct.virtual.obs["is_measured"].to_numpy()]
    return ref.predict(rc_um), spots[list(expr.obs_names)], genes, model


def test_the_model_candidate_is_the_models_own_prediction(study, study_model):
    """At the section's spots the candidate equals `predict` of the same model (one engine);
    a run gene the model lacks gets no part from it."""
    got, spots, genes, model = _candidate_and_prediction(study[0], study_model)
    for j, gene in enumerate(genes):
        if gene in model.genes:
            np.testing.assert_allclose(got[:, j], np.asarray(spots[:, gene].X).ravel(),
                                       rtol=1e-4, atol=1e-5)
        else:
            assert not got[:, j].any()


def test_a_constant_candidate_gets_no_blend_weight():
    from napari_trihrge.model.stacking import fit_gene_blend

    rng = np.random.default_rng(0)
    y = rng.random((50, 3))
    model = y + rng.normal(scale=0.1, size=y.shape)
    model[:, 1] = 0.0  # the model lacks gene 1
    blend = fit_gene_blend({"knn6": y + rng.normal(scale=0.5, size=y.shape), "model": model}, y)
    assert blend.weights[1, 1] == 0.0
    assert blend.weights[0, 1] > 0.5 and blend.weights[2, 1] > 0.5


def test_enhance_with_a_model_reference_materialises_its_maps(study, study_model):
    section = study[0]
    with pytest.warns(UserWarning, match="maps are materialised"):
        res = tl.enhance(section, factor=2, stride_um=64.0, config=tiny(marker_panel=None),
                         reference=[str(study_model)], trust=False, map_store=True)
    assert res.metrics["reference_models"] == ["model"]
    assert type(res.maps).__name__ == "DenseMaps"
    inside = np.asarray(res.maps.values)[:, np.asarray(res.maps.mask)]
    assert inside.size and np.isfinite(inside).all()
    assert "blend_weight_model" in res.virtual.var


def test_a_model_reference_adds_its_detail_to_the_residual_map(study, study_model):
    """map_method='residual' with a model reference: the model is one more image candidate whose
    detail (its prediction minus its own interpolation) is weighted in; the spots are kept."""
    section = study[0]
    with pytest.warns(UserWarning, match="maps are materialised"):
        res = tl.enhance(section, factor=2, stride_um=64.0,
                         config=tiny(marker_panel=None, map_method="residual"),
                         reference=[str(study_model)], trust=False, map_store=True)
    names = res.model.blend.names
    assert "model" in names and res.model.spots_level is not None
    assert res.model.blend.weights[:, names.index("model")].max() > 0
    v = res.virtual
    measured = v.obs["is_measured"].to_numpy()
    np.testing.assert_allclose(np.asarray(v.X)[measured], np.asarray(res.spots.X), atol=1e-4)


def test_a_model_reference_is_refused_where_it_cannot_serve(study, study_model, tmp_path):
    section = study[0]
    with pytest.raises(TrihrgeInputError, match="stacking is off"):
        tl.recovery(section, config=tiny(stacking=()), reference=[str(study_model)])
    with pytest.raises(TrihrgeInputError, match="cannot use a trained model"):
        tl.validate_coarse(section, reference=[str(study_model)], config=tiny())
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.json").write_text("{not json")
    with pytest.raises(TrihrgeInputError):
        tl.recovery(section, config=tiny(), reference=[str(damaged)])


def test_references_and_a_model_reference_with_neighbour_images(study, tmp_path):
    """Reference sections get the neighbour-image window from their own spots; a model folder
    trained with it adds it where it predicts, exactly as `predict` does."""
    section, *refs = study
    res = tl.recovery(section, seed=1, config=tiny(neighbour_images=4), reference=refs)
    alone = tl.recovery(section.copy(), seed=1, config=tiny())
    assert res.fits[0].model.config.n_scales == alone.fits[0].model.config.n_scales + 1
    assert res.metrics["reference_spots"] == [r.n_obs for r in refs]
    assert res.metrics["pcc_mean"] > res.metrics["baseline_knn_pcc_mean"]

    path = tl.train([r.copy() for r in refs], image_only=True,
                    config=tiny(neighbour_images=4)).model.save(tmp_path / "model")
    got, spots, genes, model = _candidate_and_prediction(section, path)
    assert model.nets[0].config.n_scales == 4
    shared = [j for j, g in enumerate(genes) if g in model.genes]
    np.testing.assert_allclose(got[:, shared], np.asarray(spots[:, [genes[j] for j in shared]].X),
                               rtol=1e-4, atol=1e-5)
