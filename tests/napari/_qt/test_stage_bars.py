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


def _enhance_events(n_folds=5):
    """The engine's events of an enhance run with per-gene trust (as recorded from
    tl.enhance): features, then the fold networks twice (trust check, final model), maps."""
    yield {"event": "stage", "stage": "genes", "total": 1}
    yield {"event": "stage", "stage": "features", "total": 100}
    yield {"event": "message", "text": "per-gene trust: training on 272 spots, scoring the 90"}
    for _ in range(2):
        for k in range(1, n_folds + 1):
            yield {"event": "message", "text": f"stacking fold {k}/{n_folds}"}
            yield {"event": "message", "text": f"training model 1/1 (seed {100 * (k - 1)})"}
            yield {"event": "stage", "stage": "training", "total": 4}
    yield {"event": "stage", "stage": "maps", "total": 10}


def test_the_horizon_names_the_phase_and_the_time_left(bars):
    """One overall line: 'trust check 1 of 2' for the first five networks, 'final model 2 of
    2' for the next five, with the time left from the pace of the networks trained so far."""
    from napari_trihrge.napari._qt._stage_bars import Horizon

    now = [0.0]
    horizon = Horizon(clock=lambda: now[0])
    lines = []
    for ev in _enhance_events():
        if ev.get("text", "").startswith("stacking fold"):
            now[0] += 60.0  # one minute per network
        horizon.handle(ev)
        lines.append(horizon.text())
    trust_lines = [t for t in lines if "trust check 1 of 2" in t]
    final_lines = [t for t in lines if "final model 2 of 2" in t]
    assert trust_lines and final_lines
    assert lines.index(trust_lines[-1]) < lines.index(final_lines[0])
    assert "reading the H&E" in trust_lines[0]  # the trust phase starts with its features
    networks = [t for t in trust_lines if "network" in t]
    assert "network 1 of 5" in networks[0] and "network 5 of 5" in final_lines[-2]
    # after the third network of the trust check: 8 networks to go at a minute each
    third = next(t for t in trust_lines if "network 3 of 5" in t and "left" in t)
    assert "about 8 min left of the networks" in third, third
    assert "drawing the enhanced maps" in lines[-1]
    horizon.handle({"event": "advance", "stage": "maps", "done": 5, "total": 10})
    now[0] += 20.0
    assert "about 20 s left of this step" in horizon.text()


def test_the_bars_show_the_horizon_line(monkeypatch):
    from napari_trihrge.napari._qt import _stage_bars

    monkeypatch.setattr(_stage_bars, "napari_progress", FakeBar)
    status, overall = [], []
    b = _stage_bars.StageBars(status.append, overall.append)
    b.start()
    b.handle(list(_enhance_events()))
    assert overall[-1].startswith("Overall: final model 2 of 2")
    b.stop()
    b.handle([{"event": "stage", "stage": "writing", "total": 3}])
    assert "writing" not in overall[-1].lower()  # nothing after the outcome
