import json

import anndata as ad
import numpy as np
import pytest

from napari_trihrge._atomic import atomic_path
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io.outputs import read_run, run_sample_path, write_h5ad, write_json


def test_h5ad_uns_with_tuples_and_none_is_written(tmp_path):
    a = ad.AnnData(np.zeros((3, 2), np.float32))
    a.uns["trihrge"] = {"config": {"model": {"decoder_dims": (64, 64, 64)}, "hf": None}}
    write_h5ad(a, tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert list(back.uns["trihrge"]["config"]["model"]["decoder_dims"]) == [64, 64, 64]
    assert a.uns["trihrge"]["config"]["hf"] is None  # the caller's object is untouched


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


# ------------------------------------------------------------------------------------------
# run folders: temporary folder swapped in, completion marker, lock
# ------------------------------------------------------------------------------------------
def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_run_folder_appears_only_when_complete(tmp_path):
    from napari_trihrge.io.outputs import COMPLETE_MARKER, is_complete_run, run_folder

    out = tmp_path / "run"
    with run_folder(out) as stage:
        assert stage.parent == tmp_path and stage != out
        (stage / "summary.json").write_text("{}")
        assert not out.exists()  # nothing visible while the run writes
        assert (tmp_path / ".run.lock").exists()
    assert is_complete_run(out) and (out / "summary.json").exists()
    assert json.loads((out / COMPLETE_MARKER).read_text())["files"] == ["summary.json"]
    assert _leftovers(tmp_path, "run") == []  # no staging folder, no lock


def test_error_during_a_run_leaves_no_folder_and_keeps_the_old_run(tmp_path):
    from napari_trihrge.io.outputs import is_complete_run, run_folder

    out = tmp_path / "new"
    with pytest.raises(TrihrgeInputError, match="stride"), run_folder(out) as stage:
        (stage / "enhanced.h5ad").write_text("partial")
        raise TrihrgeInputError("bad stride", "fix it")
    assert not out.exists() and _leftovers(tmp_path, "new") == []
    old = tmp_path / "old"
    with run_folder(old) as stage:
        (stage / "summary.json").write_text('{"run": 1}')
    with pytest.raises(RuntimeError), run_folder(old, overwrite=True) as stage:
        (stage / "summary.json").write_text('{"run": 2}')
        raise RuntimeError("killed")
    assert json.loads((old / "summary.json").read_text()) == {"run": 1} and is_complete_run(old)


def test_overwrite_really_replaces(tmp_path):
    from napari_trihrge.io.outputs import run_folder

    out = tmp_path / "run"
    with run_folder(out) as stage:
        (stage / "maps.ome.zarr").mkdir()
        (stage / "summary.json").write_text('{"run": 1}')
    with pytest.raises(TrihrgeInputError, match="--overwrite"), run_folder(out):
        pass
    with run_folder(out, overwrite=True) as stage:
        (stage / "summary.json").write_text('{"run": 2}')
    assert sorted(p.name for p in out.iterdir()) == ["run_complete.json", "summary.json"]
    assert _leftovers(tmp_path, "run") == []


def test_a_second_run_into_the_same_folder_is_refused_while_one_is_active(tmp_path):
    from napari_trihrge.io.outputs import run_folder

    out = tmp_path / "run"
    with run_folder(out) as stage:
        (stage / "summary.json").write_text('{"run": 1}')
        with pytest.raises(TrihrgeInputError, match="another run .* is writing into"):
            with run_folder(out, overwrite=True):
                pass
    assert json.loads((out / "summary.json").read_text()) == {"run": 1}


def test_two_runs_started_at_once_do_not_both_succeed(tmp_path):
    """Two processes run into the same new folder at the same moment: one reports success,
    the other a clear refusal; the folder holds the winner's complete run.

    No clock decides the outcome: both start when both are ready, and whoever gets in holds the
    folder until the other has tried, so the second one always meets a run in progress."""
    import subprocess
    import sys
    import time

    out, sync = tmp_path / "run", tmp_path / "sync"
    sync.mkdir()
    script = (
        "import pathlib, sys, time\n"
        "from napari_trihrge.io.outputs import run_folder\n"
        "from napari_trihrge.errors import TrihrgeInputError\n"
        "name, other, sync = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])\n"
        "def wait_for(path):  # a safety net only: the other process writes it\n"
        "    for _ in range(120_000):\n"
        "        if path.exists(): return\n"
        "        time.sleep(0.001)\n"
        "(sync / f'ready-{name}').touch()\n"
        "wait_for(sync / 'go')\n"
        "try:\n"
        f"    with run_folder({str(out)!r}) as s:\n"
        "        (s / 'summary.json').write_text(name)\n"
        "        wait_for(sync / f'tried-{other}')\n"
        "    print('ok')\n"
        "except TrihrgeInputError as e:\n"
        "    print('refused', e)\n"
        "finally:\n"
        "    (sync / f'tried-{name}').touch()\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, name, other, str(sync)], text=True,
                              stdout=subprocess.PIPE) for name, other in (("a", "b"), ("b", "a"))]
    for proc, name in zip(procs, "ab", strict=True):  # both imported and waiting
        while not (sync / f"ready-{name}").exists():
            assert proc.poll() is None, f"process {name} ended before it was ready"
            time.sleep(0.01)
    (sync / "go").touch()
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["ok", "refused"], outs
    winner = "ab"[[o.split()[0] for o in outs].index("ok")]
    assert "another run" in outs[1 - "ab".index(winner)]  # the other met the run in progress
    assert (out / "summary.json").read_text() == winner


