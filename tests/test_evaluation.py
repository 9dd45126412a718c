import numpy as np
import pytest

from napari_trihrge import evaluation
from napari_trihrge.tl import DenseMaps


@pytest.fixture
def small(synthetic):
    """The synthetic sample with 10 genes of each class (scoring stays fast)."""
    cls = synthetic.var["gene_class"]
    keep = np.concatenate([np.flatnonzero(cls.to_numpy() == c)[:10]
                           for c in ("marker", "density", "gradient", "noise")])
    return synthetic[:, keep].copy()


def _truth_maps(adata, with_std=None):
    """The truth itself as a 'prediction' on a 16 um grid over the sample's tissue."""
    truth = adata.uns["truth"]
    genes = list(adata.var_names)
    stride = 16.0
    shape = tuple(int(s * float(truth["stride_um"]) // stride) for s in truth["tissue_8um"].shape)
    origin = np.asarray(truth["origin_rc_um"], dtype=float)
    grid = DenseMaps(values=None, stride_um=stride, origin_rc_um=origin, gene_names=genes,
                     mask=np.ones(shape, bool))
    tissue = np.asarray(truth["tissue_8um"])[::2, ::2][: shape[0], : shape[1]]
    grid.mask = tissue
    grid.values = evaluation.truth_on_grid(adata, grid, genes)
    grid.std = with_std
    return grid


def test_eta2_known_values():
    groups = np.array([0, 0, 1, 1])
    vals = np.array([[1.0, 1.0, 3.0, 3.0],   # all variance between groups
                     [1.0, 3.0, 1.0, 3.0],   # none
                     [2.0, 2.0, 2.0, 2.0]])  # constant
    eta = evaluation._eta2(vals, groups)
    assert eta[0] == pytest.approx(1.0)
    assert eta[1] == pytest.approx(0.0)
    assert np.isnan(eta[2])


def test_truth_scores_perfectly_and_beats_interpolation(small):
    synthetic = small
    maps = _truth_maps(synthetic)
    rc = synthetic.obsm["spatial"][:, ::-1] * synthetic.uns["trihrge"]["um_per_px"]
    from napari_trihrge.pp import normalize_log1p

    y = normalize_log1p(synthetic)
    summary, table = evaluation.superres_scores(synthetic, maps, rc, y)
    assert summary["pcc_mean"] == pytest.approx(1.0, abs=1e-6)
    assert summary["ssim_mean"] == pytest.approx(1.0, abs=1e-6)
    by = summary["by_gene_class"]
    assert set(by) == {"marker", "density", "gradient", "noise"}
    for cls in ("marker", "density", "gradient"):
        assert by[cls]["pcc_mean"] > by[cls]["baseline_interp_pcc_mean"]
    assert "spread_error_pcc_mean" not in summary  # no spread given


def test_spread_error_correlation_detects_informative_spread(small):
    synthetic = small
    maps = _truth_maps(synthetic)
    rng = np.random.default_rng(0)
    err = rng.random(maps.values.shape).astype(np.float32)
    gene_range = np.ptp(maps.values[:, maps.mask], axis=1)[:, None, None]
    sign = rng.choice([-1.0, 1.0], maps.values.shape)
    noisy = DenseMaps(values=maps.values + 0.3 * sign * err * gene_range, stride_um=maps.stride_um,
                      origin_rc_um=maps.origin_rc_um, gene_names=maps.gene_names, mask=maps.mask,
                      std=err)
    rc = synthetic.obsm["spatial"][:, ::-1] * synthetic.uns["trihrge"]["um_per_px"]
    y = np.zeros((synthetic.n_obs, synthetic.n_vars), np.float32)
    good, _ = evaluation.superres_scores(synthetic, noisy, rc, y)
    noisy.std = rng.random(maps.values.shape).astype(np.float32)  # spread unrelated to error
    bad, _ = evaluation.superres_scores(synthetic, noisy, rc, y)
    assert good["spread_error_pcc_mean"] > 0.3
    assert abs(bad["spread_error_pcc_mean"]) < 0.05


def test_structure_scores_separate_noise_from_markers(small):
    synthetic = small
    maps = _truth_maps(synthetic)
    rc = synthetic.obsm["spatial"][:, ::-1] * synthetic.uns["trihrge"]["um_per_px"]
    from napari_trihrge.pp import normalize_log1p

    s = evaluation.structure_scores(synthetic, maps, rc, normalize_log1p(synthetic))
    assert s["marker"]["eta2_truth"] > 0.5
    assert s["noise"]["eta2_truth"] < 0.1
    assert s["marker"]["eta2_map"] == pytest.approx(s["marker"]["eta2_truth"])
    assert s["marker"]["rel_sd_map"] == pytest.approx(1.0)


def test_error_ratio_by_spread_on_known_values():
    from napari_trihrge.evaluation import _error_ratio_by_spread

    std = np.array([np.arange(20.0), np.arange(20.0), np.ones(20)])
    err = np.array([np.r_[np.full(10, 1.0), np.full(10, 3.0)],  # errors grow with the spread
                    np.r_[np.full(10, 2.0), np.full(10, 1.0)],  # errors shrink with it
                    np.arange(20.0)])  # constant spread: undefined
    ratio = _error_ratio_by_spread(std, err, fraction=0.1)
    np.testing.assert_allclose(ratio[:2], [3.0, 0.5])
    assert np.isnan(ratio[2])


def test_nan_stat_is_nanmean_and_nanmedian_without_the_all_nan_warning():
    import warnings

    from napari_trihrge.evaluation import _nan_stat

    values = [0.2, np.nan, 0.6, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _nan_stat(values, np.mean) == pytest.approx(np.nanmean(values))
        assert _nan_stat(values, np.median) == pytest.approx(np.nanmedian(values))
        assert np.isnan(_nan_stat([np.nan, np.nan], np.median))


def test_cell_scores_truth_as_prediction_beats_interpolated_spots():
    import napari_trihrge as th
    from napari_trihrge.geometry import xy_px_to_rc_um

    adata = th.datasets.synthetic_sample(seed=4, size_um=(600.0, 600.0), n_genes=8,
                                         sparse_fraction=0.0)
    expr, stride, origin = th.datasets.truth_map(adata)
    grid = DenseMaps(values=None, stride_um=stride, origin_rc_um=origin,
                     gene_names=list(adata.var_names), mask=np.ones(expr.shape[1:], bool))
    grid.values = evaluation.truth_on_grid(adata, grid, grid.gene_names)
    res = th.tl.cells(adata, maps=grid)  # the truth itself as the map
    truth = evaluation.truth_in_cells(adata, res.cell_labels, res.um_per_px, grid.gene_names)
    np.testing.assert_allclose(res.cells.X, truth, rtol=1e-5)
    rc = xy_px_to_rc_um(adata.obsm["spatial"], adata.uns["trihrge"]["um_per_px"])
    spots = th.datasets.truth_in_spots(adata, rc)
    summary, table = evaluation.cell_scores(adata, res.cells, res.cell_labels, res.um_per_px, rc,
                                 np.log1p(spots))
    assert summary["pcc_mean"] == pytest.approx(1.0)
    assert summary["baseline_knn6_pcc_mean"] < 0.95
    assert summary["n_cells_scored"] == res.cells.n_obs
    assert "gene_class" in table
