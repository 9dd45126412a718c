import numpy as np
import pytest
import scipy.sparse as sp

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import geometry, io
from napari_trihrge import tl as tasks
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.metrics import noise_ceiling, spot_scores
from napari_trihrge.pp import normalize_log1p
from napari_trihrge.tl.coarse_validation import (
    _lattice,
    coarse_sample,
    spots_with_a_neighbour,
    validate_coarse,
)
from sample_folders import make_st_section


def tiny(**kw):
    return tasks.RunConfig(n_top_genes=30, model=dict(TINY_MODEL), train=dict(TINY_TRAIN), **kw)


def _dense(x):
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def test_visium_pseudo_spots_are_7_spot_hexagons_of_summed_counts(synthetic):
    coarse, membership = coarse_sample(synthetic)
    info = coarse.uns["trihrge"]["coarse"]
    assert info["spots_per_pseudo_spot"] == 7 and info["lattice"] == "hex"
    assert coarse.obs["n_members"].max() == 7 and coarse.obs["n_members"].min() >= 4
    assert (coarse.obs["n_members"] == 7).sum() > coarse.n_obs / 2
    assert len(membership) + info["n_spots_left_out"] == synthetic.n_obs
    assert list(coarse.var_names) == list(synthetic.var_names)  # every gene
    rc, um_per_px, _ = tasks.sample_geometry(synthetic)
    for cid in coarse.obs_names[:5]:
        members = membership.index[membership == cid]
        assert len(members) == coarse.obs.loc[cid, "n_members"]
        rows = synthetic.obs_names.get_indexer(members)
        np.testing.assert_allclose(_dense(coarse[cid].layers["counts"]).ravel(),
                                   _dense(synthetic.X[rows]).sum(axis=0))
        centre = geometry.xy_px_to_rc_um(coarse[cid].obsm["spatial"], um_per_px)[0]
        np.testing.assert_allclose(centre, rc[rows].mean(axis=0))
        if len(members) == 7:  # a spot and its six neighbours, 100 um away
            d = np.linalg.norm(rc[rows] - centre, axis=1)
            assert np.sort(d)[0] == pytest.approx(0.0, abs=1e-6)
            np.testing.assert_allclose(np.sort(d)[1:], 100.0, rtol=1e-6)
    # the footprint: the disk around a full hexagon's member spots
    assert coarse.uns["trihrge"]["spot_diameter_um"] == pytest.approx(2 * 100.0 + 55.0)
    # a readable sample: raw counts in X, the input's pixel size
    assert coarse.uns["trihrge"]["um_per_px"] == um_per_px
    np.testing.assert_allclose(_dense(coarse.X), _dense(coarse.layers["counts"]))


def _st_sample(n_x: int = 12, n_y: int = 10):
    """A legacy ST-like sample: a square lattice of 200 um, array_x / array_y, raw counts."""
    import anndata as ad
    import pandas as pd

    xs, ys = (v.ravel() for v in np.meshgrid(np.arange(3, 3 + n_x), np.arange(5, 5 + n_y)))
    adata = ad.AnnData(X=np.random.default_rng(0).poisson(4, (len(xs), 10)).astype(np.float32),
                       obs=pd.DataFrame({"array_x": xs, "array_y": ys},
                                        index=[f"{x}x{y}" for x, y in zip(xs, ys, strict=True)]))
    adata.obsm["spatial"] = np.stack([xs, ys], axis=1) * 200.0 / 0.5  # 0.5 um/px
    adata.uns["trihrge"] = {"platform": "st", "um_per_px": 0.5, "spot_diameter_um": 100.0}
    return adata


def test_legacy_st_pseudo_spots_are_2x2_blocks():
    adata = _st_sample()
    coarse, membership = coarse_sample(adata)
    assert coarse.uns["trihrge"]["coarse"]["spots_per_pseudo_spot"] == 4
    assert set(coarse.obs["n_members"]) <= {3, 4}
    for cid in coarse.obs_names:
        members = adata.obs.loc[membership.index[membership == cid]]
        assert np.ptp(members["array_x"]) <= 1 and np.ptp(members["array_y"]) <= 1
    coarse3, _ = coarse_sample(adata, factor=3)
    assert coarse3.uns["trihrge"]["coarse"]["spots_per_pseudo_spot"] == 9
    assert coarse3.n_obs < coarse.n_obs


