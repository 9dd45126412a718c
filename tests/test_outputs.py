import json

import anndata as ad
import numpy as np
import pytest

from napari_trihrge._atomic import atomic_path
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.outputs import prepare_out_dir, read_run, write_h5ad, write_json


def test_h5ad_uns_with_tuples_and_none_is_written(tmp_path):
    a = ad.AnnData(np.zeros((3, 2), np.float32))
    a.uns["trihrge"] = {"config": {"model": {"decoder_dims": (64, 64, 64)}, "hf": None}}
    write_h5ad(a, tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert list(back.uns["trihrge"]["config"]["model"]["decoder_dims"]) == [64, 64, 64]
    assert a.uns["trihrge"]["config"]["hf"] is None  # the caller's object is untouched


def test_out_dir_is_never_overwritten_unasked(tmp_path):
    out = tmp_path / "run"
    prepare_out_dir(out)
    (out / "summary.json").write_text("{}")
    with pytest.raises(TrihrgeInputError, match="--overwrite"):
        prepare_out_dir(out)
    prepare_out_dir(out, overwrite=True)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_json_nan_becomes_null(tmp_path):
    write_json(tmp_path / "s.json", {"pcc": float("nan"), "arr": np.arange(2)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"pcc": None, "arr": [0, 1]}


def test_read_run_needs_a_run_folder(tmp_path):
    with pytest.raises(TrihrgeInputError, match="not a napari-trihrge run folder"):
        read_run(tmp_path)


def test_enhance_trust_is_written_with_the_outputs(tmp_path):
    """enhanced.h5ad keeps the per-gene trust columns and uns record; the per-gene CSV is
    written only when the trust was measured."""
    from types import SimpleNamespace

    import pandas as pd

    from napari_trihrge.metrics import TRUST_COLUMNS
    from napari_trihrge.outputs import write_enhance

    genes = ["A", "B", "C"]
    table = pd.DataFrame({"pcc": [0.5, 0.1, np.nan], "pcc_baseline_knn": [0.3, 0.2, np.nan]},
                         index=pd.Index(genes, name="gene"))
    table["pcc_gain"] = table["pcc"] - table["pcc_baseline_knn"]
    table["beats_interpolation"] = (table["pcc_gain"] > 0).to_numpy(dtype=bool)
    virtual = ad.AnnData(np.ones((4, 3), np.float32), var=pd.DataFrame(index=genes))
    for col in TRUST_COLUMNS:
        virtual.var[col] = table[col].to_numpy()
    virtual.uns["trihrge"] = {"trust": {"heldout_fraction": 0.25, "n_hidden": 10, "model": "x"}}
    (tmp_path / "summary.json").write_text("{}")
    files = write_enhance(tmp_path, SimpleNamespace(virtual=virtual, maps=None, trust=table))
    assert files["per_gene"] == "enhance_genes.csv"
    back = read_run(tmp_path)["enhanced"]
    assert list(back.var["beats_interpolation"]) == [True, False, False]
    assert back.uns["trihrge"]["trust"]["n_hidden"] == 10
    csv = pd.read_csv(tmp_path / "enhance_genes.csv", index_col=0)
    assert list(csv.columns) == list(TRUST_COLUMNS)
    other = tmp_path / "no_trust"
    other.mkdir()
    assert "per_gene" not in write_enhance(other, SimpleNamespace(virtual=virtual, maps=None,
                                                                   trust=None))
    assert not (other / "enhance_genes.csv").exists()
