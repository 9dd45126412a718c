"""Progress reporting and cancellation for long-running engine work.

The engine never imports tqdm-in-a-GUI or napari: each long function takes an optional
:class:`Progress` and calls ``progress.stage(name, total)``, ``progress.advance(n)`` and
``progress.metric(**values)``. ``advance`` raises :class:`~napari_trihrge.errors.Cancelled` once
``progress.cancel()`` was called (from any thread), so cancellation is noticed within one batch.

Front ends subclass it: the CLI draws tqdm bars (:class:`TqdmProgress`), the napari widgets forward
events to the GUI thread through a worker.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import Cancelled


class Progress:
    """Silent progress sink with thread-safe cancellation; subclass to display it."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None] | None = None):
        self._cancel = threading.Event()
        self._on_event = on_event
        self.stage_name: str | None = None
        self.total: int | None = None
        self.done = 0

    # -- producer side (engine) -----------------------------------------------------------
    def stage(self, name: str, total: int | None = None) -> None:
        """Begin a named stage ('features', 'training', 'prediction', ...) of ``total`` steps."""
        self.check_cancelled()
        self.stage_name, self.total, self.done = name, total, 0
        self._emit({"event": "stage", "stage": name, "total": total})

    def advance(self, n: int = 1) -> None:
        """Record ``n`` finished steps of the current stage; raises Cancelled if asked to stop."""
        self.done += n
        self._emit({"event": "advance", "stage": self.stage_name, "done": self.done,
                    "total": self.total})
        self.check_cancelled()

    def metric(self, **values: float) -> None:
        """Report live values (for example ``epoch=3, train_loss=0.41, val_loss=0.45``)."""
        self._emit({"event": "metric", "stage": self.stage_name, **values})

    def message(self, text: str) -> None:
        """A passing word on the work under way ('stacking fold 2/5'), shown beside the bar."""
        self._emit({"event": "message", "stage": self.stage_name, "text": text})

    def note(self, text: str) -> None:
        """A message worth keeping in a log (which marker genes were skipped...)."""
        self._emit({"event": "message", "stage": self.stage_name, "text": text, "keep": True})

    def close(self) -> None:
        self._emit({"event": "close", "stage": self.stage_name})

    # -- consumer side (front end) --------------------------------------------------------
    def cancel(self) -> None:
        """Ask the running work to stop at its next step (thread-safe)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def _emit(self, event: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(event)


#: what each engine stage is called in the viewer (status line and progress bars)
STAGE_LABELS = {
    "genes": "Selecting genes",
    "features": "Reading the H&E (image features)",
    "training": "Training",
    "prediction": "Predicting",
    "maps": "Drawing the enhanced maps",
    "maps for display": "Preparing the maps for display",
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


class TqdmProgress(Progress):
    """Progress for people at a terminal or reading a log (used by the CLI).

    Each stage name (genes, features, training, prediction, maps, writing...) is one tqdm bar
    in a terminal: a stage the engine starts again (every fold's and every model's training, the
    features of the virtual spots) adds its steps to the same bar, and messages ("stacking fold
    2/5") show beside the bar instead of as new lines. Above the bars one overall line (the
    :class:`Horizon`, as in the napari panels) names the phase ("trust check 1 of 2", "final
    model 2 of 2"), the network and the time left. When the output is not a terminal (a log, a
    pipe), no bars are drawn: each phase that begins writes one line (with the time the one
    before took), and :meth:`close` writes one line per stage with the time it took. ``stream``
    (default ``sys.stderr``) receives both.
    """

    def __init__(self, disable: bool = False, stream: Any = None):
        super().__init__()
        import sys

        self._disable = disable
        self._stream = stream if stream is not None else sys.stderr
        isatty = getattr(self._stream, "isatty", None)
        self._terminal = bool(isatty()) if callable(isatty) else False
        self._bars: dict[str, Any] = {}
        self._bar = None
        #: per stage name, in the order first seen: [seconds, steps, starts]
        self._stages: dict[str, list[float]] = {}
        self._since: float | None = None
        self.horizon = Horizon()
        self._overall = None  # the terminal's overall line (a tqdm bar of text only)
        self._phase: tuple[str, float] | None = None  # the log's current phase and its start

    def _leave_stage(self) -> None:
        import time

        if self.stage_name is not None and self._since is not None:
            self._stages[self.stage_name][0] += time.perf_counter() - self._since
        self._since = None

    def stage(self, name: str, total: int | None = None) -> None:
        import time

        self._leave_stage()
        record = self._stages.setdefault(name, [0.0, 0, 0])
        record[2] += 1
        self._since = time.perf_counter()
        if self._terminal and not self._disable:
            from tqdm.auto import tqdm

            if self._overall is None:  # the overall line first, the stage bars below it
                self._overall = tqdm(total=None, bar_format="{desc}", file=self._stream,
                                     dynamic_ncols=True, leave=False, position=0)
            bar = self._bars.get(name)
            if bar is None:
                bar = tqdm(total=total, desc=name, unit="step", file=self._stream,
                           dynamic_ncols=True, leave=True, position=1 + len(self._bars))
                self._bars[name] = bar
            elif total is not None:
                bar.total = (bar.total or 0) + total
                bar.refresh()
            self._bar = bar
        super().stage(name, total)

    def advance(self, n: int = 1) -> None:
        if self.stage_name in self._stages:
            self._stages[self.stage_name][1] += n
        if self._bar is not None:
            self._bar.update(n)
        super().advance(n)

    def metric(self, **values: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                                   for k, v in values.items()})
        super().metric(**values)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        super().message(text)

    def note(self, text: str) -> None:
        if not self._disable:
            if self._terminal:
                from tqdm.auto import tqdm

                tqdm.write(text, file=self._stream)
            else:
                print(text, file=self._stream, flush=True)
        super().note(text)

    def _emit(self, event: dict[str, Any]) -> None:
        self.horizon.handle(event)
        if not self._disable:
            if self._terminal:
                self._show_overall()
            else:
                self._log_phase()
        super()._emit(event)

    def _show_overall(self) -> None:
        text = self.horizon.text()
        if not text:
            return
        if self._overall is not None:
            self._overall.set_description_str(text)

    def _log_phase(self) -> None:
        phase = self.horizon.phase_name
        if not phase or (self._phase is not None and self._phase[0] == phase):
            return
        now = time.perf_counter()
        before = (f" ({self._phase[0]} took {now - self._phase[1]:.1f} s)"
                  if self._phase is not None else "")
        print(f"phase: {phase}{before}", file=self._stream, flush=True)
        self._phase = (phase, now)

    def summary_lines(self) -> list[str]:
        """One line per stage: its name, the time it took, its steps and how often it ran."""
        lines = []
        for name, (seconds, steps, starts) in self._stages.items():
            runs = f", {starts:.0f} runs" if starts > 1 else ""
            lines.append(f"{name:<12s} {seconds:8.1f} s  ({steps:.0f} steps{runs})")
        return lines

    def close(self) -> None:
        self._leave_stage()
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        self._bar = None
        if self._overall is not None:
            self._overall.close()
            self._overall = None
        if self._phase is not None and not self._terminal:
            print(f"{self._phase[0]} took {time.perf_counter() - self._phase[1]:.1f} s",
                  file=self._stream, flush=True)
        self._phase = None
        self.horizon.reset()
        if not self._terminal and not self._disable and self._stages:
            print("\n".join(self.summary_lines()), file=self._stream, flush=True)
        self._stages.clear()
        super().close()


def ensure_progress(progress: Progress | None) -> Progress:
    """Return ``progress`` or a silent one, so engine code can call it unconditionally."""
    return progress if progress is not None else Progress()


class CancelOnlyProgress(Progress):
    """Forwards cancellation to ``parent`` but not step counts (inner loops of a counted stage)."""

    def __init__(self, parent: Progress):
        super().__init__()
        self._parent = parent

    def advance(self, n: int = 1) -> None:
        self._parent.check_cancelled()

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()
