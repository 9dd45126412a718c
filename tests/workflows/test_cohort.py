"""Cohort runs on a dask.distributed LocalCluster (2 worker processes): every sample is done,
a broken one is retried and reported (never dropped), and a rerun skips finished samples."""

from __future__ import annotations

import json

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from conftest import TINY_RUN  # noqa: E402
from napari_trihrge.errors import TrihrgeInputError  # noqa: E402
from napari_trihrge.workflows.cohort import (  # noqa: E402
    DONE_MARKER,
    _worker_device,
    run_cohort,
    sample_folder_name,
)

#: the tiny run on its 30 variable genes alone (no marker panel), so the summaries count 30
TINY_VARIABLE_GENES = {**TINY_RUN, "marker_panel": None}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io.outputs import write_h5ad

    folder = tmp_path_factory.mktemp("cohort_in")
    paths = []
    for seed in (1, 2, 3):
        # 80 genes: enough (>= 30) detected in 3 spots or more with the sparse genes
        adata = synthetic_sample(seed=seed, size_um=(800.0, 800.0), n_genes=80)
        paths.append(write_h5ad(adata, folder / f"sample_{seed}.h5ad"))
    broken = folder / "broken.h5ad"
    broken.write_bytes(b"this is not an HDF5 file")
    return [str(p) for p in paths], str(broken)


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None)
    client = Client(cl)
    yield cl, client
    client.close()
    # a worker's own close gives its process 5 s to end, too short on a busy machine (then a
    # TimeoutError from tornado at teardown): close the workers with more time, then the cluster
    for nanny in list(cl.workers.values()):
        cl.sync(nanny.close, timeout=120)
    cl.close(timeout=120)


def _attempts(scheduler, name: str) -> int:
    """How many times the scheduler started a task of this sample (first run + retries)."""
    return sum(1 for t in scheduler.transition_log
               if str(t[0]).startswith(f"trihrge-{name}-") and t[1:3] == ("waiting", "processing"))


@pytest.mark.slow
def test_cohort_runs_retries_reports_and_skips(samples, cluster, tmp_path):
    good, broken = samples
    cl, client = cluster
    out = tmp_path / "cohort"
    report = run_cohort([*good, broken], out, task="enhance", retries=1, config_kwargs=TINY_VARIABLE_GENES,
                        task_kwargs={"factor": 2}, client=client)
    assert list(report["sample"]) == ["sample_1", "sample_2", "sample_3", "broken"]
    status = dict(zip(report["sample"], report["status"], strict=True))
    assert status == {"sample_1": "done", "sample_2": "done", "sample_3": "done",
                      "broken": "failed"}
    failed = report.set_index("sample").loc["broken"]
    assert "broken.h5ad" in failed["error"] and "\n" not in failed["error"]
    assert _attempts(cl.scheduler, "broken") == 2  # first try + 1 retry
    for name in ("sample_1", "sample_2", "sample_3"):
        assert (out / name / DONE_MARKER).exists()  # the completion marker, written last
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["n_genes"] == 30 and summary["device"] == "cpu"
        assert (out / name / "enhanced.h5ad").exists()
    assert not (out / "broken").exists()  # nothing half-written
    on_disk = pd.read_csv(out / "cohort_report.csv")
    assert list(on_disk["status"]) == ["done", "done", "done", "failed"]
    # enhance rows carry the held-out scores of each run's internal trust split
    done = on_disk["status"] == "done"
    for col in ("pcc_mean", "baseline_knn_pcc_mean", "n_genes_constant_prediction",
                "n_genes_beating_interpolation"):
        assert on_disk.loc[done, col].notna().all(), col

    # rerun: finished samples are skipped without a cluster, the broken one is tried again
    mtimes = {n: (out / n / DONE_MARKER).stat().st_mtime_ns for n in ("sample_1", "sample_2")}
    again = run_cohort(good[:2], out, config_kwargs=TINY_VARIABLE_GENES, client=None)
    assert list(again["status"]) == ["skipped", "skipped"]
    assert {n: (out / n / DONE_MARKER).stat().st_mtime_ns for n in mtimes} == mtimes
    retried = run_cohort([good[0], broken], out, retries=0, config_kwargs=TINY_VARIABLE_GENES, client=client)
    assert list(retried["status"]) == ["skipped", "failed"]


