"""napari progress bars for an engine run's ``stage`` and ``advance`` events, one per stage.

Shared by every widget that runs the engine in a worker (Train, Apply a model).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from napari.utils import progress as napari_progress

#: what each engine stage is called in the viewer (status line and progress bars)
STAGE_LABELS = {
    "genes": "Selecting genes",
    "features": "Reading the H&E (image features)",
    "training": "Training",
    "prediction": "Predicting",
    "maps": "Drawing the enhanced maps",
    "writing": "Writing the run folder",
}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(5, int(round(seconds / 5.0)) * 5)} s"
    if seconds < 90 * 60:
        return f"{int(round(seconds / 60.0))} min"
    return f"{seconds / 3600.0:.1f} h"


class Horizon:
    """One overall line for a run: its phase, read from the engine's messages (an enhance run
    with per-gene trust trains its networks twice: "trust check 1 of 2", then "final model 2
    of 2"), which network of how many, and an estimate of the time left: for the networks
    from the mean time of those already trained, for another stage with a known length from
    its own pace so far."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.n_phases, self.phase = 1, 1
        self.fold = self.n_folds = 0
        self._first_network: float | None = None
        self._networks_done = 0
        self._network_start: float | None = None
        self.stage: str | None = None
        self._stage_start = 0.0
        self._stage_total: int | None = None
        self._stage_done = 0

    def handle(self, ev: dict) -> None:
        """Follow one engine event."""
        now = self._clock()
        kind = ev.get("event")
        if kind == "stage":
            self.stage = ev.get("stage")
            self._stage_start, self._stage_total, self._stage_done = now, ev.get("total"), 0
        elif kind == "advance":
            self._stage_done = int(ev.get("done") or 0)
        elif kind == "message":
            text = str(ev.get("text", ""))
            if text.startswith("per-gene trust"):
                self.n_phases, self.phase = 2, 1
            fold = re.match(r"stacking fold (\d+)/(\d+)", text)
            model = re.match(r"training model (\d+)/(\d+)", text)
            if fold or (model and not self.n_folds):
                k, n = (int(v) for v in (fold or model).groups())
                if k == 1 and self.fold >= (self.n_folds or 1) and self.fold > 0 \
                        and self.phase < self.n_phases:
                    self.phase += 1  # the networks start again: the final model
                if self._network_start is not None:
                    self._networks_done += 1
                elif self._first_network is None:
                    self._first_network = now
                self._network_start = now
                self.fold, self.n_folds = k, n

    @property
    def phase_name(self) -> str:
        if self.n_phases == 2:
            return ("trust check" if self.phase == 1 else "final model") + \
                f" {self.phase} of {self.n_phases}"
        return ""

    def seconds_left(self) -> float | None:
        """The estimated time left in the current part (networks, or a stage of known
        length); None before anything can be estimated."""
        now = self._clock()
        if self.stage == "training" and self.n_folds and self._networks_done:
            per = (self._network_start - self._first_network) / self._networks_done
            total = self.n_folds * self.n_phases
            started = (self.phase - 1) * self.n_folds + self.fold
            return max(0.0, per * (total - started + 1) - (now - self._network_start))
        if self.stage != "training" and self._stage_total and self._stage_done:
            pace = (now - self._stage_start) / self._stage_done
            return max(0.0, pace * (self._stage_total - self._stage_done))
        return None

    def text(self) -> str:
        """'Overall: trust check 1 of 2 · network 3 of 5 · about 2 min left of the networks'
        style line ('' before the run says anything)."""
        parts = [p for p in (self.phase_name,) if p]
        if self.stage == "training" and self.n_folds:
            parts.append(f"network {self.fold} of {self.n_folds}")
        elif self.stage is not None:
            label = STAGE_LABELS.get(self.stage, self.stage)
            parts.append(label[:1].lower() + label[1:])
        if not parts:
            return ""
        left = self.seconds_left()
        if left is not None:
            what = "of the networks" if self.stage == "training" else "of this step"
            parts.append(f"about {_duration(left)} left {what}")
        return "Overall: " + " · ".join(parts)


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
