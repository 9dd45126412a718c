"""Train and enhance widget: real background runs (tiny models) while the event loop turns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import QTimer

from qt_support import add_sample, fake_recovery, tiny_run_form

pytestmark = pytest.mark.gui



def _widgets(viewer, monkeypatch, **form):
    from napari_trihrge.napari._qt import GeneExplorer, SampleWidget, TrainWidget

    sw, tw, ge = SampleWidget(viewer), TrainWidget(viewer), GeneExplorer(viewer)
    tiny_run_form(tw, monkeypatch, sw, **form)
    return sw, tw, ge


class Ticker:
    """Counts event-loop turns (a QTimer firing every 20 ms) to show the GUI stays live."""

    def __init__(self):
        self.ticks = 0
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)
        self.timer.start(20)

    def _tick(self):
        self.ticks += 1

    def stop(self):
        self.timer.stop()


def test_loss_plot_draws_each_network_over_the_same_epochs(qtbot):
    from napari_trihrge.napari._qt._train_widget import LossCanvas

    canvas = LossCanvas()
    qtbot.addWidget(canvas)
    for network in range(3):  # three networks of 2 epochs each, the last without validation
        canvas.add(1, 1.0 + network, 2.0 if network < 2 else None)
        canvas.add(2, 0.5 + network, 1.5 if network < 2 else None)
    canvas.redraw()
    assert canvas.n_networks == 3
    assert canvas.epochs[:2] == [1, 2] and np.isnan(canvas.epochs[2])
    assert [e for e in canvas.epochs if not np.isnan(e)] == [1, 2, 1, 2, 1, 2]
    assert np.isnan(canvas.val[-1]) and canvas.val[1] == 1.5
    assert canvas.ax.get_xlabel() == "epoch (each of 3 networks)"
    canvas.clear()
    canvas.add(1, 1.0, 1.0)
    canvas.redraw()
    assert canvas.n_networks == 1 and canvas.ax.get_xlabel() == "epoch"


def test_recovery_runs_in_background_and_adds_layers(viewer, qtbot, notes, monkeypatch):
    add_sample(viewer)
    _, tw, ge = _widgets(viewer, monkeypatch)
    tw.set_task("recovery")
    ticker = Ticker()
    worker = tw.start()
    assert worker is not None and tw.running
    assert tw.start() is None  # one run at a time
    qtbot.waitUntil(lambda: not tw.running, timeout=180_000)
    ticker.stop()
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    assert ticker.ticks > 20  # the event loop kept turning during the run
    assert not notes.errors()
    kinds = [lay.metadata.get("trihrge", {}).get("kind") for lay in viewer.layers]
    assert "recovered" in kinds
    rec = viewer.layers[kinds.index("recovered")]
    assert len(rec.data) == tw.session.recovery.predictions.n_obs
    assert "Mean PCC" in tw.scores.text() and "kNN baseline" in tw.scores.text()
    assert ge.best_list.count() > 0
    drawn = np.isfinite(tw.loss.epochs)  # NaN only between two networks' curves
    assert drawn.sum() >= 1 and np.isfinite(np.asarray(tw.loss.train)[drawn]).all()
    assert (~drawn).sum() == tw.loss.n_networks - 1
    assert tw.start_btn.isEnabled() and not tw.cancel_btn.isEnabled()


def test_enhance_adds_map_and_virtual_spots(viewer, qtbot, notes, tmp_path, monkeypatch):
    add_sample(viewer)
    _, tw, ge = _widgets(viewer, monkeypatch)
    tw.set_task("enhance")
    tw.stride_spin.setValue(48.0)  # a coarse map keeps the test fast
    tw.out_edit.setText(str(tmp_path / "run"))
    from napari_trihrge.io import map_store

    monkeypatch.setattr(map_store, "LOCATION_CHUNK", 64)  # the map in several chunks
    computed = []  # map locations whose networks ran (the store's trunks, not the spots')
    factors = map_store.FactorModel.factors
    monkeypatch.setattr(map_store.FactorModel, "factors", lambda self, inputs, y: (
        computed.append(len(inputs)) or factors(self, inputs, y)))
    overall = []  # the horizon line during the run
    show = tw.bars._show_horizon
    tw.bars._show_horizon = lambda text: (overall.append(text), show(text))
    tw.start()
    qtbot.waitUntil(lambda: not tw.running, timeout=300_000)
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    from napari_trihrge.napari._qt._session import get_view

    s, view = tw.session, get_view(viewer)
    assert s.enhance is not None and s.enhance.maps is not None
    # the consistency check, the overview and the viewer's maps: each location's networks ran
    # once, and the maps the viewer got read the run folder swapped into place
    maps = s.enhance.maps
    assert maps.n_chunks >= 3 and sum(computed) == maps.n_locations
    assert maps.path == tmp_path / "run" / map_store.STORE_NAME and maps.ready()
    m = view.find_layer("map")
    v = view.find_layer("virtual")
    assert m is not None and v is not None
    # the result follows the run: held-out summary, the run's per-gene trust, the best gene
    assert "Enhance: held-out check" in tw.scores.text()
    assert "Genes that beat interpolation" in tw.scores.text()
    table = s.trust_table()
    assert ge.best_list.count() == min(50, len(table))
    assert ge.best_list.item(0).data(0x0100) == table.index[0]
    beats = [g for g, b in table["beats_interpolation"].items() if b is True]
    assert s.gene == (beats[0] if beats else table.index[0])
    assert viewer.layers.selection.active is m  # the visible map, not the spread layer
    assert any("trust check 1 of 2" in t for t in overall)
    assert any("final model 2 of 2" in t and "left" in t for t in overall), overall[-5:]
    assert tw.horizon.text() == ""  # cleared when the run ends
    assert tuple(m.scale) == (48.0, 48.0)
    assert m.metadata["trihrge"]["gene"] == s.gene
    # the measured spots are drawn above the map
    names = [lay.name for lay in viewer.layers]
    assert names.index(view.find_layer("spots").name) > names.index(m.name)
    # switching genes reuses the one map layer
    other = [g for g in s.enhance.maps.gene_names if g != s.gene][0]
    assert ge.show_gene(other)
    assert view.find_layer("map") is m and m.metadata["trihrge"]["gene"] == other
    assert sum(computed) == maps.n_locations  # a gene switch runs no network
    assert not notes.errors()
    # the run folder was written and opens again as layers
    from napari_trihrge.napari._reader import get_reader

    run = tmp_path / "run"
    assert (run / "summary.json").is_file() and (run / "maps.store.zarr").is_dir()
    assert (run / "run_complete.json").is_file()  # written aside and swapped in when complete
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")] == []
    # the same run folder as the CLI: overview figure, memory, and the truth scores here
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "overview.png").is_file() and summary["peak_rss_mb"] > 0
    superres = summary["superres"]  # the map against the truth: as the per-gene table says,
    genes = pd.read_csv(run / "superres_genes.csv", index_col=0)  # and not below interpolation
    assert superres["pcc_mean"] == pytest.approx(genes["pcc"].mean(), rel=1e-6)
    assert superres["pcc_mean"] >= superres["baseline_interp_pcc_mean"] - 0.05
    kinds = [kw["metadata"]["trihrge"]["kind"] for _, kw, _ in get_reader(str(run))(str(run))]
    assert kinds == ["image", "map", "virtual"]


def test_cancel_stops_within_seconds_and_leaves_widget_usable(viewer, qtbot, notes, monkeypatch):
    add_sample(viewer)
    _, tw, _ = _widgets(viewer, monkeypatch, max_epochs=5000)
    tw.set_task("recovery")
    rec = fake_recovery()
    tw.session.set_result("recovery", rec, tw.session.adata)  # scores of an earlier run
    n_layers = len(viewer.layers)
    tw.start()
    # while the new run works, the earlier scores stay, marked as from the previous run
    assert "Previous run" in tw.scores.text() and "Mean PCC" in tw.scores.text()
    qtbot.waitUntil(lambda: len(tw.loss.epochs) >= 1, timeout=120_000)  # training under way
    tw.cancel()
    epochs_at_cancel = len(tw.loss.epochs)
    qtbot.waitUntil(lambda: not tw.running, timeout=20_000)
    # cancelling stops within the epoch under way (one more reported at most), not at the end
    assert len(tw.loss.epochs) <= epochs_at_cancel + 1
    assert tw.last_outcome.status == "cancelled"
    assert "Cancelled" in tw.status.text()
    assert len(viewer.layers) == n_layers and tw.session.recovery is rec
    assert "Previous run" in tw.scores.text() and "Mean PCC" in tw.scores.text()
    assert not notes.errors()
    assert tw.start_btn.isEnabled()
    # napari's progress bars spin a nested event loop, so a progress batch can arrive after the
    # outcome: it must not overwrite the final status nor open a new progress bar
    tw._on_events([{"event": "stage", "stage": "train", "total": 5000},
                   {"event": "advance", "stage": "train", "done": 3, "total": 5000}])
    assert "Cancelled" in tw.status.text()
    assert tw.bars.bars == {}


def test_outcome_handled_inside_a_progress_bar_update_keeps_the_final_status(
        viewer, qtbot, monkeypatch):
    """napari's bars call processEvents: the outcome can arrive in the middle of an event batch
    (seen in the user-guide screenshots: 'Training: 19 / 40' after the run had finished)."""
    from napari_trihrge.errors import Cancelled
    from napari_trihrge.napari._qt import _stage_bars
    from napari_trihrge.napari._qt._worker import Outcome

    _, tw, _ = _widgets(viewer, monkeypatch)
    inside_update = []

    class NestedLoopBar:  # stands in for napari.utils.progress
        def __init__(self, total=None, desc=""):
            self.n = 0

        def update(self, k):
            self.n += k
            while inside_update:
                inside_update.pop()()

        def close(self):
            pass

    monkeypatch.setattr(_stage_bars, "napari_progress", NestedLoopBar)
    tw.bars.start()
    inside_update.append(lambda: tw._on_done(Outcome("cancelled", error=Cancelled("stop"))))
    tw._on_events([{"event": "stage", "stage": "training", "total": 40},
                   {"event": "advance", "stage": "training", "done": 19, "total": 40},
                   {"event": "stage", "stage": "prediction", "total": 1}])
    assert tw.status.text().startswith("Cancelled")
    assert list(tw.bars.bars) == ["training"]  # no bar opened for a stage after the outcome
    tw._on_finished()
    assert tw.bars.bars == {}


def test_engine_error_becomes_a_notification(viewer, qtbot, notes, tmp_path, monkeypatch):
    sw, tw, _ = _widgets(viewer, monkeypatch)
    add_sample(viewer)
    sw.encoder_combo.setEditText(str(tmp_path / "missing-encoder.pt"))
    tw.set_task("recovery")
    tw.start()
    qtbot.waitUntil(lambda: not tw.running, timeout=120_000)
    assert tw.last_outcome.status == "error"
    errs = notes.errors()
    assert errs and "missing-encoder.pt" in errs[0] and "Traceback" not in errs[0]
    assert tw.start_btn.isEnabled()


def test_start_without_sample_is_a_notification(viewer, notes, monkeypatch):
    _, tw, _ = _widgets(viewer, monkeypatch)
    assert tw.start() is None
    assert any("Open a sample" in e for e in notes.errors())


def test_recovery_scores_show_the_noise_ceiling():
    from napari_trihrge.napari._qt._train_widget import SCORE_HELP, recovery_scores_html

    html = recovery_scores_html({"pcc_mean": 0.16, "baseline_knn_pcc_mean": 0.125,
                                 "noise_ceiling_pcc_mean": 0.4, "fraction_of_ceiling": 0.4,
                                 "n_hidden": 10, "n_genes_scored": 5})
    assert "Noise ceiling" in html and "0.400" in html and "40%" in html
    assert "counting noise" in SCORE_HELP["noise_ceiling_pcc_mean"]
    assert "Noise ceiling" not in recovery_scores_html({"pcc_mean": 0.16})  # older summaries


def test_save_to_a_used_folder_asks_in_the_panels_words(viewer, qtbot, notes, tmp_path, monkeypatch):
    """A used folder under Save to: refused before any work, in the panel's words (no CLI
    --overwrite); ticking the panel's overwrite box lets the run start."""
    add_sample(viewer)
    _, tw, _ = _widgets(viewer, monkeypatch)
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("keep me")
    tw.out_edit.setText(str(used))
    assert tw.start() is None and not tw.running
    said = tw.status.text() + " ".join(notes.errors())
    assert "replace what the folder holds" in said and "--overwrite" not in said
    assert (used / "notes.txt").read_text() == "keep me"
    tw.overwrite_check.setChecked(True)
    assert tw.start() is not None
    tw.cancel()
    qtbot.waitUntil(lambda: not tw.running, timeout=120_000)
    assert tw.last_outcome.status == "cancelled"
    assert (used / "notes.txt").read_text() == "keep me"  # a cancelled run changes nothing


def test_genes_asked_in_the_viewer_are_mapped_by_the_next_run(viewer, qtbot, monkeypatch):
    """A gene shown by name before Start joins the run's genes (RunConfig.extra_genes), even
    when it is not variable enough to be picked; the panel says so."""
    from napari_trihrge.napari import layers as L

    add_sample(viewer)
    _, tw, ge = _widgets(viewer, monkeypatch)
    ad = tw.session.adata
    quiet = L.most_variable_genes(ad, ad.n_vars)[-1]  # the least variable gene
    assert ge.show_gene(quiet)
    assert quiet in tw.asked_note.text() and tw.asked_note.isVisibleTo(tw)
    assert quiet in tw.make_config().extra_genes
    tw.config_form["extra_genes"].value = "ERBB2"
    assert tw.make_config().extra_genes[:2] == ("ERBB2", quiet)


def test_density_choices_are_the_engine_rule(viewer):
    from napari_trihrge.geometry import DEFAULT_DENSITY_FACTOR, DENSITY_FACTORS
    from napari_trihrge.napari._qt import TrainWidget

    tw = TrainWidget(viewer)
    combo = tw.factor_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(DENSITY_FACTORS)
    assert combo.currentData() == DEFAULT_DENSITY_FACTOR
