"""Apply a trained model in the viewer: on the open sample and on an H&E opened alone; the
Train panel saves its model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, TINY_RUN, TINY_TRAIN
from qt_support import add_sample, tiny_run_form

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from napari_trihrge import tl as tasks
    from napari_trihrge.datasets import synthetic_sample

    cfg = tasks.RunConfig(n_top_genes=20, model=dict(TINY_MODEL), train=dict(TINY_TRAIN),
                          device="cpu")
    res = tasks.train([synthetic_sample(seed=7, size_um=(900.0, 900.0), n_genes=40)],
                      image_only=True, config=cfg)
    path = tmp_path_factory.mktemp("apply") / "model"
    res.model.save(path)
    return path


def L_warns(trust) -> bool:
    from napari_trihrge.napari import layers as L

    return L.trust_warns(trust)


def _open_bare_png(viewer, png):
    """An H&E alone: a PNG (no pixel size recorded), opened with napari's own reader."""
    from napari_trihrge.datasets import synthetic_sample

    rgb = synthetic_sample(seed=8, size_um=(900.0, 900.0), n_genes=40).uns["spatial"][
        "synthetic"]["images"]["hires"]
    Image.fromarray(rgb).save(png)
    viewer.open(str(png), plugin="napari")


def _widget(viewer, model_dir):
    from napari_trihrge.napari._qt import ApplyModelWidget, SampleWidget

    sw = SampleWidget(viewer)
    sw.device_combo.setCurrentText("cpu")
    w = ApplyModelWidget(viewer)
    w.model_edit.setText(str(model_dir))
    w.stride_spin.setValue(48.0)
    return w


def test_apply_to_the_open_sample(viewer, qtbot, notes, model_dir):
    add_sample(viewer)
    w = _widget(viewer, model_dir)
    w.refresh_targets()
    assert w.target_combo.currentData() == "__sample__"
    assert w.start() is not None and w.running
    qtbot.waitUntil(lambda: not w.running, timeout=300_000)
    assert w.last_outcome.status == "ok", w.last_outcome.message
    from napari_trihrge.napari._qt._session import get_view

    view = get_view(viewer)
    assert view.find_layer("map") is not None and view.find_layer("virtual") is not None
    assert "measured spots" in w.scores.text()
    assert not notes.errors()


def test_outcome_inside_a_progress_bar_update_keeps_the_final_status(
        viewer, qtbot, notes, model_dir, monkeypatch):
    """napari's bars spin a nested event loop: the outcome can be handled in the middle of a
    batch of progress events, before the worker's finished signal; the rest of the batch must
    neither open a bar nor overwrite the outcome's status line."""
    from napari_trihrge.errors import Cancelled
    from napari_trihrge.napari._qt import _stage_bars
    from napari_trihrge.napari._qt._worker import Outcome, QueueProgress

    w = _widget(viewer, model_dir)
    opened = []

    class NestedLoopBar:  # stands in for napari.utils.progress
        def __init__(self, total=None, desc=""):
            self.n = 0
            opened.append(desc)

        def update(self, k):
            self.n += k
            if self.n == 3:  # the outcome arrives inside this update
                w._on_done(Outcome("cancelled", error=Cancelled("stop")))

        def close(self):
            pass

    monkeypatch.setattr(_stage_bars, "napari_progress", NestedLoopBar)
    w.progress = QueueProgress()  # as start() leaves it, the run not cancelled
    w.bars.start()
    w._on_events([{"event": "stage", "stage": "prediction", "total": 5},
                  {"event": "advance", "stage": "prediction", "done": 3, "total": 5},
                  {"event": "stage", "stage": "maps", "total": 5}])
    assert opened == ["Predicting"]
    assert w.status.text().startswith("Cancelled")
    w._on_finished()
    assert w.bars.bars == {} and w.start_btn.isEnabled()


def test_apply_to_an_image_opened_alone(viewer, qtbot, notes, model_dir, tmp_path):

    _open_bare_png(viewer, tmp_path / "slide.png")
    w = _widget(viewer, model_dir)
    w.refresh_targets()
    assert w.target_combo.currentData() == "slide"
    assert w.start() is None  # a PNG carries no pixel size: asked for, nothing started
    assert any("pixel size" in m for m in notes.errors())
    w.um_spin.setValue(1.0)
    assert w.start() is not None
    qtbot.waitUntil(lambda: not w.running, timeout=300_000)
    assert w.last_outcome.status == "ok", w.last_outcome.message
    from napari_trihrge.napari._qt._session import get_view

    m = get_view(viewer).find_layer("map")
    assert m is not None and tuple(m.scale) == (48.0, 48.0)
    assert tuple(viewer.layers["slide"].scale) == (1.0, 1.0)
    virt = get_view(viewer).find_layer("virtual").metadata["adata"]
    assert not virt.obs["is_measured"].any()
    assert np.isfinite(np.asarray(w.last_outcome.result.virtual.X)).all()
    # the pixel size entered stays after the run added its layers (ready for the next run)
    assert w.target_combo.currentData() == "slide" and w.um_spin.value() == 1.0
    # the panel gives the model's held-out summary from its training sections
    assert "Model trust" in w.scores.text() and "beat interpolation" in w.scores.text()
    assert "accuracy here is unknown" in w.scores.text()