def test_a_killed_run_leaves_the_target_untouched_and_its_lock_is_taken_over(tmp_path):
    import subprocess
    import sys

    from napari_trihrge.io.outputs import is_complete_run, run_folder

    out = tmp_path / "run"
    with run_folder(out) as stage:
        (stage / "summary.json").write_text('{"run": 1}')
    script = ("import os, signal; from napari_trihrge.io.outputs import run_folder\n"
              f"with run_folder({str(out)!r}, overwrite=True) as s:\n"
              "    (s / 'summary.json').write_text('{\"run\": 2}')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", script], timeout=120).returncode == -9
    assert json.loads((out / "summary.json").read_text()) == {"run": 1} and is_complete_run(out)
    assert (tmp_path / ".run.lock").exists()  # left by the killed process
    with run_folder(out, overwrite=True) as stage:  # the dead process's lock is taken over
        (stage / "summary.json").write_text('{"run": 3}')
    assert json.loads((out / "summary.json").read_text()) == {"run": 3}
    assert _leftovers(tmp_path, "run") == []  # the killed run's staging folder is gone too


def test_readers_refuse_a_folder_without_the_completion_marker(tmp_path):
    from napari_trihrge.napari._reader import get_reader

    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "enhanced.h5ad").write_text("")
    with pytest.raises(TrihrgeInputError, match="not a finished run folder"):
        read_run(out)
    reader = get_reader(str(out))
    assert reader is not None
    with pytest.raises(TrihrgeInputError, match="not a finished run folder"):
        reader(str(out))
def test_enhance_trust_is_written_with_the_outputs(tmp_path):
    """enhanced.h5ad keeps the per-gene trust columns and uns record; the per-gene CSV is
    written only when the trust was measured."""
    from types import SimpleNamespace

    import pandas as pd

    from napari_trihrge.io.outputs import mark_complete, write_enhance
    from napari_trihrge.metrics import TRUST_COLUMNS

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
    mark_complete(tmp_path)
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


