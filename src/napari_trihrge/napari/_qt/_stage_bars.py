"""napari progress bars for an engine run's ``stage`` and ``advance`` events, one per stage.

Shared by every widget that runs the engine in a worker (Train, Apply a model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from napari.utils import progress as napari_progress

from ...progress import STAGE_LABELS, Horizon

__all__ = ["STAGE_LABELS", "Horizon", "StageBars"]  # the horizon lives in the Qt-free engine


class StageBars:
    """One napari progress bar per engine stage, and a status line that follows them.

    napari's progress bars run a nested event loop (``QApplication.processEvents``) when they
    are created, advanced or closed, so a run's outcome can be handled *inside* one of those
    calls. After :meth:`stop` (cancel, or the outcome) no bar is opened and no progress text is
    shown, so the status line keeps the final word.
    """

    def __init__(self, show_text: Callable[[str], None],
                 show_horizon: Callable[[str], None] | None = None):
        self.bars: dict[str, Any] = {}
        self.active = False
        self._show_text = show_text
        self._show_horizon = show_horizon
        self.horizon = Horizon()

    def start(self) -> None:
        self.active = True
        self.horizon.reset()
        if self._show_horizon is not None:
            self._show_horizon("")

    def stop(self) -> None:
        """No more progress for this run (cancel, or the outcome): the status line is left as it
        is and no bar opens. The open bars close in :meth:`close` (when the worker finishes), not
        here: this may be called from inside a bar's own nested event loop."""
        self.active = False

    def show_text(self, text: str) -> None:
        """Show a progress line, unless the run was cancelled or has finished meanwhile."""
        if self.active:
            self._show_text(text)

    def handle(self, events: Iterable[dict]) -> list[dict]:
        """Open and advance bars for ``stage``/``advance`` events; return the other events
        (metrics, messages) that arrived while the run was still active."""
        rest = []
        for ev in events:
            if not self.active:
                break
            self.horizon.handle(ev)
            kind = ev.get("event")
            stage = ev.get("stage")
            label = STAGE_LABELS.get(stage, stage)
            if kind == "stage":
                self.close()
                total = ev.get("total")
                self.bars[stage] = napari_progress(total=total if total else None, desc=label)
                if not self.active:  # the outcome came while the bar opened
                    self.close()
                self.show_text(f"{label}…")
            elif kind == "advance":
                bar = self.bars.get(stage)
                done = int(ev.get("done") or 0)
                if bar is not None and done > bar.n:
                    bar.update(done - bar.n)
                total = ev.get("total")
                if total:
                    self.show_text(f"{label}: {done} / {total}")
            else:
                rest.append(ev)
        if self.active and self._show_horizon is not None:
            self._show_horizon(self.horizon.text())
        return rest

    def close(self) -> None:
        for bar in self.bars.values():
            try:
                bar.close()
            except Exception:  # noqa: BLE001 - a bar already closed
                pass
        self.bars = {}
