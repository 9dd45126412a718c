"""Results recorded on the AnnData (tl._store), and that they survive write_h5ad."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from napari_trihrge.tl._store import store_result


def _toy():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.poisson(2, (6, 4)).astype(np.float32),
                       obs=pd.DataFrame(index=[f"s{i}" for i in range(6)]),
                       var=pd.DataFrame(index=["A", "B", "C", "D"]))
    pred = ad.AnnData(X=np.arange(6, dtype=np.float32).reshape(2, 3),
                      obs=pd.DataFrame(index=["s1", "s4"]),
                      var=pd.DataFrame(index=["B", "C", "D"]))
    per_gene = pd.DataFrame({"pcc": [0.5, np.nan, 0.1], "pcc_baseline_knn": [0.2, 0.3, 0.4],
                             "pcc_gain": [0.3, np.nan, -0.3],
                             "beats_interpolation": [True, False, False]},
                            index=["B", "C", "D"])
    return adata, pred, per_gene


def test_store_result_writes_uns_var_obs_obsm(tmp_path):
    adata, pred, per_gene = _toy()
    key = store_result(adata, "recovery", metrics={"pcc_mean": 0.2, "ari": None,
                                                   "scores": [0.1, None, 0.3]},
                       config={"windows_um": (112.0, 336.0), "encoder": "stain-texture"},
                       per_gene=per_gene, predictions=pred)
    assert key == "trihrge_recovery"
    assert adata.uns[key]["metrics"]["pcc_mean"] == 0.2
    assert "ari" not in adata.uns[key]["metrics"]  # None cannot be written to h5ad
    assert adata.var.loc["B", "trihrge_recovery_pcc"] == 0.5
    assert np.isnan(adata.var.loc["A", "trihrge_recovery_pcc"])  # not modelled
    assert adata.var["trihrge_recovery_beats_interpolation"].isna().tolist() == [
        True, False, False, False]
    assert adata.obs["trihrge_recovery_scored"].tolist() == [False, True, False, False, True, False]
    table = adata.obsm[key]
    assert list(table.columns) == ["B", "C", "D"]
    np.testing.assert_array_equal(table.loc["s4"].to_numpy(), [3, 4, 5])
    assert table.loc["s0"].isna().all()

    path = tmp_path / "stored.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns[key]["config"]["encoder"] == "stain-texture"
    np.testing.assert_array_equal(back.obsm[key].loc["s1"].to_numpy(), [0, 1, 2])
    assert bool(back.var.loc["B", "trihrge_recovery_beats_interpolation"]) is True


def test_key_added_names_the_record():
    adata, pred, per_gene = _toy()
    assert store_result(adata, "enhance", metrics={}, config={}, per_gene=per_gene,
                        key_added="run2") == "run2"
    assert "run2_pcc_gain" in adata.var and "run2" not in adata.obsm