def test_bad_input_is_refused_before_any_work(synthetic, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("enhance must not start")

    monkeypatch.setattr("napari_trihrge.tl.coarse_validation.enhance", no_work)
    with pytest.raises(TrihrgeInputError, match="too few"):
        validate_coarse(synthetic[:15].copy(), config=tiny())
    with pytest.raises(TrihrgeInputError, match="at least 10 are needed"):
        validate_coarse(synthetic, factor=6, config=tiny())
    logged = synthetic.copy()
    logged.X = np.log1p(_dense(logged.X) / 7.0).astype(np.float32)
    with pytest.raises(TrihrgeInputError, match="raw counts"):
        validate_coarse(logged, config=tiny())
    with pytest.raises(TrihrgeInputError, match="stride"):
        validate_coarse(synthetic, stride_um=0, config=tiny())
    with pytest.warns(UserWarning, match="not selected"):  # the section's 4 spots off tissue
        small = io.read(make_st_section(tmp_path / "S2"))  # 8 x 6 spots: 12 blocks of 2 x 2
    with pytest.raises(TrihrgeInputError, match="pseudo-spots"):
        validate_coarse(small, factor=3, config=tiny())


def test_scattered_spots_say_the_section_is_subsampled(synthetic, monkeypatch):
    """A random subsample of a section's spots (as scanpy's 100-spot Visium test folder) has
    spots enough but few neighbours: the error says so, before any work."""
    monkeypatch.setattr("napari_trihrge.tl.coarse_validation.enhance",
                        lambda *a, **k: pytest.fail("enhance must not start"))
    keep = np.sort(np.argsort(np.random.default_rng(0).random(synthetic.n_obs))[:60])
    scattered = synthetic[keep].copy()
    kind, indices = _lattice(scattered, tasks.sample_geometry(scattered)[0])
    joined = spots_with_a_neighbour(indices, kind)
    assert kind == "hex" and joined * 2 < scattered.n_obs
    with pytest.raises(TrihrgeInputError, match=rf"scattered, only {joined} of the 60 .*"
                                                "not a subsample"):
        validate_coarse(scattered, config=tiny())
    # a whole section with too large a factor is told to use a smaller one
    with pytest.raises(TrihrgeInputError, match="smaller --factor"):
        validate_coarse(synthetic, factor=6, config=tiny())
    assert spots_with_a_neighbour(np.array([[0, 0], [1, 0], [5, 5]]), "hex") == 2
    assert spots_with_a_neighbour(np.array([[0, 0], [1, 1], [3, 3]]), "square") == 0


def test_validate_coarse_scores_the_map_at_the_real_spots(synthetic):
    res = validate_coarse(synthetic, stride_um=32.0, config=tiny(), annotation="domain")
    m, spots = res.metrics, res.spots
    genes = list(spots.var_names)
    assert genes == list(res.enhance.spots.var_names)  # enhance's genes, chosen on the coarse
    # one row per real spot kept, named as io.read names them, with its pseudo-spot
    assert set(spots.obs_names) <= set(synthetic.obs_names)
    assert m["n_spots_scored"] == spots.n_obs > 0.8 * synthetic.n_obs
    assert set(spots.obs["coarse_id"]) <= set(res.coarse.obs_names)
    # the measurement is log-normalised over every gene, as recovery does
    measured = normalize_log1p(synthetic[spots.obs_names], genes=genes)
    np.testing.assert_allclose(spots.layers["measured"], measured, rtol=1e-6)
    # the pseudo-spot baseline is the spot's own pseudo-spot value
    coarse_expr = res.enhance.spots
    rows = coarse_expr.obs_names.get_indexer(spots.obs["coarse_id"])
    np.testing.assert_allclose(spots.layers["pseudo_spot"], np.asarray(coarse_expr.X)[rows])
    # ... and without the spot's own counts: the other members' sum, log-normalised
    first = spots.obs_names[0]
    cid = spots.obs.loc[first, "coarse_id"]
    others = _dense(res.coarse[cid].layers["counts"]) - _dense(synthetic[first].X)
    assert others.min() >= 0
    expected_others = np.log1p(others / others.sum() * 1e4)[0, synthetic.var_names.get_indexer(
        genes)]
    np.testing.assert_allclose(spots.layers["pseudo_spot_others"][0], expected_others, rtol=1e-5)
    assert not np.allclose(spots.layers["pseudo_spot_others"], spots.layers["pseudo_spot"])
    # every score is the fair score of its layer on the same genes and spots
    expected, _ = spot_scores(np.asarray(spots.X), measured, genes,
                              baselines={n: spots.layers[n] for n in
                                         ("pseudo_spot", "pseudo_spot_others", "knn6", "knn12",
                                          "ridge_image")})
    for key in ("pcc_mean", "baseline_pseudo_spot_pcc_mean", "baseline_knn12_pcc_mean",
                "baseline_ridge_image_pcc_mean", "baseline_pseudo_spot_others_pcc_mean"):
        assert m[key] == pytest.approx(expected[key]), key
    near, _ = spot_scores(spots.layers["nearest_virtual"], measured, genes)
    assert m["nearest_virtual_pcc_mean"] == pytest.approx(near["pcc_mean"])
    assert m["baseline_knn_pcc_mean"] == max(m["baseline_knn6_pcc_mean"],
                                             m["baseline_knn12_pcc_mean"])
    assert m["baseline_simple_pcc_mean"] == max(m["baseline_knn_pcc_mean"],
                                                m["baseline_pseudo_spot_pcc_mean"])
    assert m["x_better_simple"] == pytest.approx(m["pcc_mean"] / m["baseline_simple_pcc_mean"])
    # the noise ceiling of the real spots, on the same genes
    ceiling, _ = noise_ceiling(synthetic, genes, spots=spots.obs_names)
    assert m["noise_ceiling_pcc_mean"] == pytest.approx(ceiling["noise_ceiling_pcc_mean"])
    assert m["pcc_mean"] < m["noise_ceiling_pcc_mean"]
    assert m["by_gene_class"]["all"]["map"] == pytest.approx(m["pcc_mean"])
    assert m["by_gene_class"]["all"]["n_genes"] == m["n_genes_scored"]
    assert "noise_ceiling" in res.per_gene and "pcc_nearest_virtual" in res.per_gene
    markers = m["by_gene_class"]["markers"]  # each domain's marker genes (annotation)
    assert 0 < markers["n_genes"] <= 5 * synthetic.obs["domain"].nunique()
    # the map is not the pseudo-spot value copied: it varies inside a pseudo-spot
    first = spots.obs["coarse_id"].iloc[0]
    inside = np.asarray(spots[spots.obs["coarse_id"] == first].X)
    assert np.ptp(inside, axis=0).max() > 0
    # recorded on the AnnData it was given
    assert synthetic.uns["trihrge_validate_coarse"]["metrics"]["pcc_mean"] == m["pcc_mean"]


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:.*not selected")  # her2st: spots off the tissue left out
# DLPFC: Space Ranger's spot diameter reads 27 % small against the lattice (the lattice is used)
@pytest.mark.filterwarnings("ignore:sample dlpfc_151673. the spot diameter")
def test_pseudo_spots_tile_the_shared_sections(dlpfc_dir, her2st_dir):
    """Real lattices: DLPFC's 7-spot hexagons from array_row / array_col, her2st's 2 x 2 blocks;
    every kept pseudo-spot is the sum of its members' counts."""
    for path, full, spacing_um in ((dlpfc_dir, 7, 100.0), (her2st_dir / "C2", 4, 200.0)):
        adata = io.read(path)
        coarse, membership = coarse_sample(adata)
        assert coarse.uns["trihrge"]["coarse"]["spots_per_pseudo_spot"] == full
        assert coarse.n_obs >= 10 and (coarse.obs["n_members"] == full).mean() > 0.5
        assert coarse.layers["counts"].sum() == pytest.approx(
            float(adata[membership.index].X.sum()), rel=1e-6)
        rc, _, _ = tasks.sample_geometry(adata)
        centres = tasks.sample_geometry(coarse)[0]
        rows = adata.obs_names.get_indexer(membership.index)
        reach = np.linalg.norm(rc[rows] - centres[coarse.obs_names.get_indexer(membership)],
                               axis=1)
        full_rows = coarse.obs["n_members"].reindex(membership).to_numpy() == full
        # members lie one lattice step (hexagon) or half a block diagonal (2 x 2) from the
        # centre; legacy ST positions stray from their lattice
        limit = spacing_um * (1.0 if full == 7 else np.sqrt(2) / 2)
        assert np.median(reach[full_rows & (reach > 0)]) == pytest.approx(limit, rel=0.05)
        assert coarse.uns["trihrge"]["spot_diameter_um"] == pytest.approx(
            2 * limit + adata.uns["trihrge"]["spot_diameter_um"], rel=0.1)


def test_gene_classes_find_each_labels_markers():
    from napari_trihrge.tl.coarse_validation import gene_classes

    rng = np.random.default_rng(0)
    truth = rng.poisson(0.05, (200, 30)).astype(float)  # sparse background genes
    truth[:, :12] += rng.poisson(5.0, (200, 12))  # well expressed genes
    labels = np.array(["a"] * 100 + ["b"] * 100, dtype=object)
    truth[:100, 20] += 9.0  # a marker of 'a'
    truth[100:, 21] += 9.0  # a marker of 'b'
    truth[:, 29] = 0.0  # never detected: not scored
    labels[:3] = None  # unlabelled spots are ignored
    classes = gene_classes(truth, labels)
    assert classes["all"].sum() == 29 and not classes["all"][29]
    assert classes["markers"][[20, 21]].all() and classes["markers"].sum() <= 10
    assert classes["sparse"][25] and not classes["sparse"][0]
    assert classes["top100"].sum() == 29  # fewer scored genes than 100
    assert "markers" not in gene_classes(truth)


def test_references_are_coarsened_like_the_section(synthetic):
    """Other sections join enhance's training as pseudo-spots of the same factor (no finer
    than the section itself); the section itself is refused as its own reference."""
    from napari_trihrge.datasets import synthetic_sample

    other = synthetic_sample(seed=9, n_genes=synthetic.n_vars)
    res = validate_coarse(synthetic, stride_um=64.0, config=tiny(marker_panel=None),
                          reference=[other])
    n_other_pseudo = coarse_sample(other, factor=2)[0].n_obs
    assert res.enhance.metrics["reference_spots"] == [n_other_pseudo] < [other.n_obs]
    assert res.metrics["n_spots_scored"] == res.spots.n_obs > 0
    with pytest.raises(TrihrgeInputError, match="section itself"):
        validate_coarse(synthetic, stride_um=64.0, config=tiny(), reference=[synthetic])
