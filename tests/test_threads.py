"""CPU thread pools: chosen from the free cores or the user's setting, applied to torch and every
OpenMP/BLAS pool inside training and prediction, restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from conftest import NET_TINY
from napari_trihrge import threads
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.model.predict import predict
from napari_trihrge.model.training import TrainConfig, fit
from napari_trihrge.progress import Progress


@pytest.fixture(autouse=True)
def _no_env_and_fresh_measurement(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "_cached", None)
    n = torch.get_num_threads()
    pools = threadpool_limits(limits=None)  # remembers every pool's size, changes nothing
    yield
    pools.restore_original_limits()
    torch.set_num_threads(n)


def _pools() -> dict[str, int]:
    """torch's count and every OpenMP/BLAS pool as threadpoolctl reports it, in this thread."""
    out = {"torch": torch.get_num_threads()}
    for info in threadpool_info():
        out[f"{info['internal_api']}:{info['filepath']}"] = int(info["num_threads"])
    return out


def _data(n=60, g=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2, 6)).astype(np.float32)
    y = rng.random((n, g)).astype(np.float32)
    return x, y


def _widen_pools() -> None:
    """What numba's OpenMP layer does to torch's team when scanpy starts it: 2 threads."""
    threadpool_limits(limits=2)
    torch.set_num_threads(2)


def test_every_pool_is_sized_inside_training_and_restored_after(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    x, y = _data()
    seen: list[dict[str, int]] = []
    progress = Progress(on_event=lambda e: seen.append(_pools()) if e["event"] == "metric"
                        else None)
    _widen_pools()
    before = _pools()
    fit(x, y, train_config=TrainConfig(max_epochs=2, batch_size=16), progress=progress, **NET_TINY)
    assert len(seen) == 2  # one metric event per epoch, sampled inside the training loop
    for pools in seen:
        assert len(pools) >= 2  # torch and at least torch's own OpenMP runtime
        assert set(pools.values()) == {1}, pools
    assert _pools() == before


def test_pools_are_sized_inside_prediction(monkeypatch):
    x, y = _data()
    res = fit(x, y, train_config=TrainConfig(max_epochs=1, batch_size=16), **NET_TINY)
    seen: list[dict[str, int]] = []
    res.model.register_forward_hook(lambda *a: seen.append(_pools()))
    _widen_pools()
    with threads.cpu_threads(1):
        predict(res.model, x, device="cpu")
    assert seen and all(set(p.values()) == {1} for p in seen)
    assert torch.get_num_threads() == 2  # restored after the block


def test_choice_order_explicit_then_enclosing_block_then_env_then_free_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "free_cores", lambda refresh=False: 5)
    assert threads.choose_threads() == 5
    assert threads.choose_threads(reserve_cores=1) == 4
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.choose_threads() == 3
    with threads.cpu_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
        with threads.cpu_threads() as inner:
            assert inner == 2
        assert threads.choose_threads(6) == 6
    assert threads.choose_threads(100) == 8  # never more than the usable cores
    assert threads.choose_threads("auto") == 3


@pytest.mark.parametrize("bad", [-1, "two", 1.5j])
def test_bad_thread_counts_are_input_errors(bad, monkeypatch):
    with pytest.raises(TrihrgeInputError):
        threads.choose_threads(bad)
    monkeypatch.setenv(threads.THREADS_ENV, "-2")
    with pytest.raises(TrihrgeInputError, match=threads.THREADS_ENV):
        threads.choose_threads()


def test_run_config_checks_threads_when_built():
    from napari_trihrge.tl import RunConfig

    assert RunConfig(threads=0).threads is None
    assert RunConfig(threads="2").threads == 2
    with pytest.raises(TrihrgeInputError):
        RunConfig(threads=-3)


@pytest.mark.parametrize(("others_busy", "load", "own", "expected"), [
    (0.0, 1.0, 0.0, 2),    # idle 2-core machine, the load is this process
    (0.1, 1.1, 0.0, 2),    # a little background work
    (1.0, 1.0, 0.0, 1),    # a program started just now: seen in CPU time, not yet in the load
    (0.0, 2.0, 0.0, 1),    # a program running in bursts: seen in the load average
    (0.0, 2.0, 1.9, 2),    # this process's own two threads: not another program
    (0.0, 3.0, 1.9, 1),    # ... and one more program beside them
    (6.0, 14.0, 1.9, 1),   # a crowded machine: still one thread
])
def test_free_cores_from_cpu_time_and_load(monkeypatch, others_busy, load, own, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "_busy_cores_of_others", lambda s: others_busy)
    monkeypatch.setattr(threads, "_own_cores_last_minute", lambda: own)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    assert threads.free_cores(refresh=True) == expected


def test_own_cores_since_uses_the_last_minute():
    # measured 50 s and 5 s ago: the older one within the minute is the reference
    history = [(0.0, 0.0), (50.0, 10.0), (95.0, 100.0)]
    assert threads.own_cores_since(history, 100.0, 110.0, 100.0) == pytest.approx(2.0)
    # nothing measured within the minute (too old, too recent): since the process started
    assert threads.own_cores_since([(0.0, 0.0), (99.0, 5.0)], 100.0, 50.0, 200.0) \
        == pytest.approx(0.25)


def test_own_cores_are_measured_and_remembered(monkeypatch):
    monkeypatch.setattr(threads, "_own_history", [])
    assert threads._own_cores_last_minute() >= 0.0
    threads._own_cores_last_minute()
    assert len(threads._own_history) == 2
    assert threads._own_history[1][1] >= threads._own_history[0][1]  # CPU time never drops


def test_free_cores_measures_this_machine():
    n = threads.free_cores(refresh=True)
    assert 1 <= n <= threads.usable_cores()


def test_cli_threads_option():
    from napari_trihrge.workflows._cli_options import run_config
    from napari_trihrge.workflows.cli import build_parser

    args = build_parser().parse_args(["recovery", "x.h5ad", "--threads", "1"])
    assert run_config(args).threads == 1
    args = build_parser().parse_args(["recovery", "x.h5ad", "--threads", "auto"])
    assert run_config(args).threads is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["recovery", "x.h5ad", "--threads", "0.5"])
