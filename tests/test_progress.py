"""Progress for people: one bar per stage in a terminal, one line per stage in a log."""

from __future__ import annotations

import io

import pytest

from napari_trihrge.errors import Cancelled
from napari_trihrge.progress import TqdmProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_like_the_engine(progress: TqdmProgress) -> None:
    progress.stage("features", 10)
    progress.advance(10)
    for fold in range(5):  # the blend's folds: a training and a prediction each
        progress.message(f"stacking fold {fold + 1}/5")
        progress.stage("training", 3)
        progress.advance(3)
        progress.stage("prediction", 2)
        progress.advance(2)
    progress.stage("writing", 1)
    progress.advance()


def test_a_log_gets_one_line_per_stage_with_its_time():
    log = io.StringIO()
    progress = TqdmProgress(stream=log)
    _run_like_the_engine(progress)
    assert log.getvalue() == ""  # nothing while it runs: no bars, no repeated messages
    progress.close()
    lines = log.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["features", "training", "prediction",
                                                    "writing"]
    assert "15 steps, 5 runs" in lines[1] and " s " in lines[1]
    assert "stacking fold" not in log.getvalue()
    progress.close()
    assert len(log.getvalue().splitlines()) == 4  # closing twice writes nothing more


def test_a_terminal_gets_one_bar_per_stage():
    term = _Terminal()
    progress = TqdmProgress(stream=term)
    _run_like_the_engine(progress)
    assert list(progress._bars) == ["features", "training", "prediction", "writing"]
    training = progress._bars["training"]
    assert (training.n, training.total) == (15, 15)  # five runs added to one bar
    progress.close()
    shown = term.getvalue().replace("\r", "\n").splitlines()
    assert not [line for line in shown if line.startswith("stacking fold")]  # beside a bar
    assert any("stacking fold 5/5" in line for line in shown)
    assert progress.summary_lines() == []  # a terminal saw the bars: no summary


def test_quiet_writes_nothing_and_cancel_still_works():
    log = io.StringIO()
    progress = TqdmProgress(disable=True, stream=log)
    progress.stage("features", 2)
    progress.cancel()
    with pytest.raises(Cancelled):
        progress.advance()
    progress.close()
    assert log.getvalue() == ""


def _enhance_with_trust(progress: TqdmProgress) -> None:
    """An enhance run as the engine reports it: the trust check's networks, then the final's."""
    progress.message("per-gene trust: training on 135 spots, scoring the other 45")
    for _phase in range(2):
        progress.stage("features", 4)
        progress.advance(4)
        for fold in range(5):
            progress.message(f"stacking fold {fold + 1}/5")
            progress.stage("training", 2)
            progress.advance(2)
    progress.stage("maps", 3)
    progress.advance(3)


def test_a_log_names_each_phase_as_it_begins_and_its_time():
    log = io.StringIO()
    progress = TqdmProgress(stream=log)
    _enhance_with_trust(progress)
    lines = log.getvalue().splitlines()
    assert lines[0] == "phase: trust check 1 of 2"
    assert lines[1].startswith("phase: final model 2 of 2 (trust check 1 of 2 took ")
    assert len(lines) == 2  # one line per phase while it runs, not one per network
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines[2].startswith("final model 2 of 2 took ") and lines[2].endswith(" s")
    assert [line.split()[0] for line in lines[3:]] == ["features", "training", "maps"]


def test_a_terminal_shows_one_overall_line_with_the_phase_above_the_bars():
    term = _Terminal()
    progress = TqdmProgress(stream=term)
    _enhance_with_trust(progress)
    overall = progress._overall
    assert overall is not None and overall.pos == 0
    assert [abs(bar.pos) for bar in progress._bars.values()] == [1, 2, 3]  # below it
    progress.message("stacking fold 5/5")
    assert "final model 2 of 2" in overall.desc
    shown = term.getvalue().replace("\r", "\n")
    assert "Overall: trust check 1 of 2 · network 3 of 5" in shown
    progress.close()
    assert progress._overall is None


def test_a_note_is_kept_in_a_log_and_above_the_bars_in_a_terminal():
    log = io.StringIO()
    progress = TqdmProgress(stream=log)
    progress.stage("genes", 1)
    progress.note("marker panel 'all': 3 genes mapped")
    progress.message("stacking fold 1/5")
    assert log.getvalue().splitlines() == ["marker panel 'all': 3 genes mapped"]
    term = _Terminal()
    progress = TqdmProgress(stream=term)
    progress.stage("genes", 1)
    progress.note("marker panel 'all': 3 genes mapped")
    assert "marker panel 'all': 3 genes mapped\n" in term.getvalue()
    progress.close()
