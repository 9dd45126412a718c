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
    """Progress drawn as one tqdm bar per stage (used by the CLI)."""

    def __init__(self, disable: bool = False):
        super().__init__()
        self._bar = None
        self._disable = disable

    def stage(self, name: str, total: int | None = None) -> None:
        from tqdm.auto import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=total, desc=name, unit="step", disable=self._disable,
                         dynamic_ncols=True, leave=True)
        super().stage(name, total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
        super().advance(n)

    def metric(self, **values: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                                   for k, v in values.items()})
        super().metric(**values)

    def message(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text)
        super().message(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        super().close()


def ensure_progress(progress: Progress | None) -> Progress:
    """Return ``progress`` or a silent one, so engine code can call it unconditionally."""
    return progress if progress is not None else Progress()
