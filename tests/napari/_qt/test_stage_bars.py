"""One napari progress bar per engine stage; the status line keeps the final word."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


class FakeBar:  # stands in for napari.utils.progress
    opened: list = []

    def __init__(self, total=None, desc=""):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        self.on_update = None
        FakeBar.opened.append(self)

    def update(self, k):
        self.n += k
        if self.on_update is not None:
            self.on_update()

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    from napari_trihrge.napari._qt import _stage_bars

    FakeBar.opened = []
    monkeypatch.setattr(_stage_bars, "napari_progress", FakeBar)
    lines: list[str] = []
    b = _stage_bars.StageBars(lines.append)
    b.lines = lines
    return b


def test_stages_open_bars_and_other_events_come_back(bars):
    bars.start()
    rest = bars.handle([{"event": "stage", "stage": "training", "total": 40},
                        {"event": "advance", "stage": "training", "done": 7, "total": 40},
                        {"event": "metric", "train_loss": 0.5},
                        {"event": "advance", "stage": "training", "done": 5, "total": 40},
                        {"event": "stage", "stage": "maps", "total": None}])
    assert rest == [{"event": "metric", "train_loss": 0.5}]
    train_bar, maps_bar = FakeBar.opened
    assert (train_bar.desc, train_bar.total, train_bar.n) == ("Training", 40, 7)  # never back
    assert train_bar.closed and not maps_bar.closed  # one bar open at a time
    assert maps_bar.total is None  # no total: an indeterminate bar
    assert bars.lines == ["Training…", "Training: 7 / 40", "Training: 5 / 40",
                          "Drawing the enhanced maps…"]
    bars.close()
    assert maps_bar.closed and bars.bars == {}


def test_after_stop_no_bar_opens_and_no_text_is_shown(bars):
    bars.start()
    bars.handle([{"event": "stage", "stage": "training", "total": 4}])
    bars.stop()
    rest = bars.handle([{"event": "stage", "stage": "prediction", "total": 1},
                        {"event": "metric", "train_loss": 0.1}])
    assert rest == [] and len(FakeBar.opened) == 1 and bars.lines == ["Training…"]
    bars.show_text("late message")
    assert bars.lines == ["Training…"]


def test_outcome_inside_a_bar_update_stops_the_batch(bars):
    """napari's bars spin a nested event loop, so the outcome can arrive inside update()."""
    bars.start()
    bars.handle([{"event": "stage", "stage": "training", "total": 40}])
    FakeBar.opened[0].on_update = bars.stop
    bars.handle([{"event": "advance", "stage": "training", "done": 19, "total": 40},
                 {"event": "stage", "stage": "prediction", "total": 1}])
    assert list(bars.bars) == ["training"] and len(FakeBar.opened) == 1
    assert bars.lines == ["Training…"]  # no progress text after the outcome
