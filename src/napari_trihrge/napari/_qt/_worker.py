"""Run engine work off the GUI thread and stream its progress events to the GUI.

:func:`engine_worker` wraps a blocking engine call ``fn(..., progress=Progress)`` in a napari
``thread_worker`` generator: the call runs in a helper thread, the generator yields batches of
progress events (delivered on the GUI thread through ``worker.yielded``) and finally *returns* an
:class:`Outcome` - it never raises, so errors become notifications, never crashes. Cancel with
``progress.cancel()``: the engine stops at its next ``advance`` (within one batch). The engine
thread sizes its CPU thread pools to the free cores less one, which the event loop keeps
(:func:`napari_trihrge.threads.cpu_threads`).
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import thread_worker

from ...errors import Cancelled, EncoderAccessError, TrihrgeInputError
from ...progress import Progress
from ...threads import cpu_threads

log = logging.getLogger(__name__)

POLL_S = 0.05


@dataclass
class Outcome:
    status: str  # 'ok' | 'cancelled' | 'error'
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""

    @property
    def message(self) -> str:
        """A message fit for a notification (no traceback for input problems)."""
        if self.error is None:
            return ""
        if isinstance(self.error, TrihrgeInputError | EncoderAccessError):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"


class QueueProgress(Progress):
    """A Progress whose events go into a thread-safe queue."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        super().__init__(on_event=self.queue.put)


def engine_worker(fn: Callable[..., Any], *args: Any, progress: QueueProgress | None = None,
                  **kwargs: Any):
    """A (not yet started) napari worker running ``fn(*args, progress=progress, **kwargs)``.

    Connect ``worker.yielded`` (list of event dicts) and ``worker.returned`` (:class:`Outcome`),
    then ``worker.start()``.
    """
    from ...model.training import avoid_triton_llvm_clash

    progress = progress or QueueProgress()
    avoid_triton_llvm_clash()

    @thread_worker(start_thread=False)
    def _work():
        box: dict[str, Any] = {}

        def target():
            try:
                # sized in the thread that computes; one core stays for the event loop
                with cpu_threads(reserve_cores=1):
                    box["result"] = fn(*args, progress=progress, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the GUI as an Outcome
                box["error"] = exc
                box["traceback"] = traceback.format_exc()

        thread = threading.Thread(target=target, name="trihrge-engine", daemon=True)
        thread.start()
        try:
            while True:
                thread.join(POLL_S)
                batch = _drain(progress.queue)
                if batch:
                    yield batch
                if not thread.is_alive():
                    break
        finally:
            if thread.is_alive():  # the worker was quit: stop the engine too
                progress.cancel()
        err = box.get("error")
        if err is None:
            return Outcome("ok", result=box.get("result"))
        if isinstance(err, Cancelled):
            return Outcome("cancelled", error=err)
        if not isinstance(err, TrihrgeInputError | EncoderAccessError):
            log.error("TriHRGE engine error:\n%s", box.get("traceback", ""))
        return Outcome("error", error=err, traceback=box.get("traceback", ""))

    worker = _work()
    worker.progress = progress  # type: ignore[attr-defined]
    return worker


def _drain(q: queue.Queue, limit: int = 10_000) -> list[dict]:
    out = []
    while len(out) < limit:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out


def simple_worker(fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """A worker for short calls without progress (reading a sample): returns an Outcome."""

    @thread_worker(start_thread=False)
    def _work():
        try:
            return Outcome("ok", result=fn(*args, **kwargs))
        except Cancelled as exc:
            return Outcome("cancelled", error=exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the GUI as an Outcome
            tb = traceback.format_exc()
            if not isinstance(exc, TrihrgeInputError | EncoderAccessError):
                log.error("TriHRGE error:\n%s", tb)
            return Outcome("error", error=exc, traceback=tb)

    return _work()
