"""The model folder's integrity record: a tampered, partial or damaged folder is refused with
what differs; a folder written before the record is read with a warning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io.model_folder import (
    DESCRIPTION_KIND,
    DESCRIPTION_VERSION,
    FOLDER_FORMAT_VERSION,
    INTEGRITY_RECORD,
    load_model_folder,
    save_model_folder,
)

GENES = [f"G{i}" for i in range(6)]


def _description() -> dict:
    return {"kind": DESCRIPTION_KIND, "description_version": DESCRIPTION_VERSION,
            "encoder": {"name": "stain-texture", "config_key": None, "embed_dim": 8},
            "features": {"mode": "dense", "windows_um": [112.0, 336.0],
                         "local_window_um": 24.0, "bag_windows_um": [24.0, 112.0, 336.0],
                         "standardisation": "per-section"},
            "genes": list(GENES), "neighbour_input": False, "image_input": True,
            "lattice": None, "training_sections": [], "trust": None}


@pytest.fixture
def folder(tmp_path):
    """A small model folder of two ensemble members with a gene table, saved by the package."""
    import torch

    from napari_trihrge.model.network import ModelConfig, TriHRGENet

    torch.manual_seed(0)
    cfg = ModelConfig(in_dim=8, n_genes=len(GENES), n_scales=3, hidden_dim=8, attention_dim=4,
                      decoder_dims=(8,))
    nets = [TriHRGENet(cfg).eval(), TriHRGENet(cfg).eval()]
    table = pd.DataFrame({"train_mean": np.arange(len(GENES), dtype=float),
                          "pcc": np.linspace(0.1, 0.6, len(GENES))},
                         index=pd.Index(GENES, name="gene"))
    return save_model_folder(tmp_path / "model", nets, _description(), table)


def _edit_model_json(folder, edit) -> None:
    meta = json.loads((folder / "model.json").read_text())
    edit(meta["extra"])
    (folder / "model.json").write_text(json.dumps(meta))


def test_saved_folder_has_a_record_and_loads(folder):
    record = json.loads((folder / INTEGRITY_RECORD).read_text())
    assert record["folder_format_version"] == FOLDER_FORMAT_VERSION
    assert {"model.pt", "model.json", "genes.csv", "member_1/model.pt"} <= set(record["files"])
    model = load_model_folder(folder)
    assert model.genes == GENES and len(model.nets) == 2
    assert model.gene_table["train_mean"].tolist() == list(range(len(GENES)))
    (folder / "summary.json").write_text("{}")  # written after the save by trihrge train
    load_model_folder(folder)


def test_permuted_gene_table_is_refused(folder):
    table = pd.read_csv(folder / "genes.csv", index_col=0)
    table.index = table.index[::-1]  # the names moved, the values stayed: genes swapped
    table.to_csv(folder / "genes.csv")
    with pytest.raises(TrihrgeInputError, match="genes.csv differs.*reordered") as err:
        load_model_folder(folder)
    assert "restore" in err.value.hint


def test_edited_windows_are_refused_naming_the_part(folder):
    _edit_model_json(folder, lambda d: d["features"].update(windows_um=[100.0, 300.0]))
    with pytest.raises(TrihrgeInputError, match="model.json's 'features' changed"):
        load_model_folder(folder)


@pytest.mark.parametrize("key", ["features", "genes", "encoder"])
def test_a_missing_key_is_refused_with_or_without_a_record(folder, key):
    _edit_model_json(folder, lambda d: d.pop(key))
    with pytest.raises(TrihrgeInputError, match=f"model.json's '{key}' changed"):
        load_model_folder(folder)
    (folder / INTEGRITY_RECORD).unlink()  # an older folder: no record, the schema still holds
    with pytest.warns(UserWarning, match="no integrity record"), \
            pytest.raises(TrihrgeInputError, match=f"lacks '{key}' in model.json"):
        load_model_folder(folder)


def test_binary_gene_table_and_missing_member_are_refused(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (folder / "genes.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TrihrgeInputError, match="genes.csv differs"):
        load_model_folder(folder)
    (folder / INTEGRITY_RECORD).unlink()
    with pytest.warns(UserWarning), pytest.raises(TrihrgeInputError,
                                                  match="not a readable gene table"):
        load_model_folder(folder)
    shutil.rmtree(copy / "member_1")
    with pytest.raises(TrihrgeInputError, match="member_1/model.pt missing"):
        load_model_folder(copy)


def test_edited_record_is_refused(folder):
    record = json.loads((folder / INTEGRITY_RECORD).read_text())
    record["genes"] = "0" * 64
    (folder / INTEGRITY_RECORD).write_text(json.dumps(record))
    with pytest.raises(TrihrgeInputError, match="gene list differs"):
        load_model_folder(folder)


def test_an_older_folder_is_read_with_a_warning_and_resaved_with_a_record(folder, tmp_path):
    (folder / INTEGRITY_RECORD).unlink()
    with pytest.warns(UserWarning, match="Re-save it"):
        model = load_model_folder(folder)
    again = model.save(tmp_path / "resaved")
    assert (again / INTEGRITY_RECORD).is_file()
    load_model_folder(again)


_RESAVE = '''
from napari_trihrge.io.model_folder import load_model_folder
model = load_model_folder({folder!r})
model.gene_table["train_mean"] += 100.0
model.save({folder!r}, overwrite=True)
'''
MODEL_KILLS = {
    "writing": "kill_at('napari_trihrge.model.network', 'save_model', 2)\n",  # the 2nd member
    "swapping": "kill_at('os', 'replace', after=True, when=lambda a, b: '.old-' in str(b))\n",
}


@pytest.mark.parametrize("kill", sorted(MODEL_KILLS))
def test_a_save_killed_midway_keeps_the_earlier_model(folder, kill):
    from fault_injection import run_killed

    run_killed(MODEL_KILLS[kill] + _RESAVE.format(folder=str(folder)))
    if kill == "writing":
        kept = load_model_folder(folder)
    else:  # killed between the two renames: the earlier folder, whole, waits beside it
        assert not folder.exists()
        (old,) = folder.parent.glob(".model.old-*")
        kept = load_model_folder(old)
    assert kept.gene_table["train_mean"].tolist() == list(range(len(GENES)))
    kept.gene_table["train_mean"] += 1.0
    kept.save(folder, overwrite=True)  # the next save works and leaves nothing beside
    assert load_model_folder(folder).gene_table["train_mean"].tolist() == [
        v + 1.0 for v in range(len(GENES))]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]


def test_a_gene_table_of_other_genes_is_refused(folder):
    """Without a record (an older folder) the table is still checked against the model's genes:
    trust figures of other genes would leave the prediction's trust columns empty."""
    (folder / INTEGRITY_RECORD).unlink()
    table = pd.read_csv(folder / "genes.csv", index_col=0)
    table.index = [f"OTHER{i}" for i in range(len(table))]
    table.to_csv(folder / "genes.csv")
    with pytest.warns(UserWarning), pytest.raises(
            TrihrgeInputError, match="does not list the model's 6 genes once each"):
        load_model_folder(folder)
