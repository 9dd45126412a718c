"""Many samples on dask.distributed: one sample per worker (and one GPU per worker where there are
GPUs); failed samples are retried and reported, finished samples are not redone on rerun. The
workers of a LocalCluster share the machine's cores (``RunConfig.threads`` per worker); workers of
another scheduler choose from the cores free when they train."""

from __future__ import annotations

import re
import shutil
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._atomic import atomic_path
from ..errors import TrihrgeError, TrihrgeInputError
from ..io.outputs import COMPLETE_MARKER
from ..threads import usable_cores

DONE_MARKER = COMPLETE_MARKER  # written last into a finished run folder
TASKS = ("enhance", "recovery")


def sample_folder_name(path: str | Path) -> str:
    """A readable, filesystem-safe folder name for a sample path."""
    path = Path(path)
    stem = path.name[:-5] if path.name.endswith(".h5ad") else path.name
    if stem in ("outs", ""):
        stem = path.parent.name or "sample"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def _worker_device() -> str:
    """The GPU of this dask worker (worker k takes GPU k mod n), or 'cpu'."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    n_gpus = torch.cuda.device_count()
    if n_gpus == 1:  # e.g. dask-cuda workers, each with its own CUDA_VISIBLE_DEVICES
        return "cuda:0"
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return "cuda:0"
    # LocalCluster names workers 0, 1, ...; other names end in a number or are hashed
    digits = re.search(r"(\d+)$", name)
    idx = int(digits.group(1)) if digits else sum(name.encode())
    return f"cuda:{idx % n_gpus}"


def run_one_sample(path: str, out_dir: str, task: str, task_kwargs: dict[str, Any],
                   config_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one sample into ``out_dir`` (written under a temporary name, renamed when complete)."""
    from ..io import read
    from ..tl import RunConfig
    from .runs import run_enhance, run_recovery

    t0 = time.perf_counter()
    cfg = RunConfig(**{"device": _worker_device(), **config_kwargs})
    adata = read(path)
    final = Path(out_dir)  # run_recovery / run_enhance write aside and swap in when complete
    if task == "recovery":
        kw = {k: task_kwargs[k] for k in ("holdout_fraction", "seed", "annotation")
              if task_kwargs.get(k) is not None}
        summary = run_recovery(adata, final, config=cfg, **kw)
    elif task == "enhance":
        kw = {k: task_kwargs[k] for k in ("factor", "stride_um", "trust")
              if task_kwargs.get(k) is not None}
        summary = run_enhance(adata, final, config=cfg, **kw)
    else:
        raise TrihrgeInputError(f"unknown cohort task {task!r}", "use 'enhance' or 'recovery'")
    return {"seconds": time.perf_counter() - t0, "device": cfg.device,
            "n_spots": summary.get("n_spots"), **report_scores(summary)}


#: the held-out scores of a sample's row in the cohort report (recovery: the run's hidden
#: spots; enhance: its internal trust split), all with the fair score of
#: :func:`napari_trihrge.metrics.spot_scores`
REPORT_SCORES = ("pcc_mean", "baseline_knn_pcc_mean", "baseline_knn_k", "pcc_top100",
                 "baseline_knn_pcc_top100", "n_genes_scored", "n_genes_constant_prediction",
                 "n_genes_beating_interpolation")


def report_scores(summary: dict[str, Any]) -> dict[str, Any]:
    """The :data:`REPORT_SCORES` of a run's ``summary.json`` (missing ones are left out)."""
    scores = {**(summary.get("trust") or {}), **(summary.get("recovery") or {})}
    return {k: scores[k] for k in REPORT_SCORES if k in scores}


def _client(scheduler: str | None, n_workers: int | None):
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - depends on the install
        raise TrihrgeInputError("dask.distributed is not installed",
                                "pip install 'napari-trihrge[cohort]'") from err
    if scheduler:
        return Client(scheduler), None
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = n_workers or (n_gpus if n_gpus else 2)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def run_cohort(paths: Sequence[str | Path], out_dir: str | Path, *, task: str = "enhance",
               scheduler: str | None = None, n_workers: int | None = None, retries: int = 1,
               task_kwargs: dict[str, Any] | None = None,
               config_kwargs: dict[str, Any] | None = None, client=None) -> pd.DataFrame:
    """Process ``paths`` on a dask cluster; returns (and writes ``cohort_report.csv``) one row per
    sample with ``status`` 'done', 'skipped' (already finished) or 'failed' (with the error)."""
    from distributed import as_completed

    if task not in TASKS:
        raise TrihrgeInputError(f"unknown cohort task {task!r}", "use 'enhance' or 'recovery'")
    if retries < 0:
        raise TrihrgeInputError(f"retries must be >= 0, got {retries}", "use for example 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [sample_folder_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise TrihrgeInputError("two samples map to the same output folder name",
                                "give the samples distinct folder or file names")
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for path, name in zip(paths, names, strict=True):
        target = out / name
        if (target / DONE_MARKER).exists():
            rows[name] = {"sample": name, "path": str(path), "status": "skipped", "error": ""}
        else:
            if target.exists():  # an interrupted earlier attempt: start it again cleanly
                shutil.rmtree(target)
            todo.append((str(path), name))
    own_client = client is None
    cluster = None
    config_kwargs = dict(config_kwargs or {})
    if todo:
        if own_client:
            client, cluster = _client(scheduler, n_workers)
        if cluster is not None and config_kwargs.get("threads") is None:
            # the LocalCluster's workers share this machine: split its cores among them so
            # their OpenMP teams never outnumber the cores (each worker would otherwise see
            # free cores before its siblings start training)
            config_kwargs["threads"] = max(1, usable_cores() // max(1, len(cluster.workers)))
        try:
            futures = {}
            for path, name in todo:
                fut = client.submit(run_one_sample, path, str(out / name), task,
                                    task_kwargs or {}, config_kwargs, retries=retries,
                                    pure=False, key=f"trihrge-{name}-{time.time_ns()}")
                futures[fut] = (path, name)
            for fut in as_completed(futures):
                path, name = futures[fut]
                try:
                    info = fut.result()
                    rows[name] = {"sample": name, "path": path, "status": "done", "error": "",
                                  **info}
                except Exception as err:  # noqa: BLE001 - any task error is reported in its row
                    msg = str(err) if isinstance(err, TrihrgeError) else "".join(
                        traceback.format_exception_only(type(err), err)).strip()
                    msg = " ".join(msg.split())  # one line in the report
                    rows[name] = {"sample": name, "path": path, "status": "failed",
                                  "error": msg, "attempts": retries + 1}
        finally:
            if own_client:
                client.close()
                if cluster is not None:
                    cluster.close()
    report = pd.DataFrame([rows[n] for n in names])
    with atomic_path(out / "cohort_report.csv") as tmp:
        report.to_csv(tmp, index=False)
    return report