# ------------------------------------------------------------------------------------------
# an output is never an input, inside one, or around one
# ------------------------------------------------------------------------------------------
def test_outputs_never_inside_inputs(tmp_path):
    from napari_trihrge.io.outputs import check_outside_inputs, run_folder

    sample = tmp_path / "sample"
    (sample / "outs").mkdir(parents=True)
    (sample / "outs" / "counts.h5").write_text("x")
    a = ad.AnnData(np.zeros((2, 2), np.float32))
    a.uns["trihrge"] = {"source": str(sample / "outs")}
    for out, word in ((sample / "outs", "is the input"), (sample / "outs" / "run", "inside"),
                      (sample, "holds the input")):
        with pytest.raises(TrihrgeInputError, match=word):
            with run_folder(out, overwrite=True, inputs=a):
                raise AssertionError("nothing may be written")
    assert sorted(p.name for p in sample.rglob("*")) == ["counts.h5", "outs"]
    assert check_outside_inputs(tmp_path / "elsewhere", [a, None, str(tmp_path / "model")])
    with pytest.raises(TrihrgeInputError, match="inside the input"):  # a model folder
        check_outside_inputs(tmp_path / "model" / "x", type("M", (), {"path": tmp_path / "model"})())


# ------------------------------------------------------------------------------------------
# fault injection: a run killed (SIGKILL) while it writes leaves the earlier run whole
# ------------------------------------------------------------------------------------------
_RUN = '''
from pathlib import Path
from napari_trihrge.io import outputs
with outputs.run_folder(Path({out!r}), overwrite=True) as tmp:
    outputs.write_json(tmp / "summary.json", {{"run": 2}})
    (tmp / "big.bin").write_bytes(bytes(1000))
    outputs.mark_complete(tmp)
'''

RUN_KILLS = {
    "writing": "kill_at('napari_trihrge.io.outputs', 'mark_complete')\n",
    # between the two renames of the swap: the old folder moved aside, the new not yet in
    "swapping": "kill_at('os', 'replace', after=True, when=lambda a, b: '.old-' in str(b))\n",
}


@pytest.mark.parametrize("kill", sorted(RUN_KILLS))
def test_run_killed_while_writing_keeps_the_earlier_run(tmp_path, kill):
    from fault_injection import run_killed
    from napari_trihrge.io.outputs import is_complete_run, mark_complete, run_folder

    out = tmp_path / "run"
    with run_folder(out) as tmp:
        write_json(tmp / "summary.json", {"run": 1})
        mark_complete(tmp)
    run_killed(RUN_KILLS[kill] + _RUN.format(out=str(out)))
    if kill == "writing":  # the earlier run is untouched
        assert json.loads((out / "summary.json").read_text()) == {"run": 1}
    else:  # the earlier run waits beside the output; the next run puts it back first
        assert not out.exists() and list(tmp_path.glob(".run.old-*"))
    with pytest.raises(RuntimeError), run_folder(out, overwrite=True):
        raise RuntimeError("a run that fails")
    assert is_complete_run(out) and json.loads((out / "summary.json").read_text()) == {"run": 1}
    with run_folder(out, overwrite=True) as tmp:  # the stale lock of the killed run is taken
        write_json(tmp / "summary.json", {"run": 3})
        mark_complete(tmp)
    assert json.loads((out / "summary.json").read_text()) == {"run": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_the_sample_path_a_run_records(tmp_path):
    """A run's sample is read again from the path the run read it from; a her2st counts table
    recorded as the source (runs written before that was recorded) stands for its folder."""
    from sample_folders import make_st_section

    section = make_st_section(tmp_path / "C9", "C9")
    table = section / "C9.tsv.gz"
    assert run_sample_path({"source": str(table)}) == str(section)
    assert run_sample_path({"source": str(table), "read_from": str(section)}) == str(section)
    h5ad = tmp_path / "s.h5ad"
    assert run_sample_path({"source": "elsewhere.h5ad", "read_from": str(h5ad)}) == str(h5ad)
    lone = tmp_path / "counts.tsv.gz"  # a table outside a section folder: left as it is
    lone.write_text("")
    assert run_sample_path({"source": str(lone)}) == str(lone)
    assert run_sample_path({"source": None}) is None and run_sample_path({}) is None
