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
