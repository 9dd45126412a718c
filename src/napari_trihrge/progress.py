"""Progress reporting and cancellation for long-running engine work.

The engine never imports tqdm-in-a-GUI or napari: each long function takes an optional
:class:`Progress` and calls ``progress.stage(name, total)``, ``progress.advance(n)`` and
``progress.metric(**values)``. ``advance`` raises :class:`~napari_trihrge.errors.Cancelled` once
``progress.cancel()`` was called (from any thread), so cancellation is noticed within one batch.

Front ends subclass it: the CLI draws tqdm bars (:class:`TqdmProgress`), the napari widgets forward
events to the GUI thread through a worker.
"""

from __future__ import annotations

import threading
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
        self._emit({"event": "message", "stage": self.stage_name, "text": text})

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


class TqdmProgress(Progress):
    """Progress for people at a terminal or reading a log (used by the CLI).

    Each stage name (genes, features, training, prediction, maps, writing...) is one tqdm bar
    in a terminal: a stage the engine starts again (every fold's and every model's training, the
    features of the virtual spots) adds its steps to the same bar, and messages ("stacking fold
    2/5") show beside the bar instead of as new lines. When the output is not a terminal (a
    log, a pipe), no bars are drawn: :meth:`close` writes one line per stage with the time it
    took. ``stream`` (default ``sys.stderr``) receives both.
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
            bar = self._bars.get(name)
            if bar is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc=name, unit="step", file=self._stream,
                           dynamic_ncols=True, leave=True, position=len(self._bars))
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
