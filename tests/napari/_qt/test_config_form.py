"""The Train widget's settings come from RunConfig (magicgui), are checked before any work, and
the run goes through the CLI's run_task."""

from __future__ import annotations

import dataclasses

import pytest

from qt_support import add_sample, fake_recovery

pytestmark = pytest.mark.gui


def test_every_run_config_field_is_documented():
    from napari_trihrge.napari._qt._config_form import field_docs
    from napari_trihrge.tl import RunConfig

    docs = field_docs()
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    assert [n for n in fields if not docs.get(n)] == []
    assert set(docs) == set(fields)  # no entry for a field that does not exist


def test_form_widgets_are_generated_from_run_config(viewer):
    from napari_trihrge.napari._qt import TrainWidget
    from napari_trihrge.napari._qt._config_form import (
        ADVANCED_FIELDS,
        MAIN_FIELDS,
        field_docs,
    )
    from napari_trihrge.tl import RunConfig

    tw = TrainWidget(viewer)
    defaults = RunConfig()
    widgets = {**tw.config_form.widgets, **tw.advanced_form.widgets}
    assert set(widgets) == set(MAIN_FIELDS) | set(ADVANCED_FIELDS)
    for name, widget in widgets.items():
        expected = getattr(defaults, name)
        assert (widget.value == ", ".join(expected) if name == "extra_genes"
                else widget.value == expected), name
        assert widget.native.toolTip() == field_docs()[name] != ""
    # the defaults of the form are RunConfig's defaults
    cfg = tw.make_config()
    for name in widgets:
        assert getattr(cfg, name) == getattr(defaults, name), name
    tw.config_form["extra_genes"].value = "ERBB2; MBP,  CD3E"
    tw.config_form["model_preset"].value = "compact"
    tw.advanced_form["image_input"].value = False
    tw.advanced_form["n_neighbours"].value = 6
    tw.genes_spin.setValue(30)  # the Qt widget underneath drives the magicgui value
    cfg = tw.make_config()
    assert cfg.extra_genes == ("ERBB2", "MBP", "CD3E") and cfg.model_preset == "compact"
    assert cfg.image_input is False and cfg.n_neighbours == 6 and cfg.n_top_genes == 30


def test_invalid_settings_are_refused_before_any_work(viewer, notes, monkeypatch):
    from napari_trihrge.napari._qt import TrainWidget
    from napari_trihrge.workflows import runs

    add_sample(viewer)
    tw = TrainWidget(viewer)
    monkeypatch.setattr(runs, "run_task", lambda *a, **k: pytest.fail("work was started"))
    # the form's ranges and lists refuse most wrong values as they are typed; whatever the
    # run's own check (validate_config) refuses is named before any work starts
    from napari_trihrge.tl import _config

    monkeypatch.setattr(_config, "check_marker_panel", lambda panel: (_ for _ in ()).throw(
        _config.TrihrgeInputError("unknown marker panel 'x'", "choose one")))
    assert tw.start() is None and not tw.running
    assert any("unknown marker panel" in m for m in notes.errors()), notes.errors()


def test_the_widget_runs_the_cli_run_function_and_hands_the_result_to_the_session(
        viewer, qtbot, notes, monkeypatch, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer, TrainWidget
    from napari_trihrge.workflows import runs

    add_sample(viewer)
    tw, ge = TrainWidget(viewer), GeneExplorer(viewer)
    result = fake_recovery(tw.session.adata)
    calls = []

    def run_task(task, adata, out_dir=None, **kwargs):
        calls.append((task, adata, out_dir, kwargs))
        return runs.RunOutput(result, None, out_dir)

    monkeypatch.setattr(runs, "run_task", run_task)
    tw.set_task("recovery")
    tw.holdout_spin.setValue(30)
    tw.config_form["seed"].value = 7
    tw.out_edit.setText(str(tmp_path / "run"))
    assert tw.start() is not None
    qtbot.waitUntil(lambda: not tw.running, timeout=60_000)
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    (task, adata, out_dir, kwargs), = calls
    assert task == "recovery" and adata is tw.session.adata and out_dir == str(tmp_path / "run")
    assert kwargs["holdout_fraction"] == pytest.approx(0.3) and kwargs["seed"] == 7
    assert kwargs["config"].seed == 7 and kwargs["progress"] is not None
    assert tw.session.recovery is result and "Mean PCC" in tw.scores.text()
    assert ge.best_list.count() == len(result.per_gene)
    kinds = [lay.metadata.get("trihrge", {}).get("kind") for lay in viewer.layers]
    assert "recovered" in kinds
    assert not notes.errors()


def test_the_marker_panel_is_chosen_in_the_form_and_is_enhance_only(viewer):
    from napari_trihrge.napari._qt import TrainWidget
    from napari_trihrge.pp.markers import MARKER_PANEL_CHOICES

    tw = TrainWidget(viewer)
    box = tw.config_form["marker_panel"]
    assert [value for value in box.choices] == [*MARKER_PANEL_CHOICES, "none"]
    assert tw.make_config().marker_panel == "all"  # RunConfig's default
    box.value = "breast"
    assert tw.make_config().marker_panel == "breast"
    box.value = "none"
    assert tw.make_config().marker_panel is None
    tw.set_task("recovery")
    assert not box.enabled  # recovery scores the variable genes only
    tw.set_task("enhance")
    assert box.enabled
