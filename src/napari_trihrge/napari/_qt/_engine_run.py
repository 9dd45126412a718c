"""The life of one engine run started from a panel: launched in a worker, its progress in stage
bars, cancellable, its outcome shown or reported, the buttons enabled again at the end."""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error

from ._common import report_outcome
from ._worker import QueueProgress, engine_worker


class EngineRun:
    """Mixin of a panel with ``status``, ``horizon`` (labels), ``bars`` (StageBars),
    ``start_btn`` and ``cancel_btn`` that runs one engine call at a time.

    The panel implements ``_show(result)`` (layers) and ``_report(result)`` (its status line);
    ``run_title`` names the run in notifications.
    """

    run_title = "The run"
    worker: Any = None
    progress: QueueProgress | None = None
    last_outcome: Any = None

    def launch(self, fn, *args: Any, **kwargs: Any):
        """Start ``fn(*args, progress=..., **kwargs)`` in a worker; returns the worker."""
        self.progress = QueueProgress()
        worker = engine_worker(fn, *args, progress=self.progress, **kwargs)
        worker.yielded.connect(self._on_events)
        worker.returned.connect(self._on_done)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText("Starting…")
        self.bars.start()
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        worker.start()
        return worker

    def cancel(self):
        """Ask the engine to stop at its next step."""
        if self.progress is not None:
            self.progress.cancel()
            self.bars.stop()  # late progress events must not hide this
            self.status.setText("Cancelling…")
            self.cancel_btn.setEnabled(False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _on_events(self, events: list[dict]):
        self.bars.handle(events)

    def _on_finished(self):
        self.bars.close()
        self.horizon.setText("")
        self.worker = None
        self.progress = None
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_done(self, outcome):
        self.bars.stop()
        self.last_outcome = outcome
        if not report_outcome(outcome, self.run_title):
            self.status.setText("Cancelled: nothing was changed." if outcome.status ==
                                "cancelled" else f"Failed: {outcome.message}")
            return
        try:
            self._show(outcome.result)
        except Exception as exc:  # noqa: BLE001 - never crash the viewer
            show_error(f"{self.run_title} finished but its layers could not be shown: {exc}")
            return
        self._report(outcome.result)