@pytest.mark.slow
def test_interrupted_sample_folder_is_redone(samples, cluster, tmp_path):
    good, _ = samples
    _, client = cluster
    out = tmp_path / "cohort"
    partial = out / "sample_1"
    partial.mkdir(parents=True)
    (partial / "leftover.txt").write_text("from an interrupted run")
    report = run_cohort([good[0]], out, task="recovery", config_kwargs=TINY_VARIABLE_GENES, client=client)
    assert list(report["status"]) == ["done"]
    assert not (partial / "leftover.txt").exists() and (partial / DONE_MARKER).exists()
    for col in ("pcc_mean", "baseline_knn_pcc_mean", "pcc_top100", "baseline_knn_pcc_top100",
                "n_genes_constant_prediction", "n_genes_beating_interpolation"):
        assert report[col].notna().all(), col


def test_duplicate_names_and_unknown_task_are_input_errors(samples, tmp_path):
    good, _ = samples
    with pytest.raises(TrihrgeInputError, match="same output folder"):
        run_cohort([good[0], good[0]], tmp_path / "c")
    with pytest.raises(TrihrgeInputError, match="task"):
        run_cohort([good[0]], tmp_path / "c", task="denoise")


def test_sample_folder_names():
    assert sample_folder_name("/data/a b/s1.h5ad") == "s1"
    assert sample_folder_name("/data/151673/outs") == "151673"
    assert sample_folder_name("/data/x/C2") == "C2"


def test_worker_device_follows_the_gpus_it_sees(monkeypatch):
    """Both sides, whatever the machine: the CPU without a GPU; with GPUs, worker k of a
    LocalCluster takes GPU k mod n (and GPU 0 outside a dask worker)."""
    import distributed
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _worker_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _worker_device() == "cuda:0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _worker_device() == "cuda:0"  # not inside a worker

    class Worker:
        name = "3"

    monkeypatch.setattr(distributed, "get_worker", lambda: Worker())
    assert _worker_device() == "cuda:1"


@pytest.mark.parametrize("workers", [0, -1])
def test_worker_counts_below_one_are_refused_before_any_work(samples, tmp_path, workers):
    good, _ = samples
    with pytest.raises(TrihrgeInputError, match="--workers must be 1 or more"):
        run_cohort([good[0]], tmp_path / "c", n_workers=workers)
    assert not (tmp_path / "c").exists()


def test_a_scheduler_that_is_no_address_is_refused(samples, tmp_path):
    good, _ = samples
    with pytest.raises(TrihrgeInputError, match="not a dask scheduler address") as err:
        run_cohort([good[0]], tmp_path / "c", scheduler="not an address")
    assert "tcp://" in err.value.hint


def test_an_unreachable_scheduler_says_so(samples, tmp_path, monkeypatch):
    import socket

    from napari_trihrge.workflows import cohort

    good, _ = samples
    monkeypatch.setattr(cohort, "SCHEDULER_TIMEOUT_S", 2)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrihrgeInputError, match="no dask scheduler answered") as err:
        run_cohort([good[0]], tmp_path / "c", scheduler=f"tcp://127.0.0.1:{port}")
    assert "written" not in str(err.value)


def test_a_missing_sample_is_reported_without_a_worker(tmp_path):
    report = run_cohort([str(tmp_path / "nowhere.h5ad")], tmp_path / "c")
    row = report.iloc[0]
    assert row["status"] == "failed" and row["error"].startswith("sample not found")
    assert row["attempts"] == 0


def test_the_cohort_folder_is_never_inside_a_sample(tmp_path):
    sample = tmp_path / "sample"
    sample.mkdir()
    with pytest.raises(TrihrgeInputError, match="inside the input"):
        run_cohort([str(sample)], sample / "cohort")