def test_train_panel_saves_its_model(viewer, qtbot, notes, tmp_path, monkeypatch):
    from napari_trihrge.io.model_folder import load_model_folder
    from napari_trihrge.napari._qt import SampleWidget, TrainWidget

    add_sample(viewer)
    sw, tw = SampleWidget(viewer), TrainWidget(viewer)
    tiny_run_form(tw, monkeypatch, sw)
    tw.set_task("recovery")
    assert not tw.save_model_btn.isEnabled()
    tw.start()
    qtbot.waitUntil(lambda: not tw.running, timeout=300_000)
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    assert tw.save_model_btn.isEnabled()
    out = tw.save_model(str(tmp_path / "saved"))
    model = load_model_folder(out)
    assert model.description["task"] == "recovery" and len(model.genes) == TINY_RUN["n_top_genes"]


def test_explorers_on_a_bare_image_prediction(viewer, qtbot, notes, model_dir, tmp_path):
    """An H&E opened alone, a trained image-only model applied: the gene explorer picks a gene
    (one colour bar, trust unknown on this slide since nothing was measured) and the region
    explorer compares enhanced means inside vs outside, saying that no test can be run."""
    from napari_trihrge.napari._qt import GeneExplorer, RegionExplorer

    _open_bare_png(viewer, tmp_path / "bare.png")
    w = _widget(viewer, model_dir)
    ge, rx = GeneExplorer(viewer), RegionExplorer(viewer)
    w.refresh_targets()
    w.um_spin.setValue(1.0)
    assert w.start() is not None
    qtbot.waitUntil(lambda: not w.running, timeout=300_000)
    assert w.last_outcome.status == "ok", w.last_outcome.message
    s = w.session
    assert s.adata is None  # no sample: nothing was measured

    # gene explorer: every model gene can be picked, case-insensitively
    genes = list(w.last_outcome.result.virtual.var_names)
    assert set(genes) <= set(ge.model.stringList())
    gene = genes[-1]
    ge.search.setText(gene.lower())
    ge._on_enter()
    assert s.gene == gene
    from napari_trihrge.napari._qt._session import get_view

    m = get_view(viewer).find_layer("map")
    assert m.visible and m.metadata["trihrge"]["gene"] == gene
    lo, hi = s.contrast_limits
    assert np.isfinite([lo, hi]).all() and hi > lo
    bars = [lay for lay in viewer.layers if getattr(getattr(lay, "colorbar", None), "visible",
                                                     False)
            or getattr(getattr(lay, "face_colorbar", None), "visible", False)]
    assert bars == [m]
    trust = ge.trust_label.text()
    assert "unknown on this slide" in trust and "training sections" in trust
    assert "beats interpolation:" not in trust
    recorded = s.trust(gene)
    # below interpolation on the training sections: said and marked, bare slide or not
    assert ("NOT better" in trust or "no signal" in trust) == L_warns(recorded)
    from napari_trihrge.napari._qt._display import canvas_text_overlay

    canvas = canvas_text_overlay(viewer).text
    assert "unknown on this slide" in canvas and max(map(len, canvas.splitlines())) <= 70
    assert ("(not better than interpolation)" in m.name) == L_warns(recorded)
    assert not notes.errors()
    assert not ge.show_gene("NO_SUCH_GENE")  # a notification, no crash
    assert ge.set_side_by_side(False) and not ge.set_side_by_side(True)  # no measured spots

    # region explorer: a square over the tissue centre; enhanced means, no test
    assert rx.compute() is None and "Draw" in rx.message.text()
    rx.start_drawing()
    layer = rx.regions_layer()
    layer.add_polygons([np.array([[300.0, 300.0], [300.0, 600.0], [600.0, 600.0],
                                  [600.0, 300.0]])])
    stats = rx.compute()
    assert stats is not None, rx.message.text()
    text = rx.message.text()
    assert "no measured spots" in text.lower() and "test" in text
    table = stats.table
    assert len(table) and np.isfinite(table["enhanced_inside"]).all()
    assert np.isfinite(table["enhanced_outside"]).all()
    assert not {"p_value", "fdr", "measured_inside", "n_spots_inside"} & set(table.columns)
    assert "spots" not in text.replace("measured spots", "") and "enhanced points" in text
    assert rx.table.rowCount() == len(table) and rx.export_btn.isEnabled()
    out = tmp_path / "regions.csv"
    rx.export_csv(str(out))
    assert out.is_file()
    assert len(notes.errors()) == 1  # only the unknown gene
