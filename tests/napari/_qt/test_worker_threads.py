"""The napari worker sizes the engine's CPU pools in the thread that computes, one core left for
the event loop."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

pytestmark = pytest.mark.gui


def test_engine_worker_sizes_pools_in_its_thread_leaving_one_core(qtbot, monkeypatch):
    from napari_trihrge import threads
    from napari_trihrge.napari._qt._worker import engine_worker

    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "free_cores", lambda refresh=False: 2)
    n_before = torch.get_num_threads()
    pools = threadpool_limits(limits=None)

    def engine_call(progress):
        return {"torch": torch.get_num_threads(),
                "pools": {i["filepath"]: i["num_threads"] for i in threadpool_info()}}

    outcomes = []
    worker = engine_worker(engine_call)
    worker.returned.connect(outcomes.append)
    try:
        with qtbot.waitSignal(worker.finished, timeout=60_000):
            worker.start()
        assert outcomes and outcomes[0].status == "ok", outcomes
        seen = outcomes[0].result
        assert seen["torch"] == 1  # 2 free cores, one kept for the event loop
        assert seen["pools"] and set(seen["pools"].values()) == {1}, seen
    finally:
        pools.restore_original_limits()
        torch.set_num_threads(n_before)
