import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.pp import gene_expression, normalize_log1p, prepare_expression, select_genes


def counts(n_spots=200, n_genes=60, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.gamma(1.0, 2.0, size=n_genes)
    x = rng.poisson(mean * rng.gamma(5, 0.2, size=(n_spots, 1)) * (1 + 4 * (rng.random((n_spots, n_genes)) < 0.1)))
    a = AnnData(X=sp.csr_matrix(x.astype(np.float32)))
    a.var_names = [f"G{i}" for i in range(n_genes)]
    a.obs_names = [f"s{i}" for i in range(n_spots)]
    a.obsm["spatial"] = rng.random((n_spots, 2)) * 100
    return a


def test_select_genes_count_and_extras():
    a = counts()
    genes = select_genes(a, n_top_genes=20, extra_genes=("G0",))
    assert len(genes) in (20, 21) and "G0" in genes
    assert len(set(genes)) == len(genes)


def test_extra_genes_missing_are_actionable():
    a = counts()
    with pytest.raises(TrihrgeInputError, match="none of the requested genes"):
        select_genes(a, n_top_genes=20, extra_genes=("ERBB2", "ESR1"))
    with pytest.raises(TrihrgeInputError, match="not in the data: ERBB2"):
        select_genes(a, n_top_genes=20, extra_genes=("G1", "ERBB2"))


def test_normalize_matches_scanpy():
    import scanpy as sc

    a = counts()
    ours = normalize_log1p(a)
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    np.testing.assert_allclose(ours, b.X.toarray(), rtol=1e-5, atol=1e-5)


def test_gene_expression_of_a_few_genes_equals_normalising_everything():
    """The viewer's per-gene path normalises only the genes asked for: the same numbers."""
    a = counts()
    genes = ["G5", "G0", "G42"]
    for x in (a.X, a.X.toarray()):
        b = AnnData(X=x, obs=a.obs, var=a.var)
        got = gene_expression(b, genes)
        np.testing.assert_array_equal(got.to_numpy(), normalize_log1p(b, genes=genes))
        assert list(got.columns) == genes and got.to_numpy().std() > 0.1


def test_prepare_expression_keeps_spatial_and_counts():
    a = counts()
    out = prepare_expression(a, n_top_genes=10)
    assert out.n_vars == 10
    assert out.obsm["spatial"].shape == (a.n_obs, 2)
    assert out.layers["counts"].shape == out.X.shape
    assert np.isfinite(out.X).all() and out.X.min() >= 0


def test_prepare_expression_leaves_recorded_results_behind():
    """A task's predictions recorded on the sample (a per-gene table in obsm) do not travel into
    the next task's expression and outputs; the coordinates do."""
    import pandas as pd

    a = counts()
    a.obsm["trihrge_recovery"] = pd.DataFrame(np.ones((a.n_obs, 3)), index=a.obs_names,
                                              columns=["G0", "G1", "G2"])
    out = prepare_expression(a, n_top_genes=10)
    assert set(out.obsm) == {"spatial"}


@pytest.mark.parametrize("bad", ["zeros", "negative", "empty"])
def test_bad_counts(bad):
    a = counts()
    if bad == "zeros":
        a.X = sp.csr_matrix(a.shape, dtype=np.float32)
    elif bad == "negative":
        a.X = a.X.toarray() - 1
    else:
        a = a[:0].copy()
    with pytest.raises(TrihrgeInputError):
        prepare_expression(a, n_top_genes=10)


def test_select_genes_on_a_small_sample_with_many_sparse_genes():
    """seurat_v3's loess fit is singular on this sample (40 spots, many sparse genes with
    nearly the same low mean) at scanpy's default span; the selection still succeeds."""
    from napari_trihrge.datasets import synthetic_sample

    adata = synthetic_sample(seed=1, size_um=(800.0, 800.0), n_genes=80)
    genes = select_genes(adata, n_top_genes=30)
    assert len(genes) == 30 and len(set(genes)) == 30
