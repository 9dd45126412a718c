"""The napari session model without Qt or a display: load a sample and results, change the
gene, and check the events it sends (the layer view is tested in _qt/test_layer_view.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_RUN
from qt_support import fake_enhance, fake_recovery, sample_adata


class Recorder:
    """Every event of a SessionModel, in order, with its arguments."""

    NAMES = ("sample_changed", "result_added", "recovery_changed", "enhance_changed",
             "outputs_opened", "display_requested", "gene_changed", "scores_changed")

    def __init__(self, model):
        self.events: list[tuple] = []
        for name in self.NAMES:
            getattr(model, name).connect(lambda *args, n=name: self.events.append((n, *args)))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def last(self, name: str) -> tuple:
        return [e for e in self.events if e[0] == name][-1]


@pytest.fixture
def model():
    from napari_trihrge.napari.session import SessionModel

    return SessionModel()


def test_importing_the_model_loads_neither_qt_nor_napari():
    code = ("import sys, napari_trihrge.napari.session as s; s.SessionModel(); "
            "bad = sorted(m for m in sys.modules if m == 'napari' or m.startswith("
            "('napari.', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', "
            "'superqt', 'vispy'))); print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_changing_the_gene_sends_what_to_draw_then_the_gene(model):
    from napari_trihrge.napari import layers as L

    ad = sample_adata()
    rec = Recorder(model)
    model.set_sample(ad)
    assert rec.names() == ["sample_changed"] and rec.events[0][1] is ad
    model.set_sample(ad)  # the same sample again: no event
    assert rec.names() == ["sample_changed"]
    shown = model.show_gene("ERBB2")
    assert rec.names()[1:] == ["display_requested", "gene_changed"]
    plan = rec.last("display_requested")[1]
    expected = L.gene_expression(ad, ["ERBB2"])["ERBB2"].to_numpy()
    np.testing.assert_allclose(plan.values["spots"], expected)
    assert plan.map_values is None and plan.map_missing == ""
    lo, hi = plan.limits
    assert lo < hi and lo >= expected.min() and hi <= expected.max()
    beyond = float(np.mean((expected < lo) | (expected > hi)))
    assert shown == {"limits": plan.limits, "map_missing": "", "map": False, "spread": False,
                     "map_pending": False, "spots": True, "recovered": False, "virtual": False,
                     "clipped": {"spots": pytest.approx(beyond)}}
    assert model.asked_genes == ["ERBB2"]  # a run started now maps it too
    assert rec.last("gene_changed") == ("gene_changed", "ERBB2")
    assert model.gene == "ERBB2" and model.contrast_limits == plan.limits
    other = [g for g in ad.var_names if g != "ERBB2"][0]
    model.show_gene(other)
    assert model.gene == other and rec.last("gene_changed")[1] == other


def test_a_map_the_view_defers_is_pending_not_computed(model):
    """The view's thread never computes a map that is not ready: the model leaves it pending
    (the view has it computed in a worker and shows the gene again)."""
    from qt_support import truth_maps

    maps = truth_maps()
    gene = maps.gene_names[1]
    read = []  # the genes whose map was read
    values = maps.values
    maps.values = type("Counted", (), {"__getitem__": lambda self, i: read.append(i)
                                       or values[i]})()
    model.add_source("map", maps)
    model.defer_map = lambda m, g: m is maps and g == gene
    shown = model.show_gene(gene)  # no sample, no map yet: not an error
    assert shown["map_pending"] and not shown["map"] and shown["map_missing"] == ""
    assert read == [] and model.gene == gene
    model.defer_map = lambda m, g: False
    shown = model.show_gene(gene)
    assert shown["map"] and not shown["map_pending"] and read == [1]


def test_an_unknown_gene_is_an_input_error_and_sends_nothing(model):
    from napari_trihrge.errors import TrihrgeInputError

    model.set_sample(sample_adata())
    rec = Recorder(model)
    with pytest.raises(TrihrgeInputError, match="NOT_A_GENE"):
        model.show_gene("NOT_A_GENE")
    assert rec.events == [] and model.gene is None


def test_loading_a_recovery_result_sends_its_events_and_shows_a_gene_of_it(model):
    ad = sample_adata()
    result = fake_recovery(ad)
    rec = Recorder(model)
    shown = model.set_result("recovery", result, ad)
    assert rec.names() == ["sample_changed", "result_added", "recovery_changed",
                           "scores_changed", "display_requested", "gene_changed"]
    assert rec.last("result_added")[1:] == ("recovery", result)
    assert rec.last("scores_changed")[1] == {"task": "recovery", **result.metrics}
    # no gene was shown yet: the first gene of the per-gene table
    assert model.gene == str(result.per_gene.index[0]) and shown["recovered"]
    assert model.recovery is result and model.source("recovered") is result.predictions
    assert set(result.predictions.var_names) <= set(model.genes())
    # a later recovery keeps the shown gene when it has it
    model.show_gene("TUMOR_3")
    model.set_result("recovery", fake_recovery(ad), ad)
    assert model.gene == "TUMOR_3"
    assert model.trust("STROMA_4")["beats_interpolation"] is False  # PCC 0.1 vs kNN 0.2


def test_enhanced_maps_share_the_scale_and_a_gene_without_a_map_says_why(model):
    from napari_trihrge.tl import DenseMaps

    ad = sample_adata()
    enh = fake_enhance(ad)
    keep = [i for i, g in enumerate(enh.maps.gene_names) if g != "STROMA_4"]
    enh.maps = DenseMaps(values=np.asarray(enh.maps.values)[keep], stride_um=enh.maps.stride_um,
                         origin_rc_um=enh.maps.origin_rc_um, mask=enh.maps.mask,
                         gene_names=[enh.maps.gene_names[i] for i in keep])
    rec = Recorder(model)
    model.set_sample(ad)
    model.enhance = enh  # set directly (as a result opened elsewhere): maps become current
    assert rec.last("enhance_changed")[1] is enh and model.maps() is enh.maps
    gene = enh.maps.gene_names[0]
    shown = model.show_gene(gene)
    plan = rec.last("display_requested")[1]
    assert shown["map"] and plan.map_values.shape == enh.maps.mask.shape
    lo, hi = plan.limits
    finite = plan.map_values[np.isfinite(plan.map_values)]
    assert lo <= np.percentile(finite, 50) <= hi  # one scale for spots and map
    shown = model.show_gene("STROMA_4")  # a gene of the sample that was not modelled
    assert not shown["map"] and shown["spots"]
    assert "No enhanced map for STROMA_4" in shown["map_missing"]
    # a new sample drops the old sample's run results
    model.set_sample(sample_adata().copy())
    assert model.enhance is None and model.recovery is None


def test_results_opened_elsewhere_become_sources_until_removed(model):
    ad = sample_adata()
    model.set_sample(ad)
    first, second = fake_recovery(ad).predictions, fake_recovery(ad).predictions
    rec = Recorder(model)
    model.add_source("recovered", first)
    model.add_source("recovered", second)
    assert rec.names() == ["outputs_opened", "outputs_opened"]
    assert model.source("recovered") is second  # the latest wins
    model.remove_source("recovered", second)
    assert model.source("recovered") is first
    assert model.show_gene("ERBB2")["recovered"]
    with pytest.raises(ValueError):
        model.add_source("spots", first)


def test_a_run_through_the_cli_path_lands_in_the_model(model, tmp_path):
    """What the Train widget does, without Qt: run_task (the CLI's path) then set_result."""
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.runs import run_task

    ad = sample_adata()
    out = run_task("recovery", ad, tmp_path / "run", config=RunConfig(**TINY_RUN),
                   holdout_fraction=0.5)
    assert out.out_dir == tmp_path / "run" and (out.out_dir / "run_complete.json").is_file()
    assert out.summary["recovery"]["pcc_mean"] == pytest.approx(out.result.metrics["pcc_mean"])
    rec = Recorder(model)
    shown = model.set_result("recovery", out.result, ad)
    assert shown["recovered"] and model.gene in out.result.predictions.var_names
    assert rec.last("scores_changed")[1]["pcc_mean"] == out.result.metrics["pcc_mean"]
    assert model.trust(model.gene) is not None


def test_a_map_too_fine_to_show_whole_is_prepared_and_shown_at_every_nth_pixel(
        model, tmp_path, monkeypatch):
    """The Train panel's Enhance at a fine stride (its path without Qt): the networks run at
    the pixels the viewer shows, every n-th, not at every location of the map; the session
    shows those maps and says so, and the run's maps stay whole."""
    import napari.utils.notifications

    from napari_trihrge.io import map_store
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.runs import run_task

    expanded: dict[int, int] = {}
    expand = map_store.FactorMaps._expand

    def counted(self, inputs):
        expanded[id(self)] = expanded.get(id(self), 0) + len(inputs)
        return expand(self, inputs)

    monkeypatch.setattr(map_store.FactorMaps, "_expand", counted)
    monkeypatch.setattr(map_store, "DISPLAY_LOCATIONS", 1500)
    told: list[str] = []
    monkeypatch.setattr(napari.utils.notifications, "show_info", told.append)
    ad = sample_adata()
    out = run_task("enhance", ad, tmp_path / "run", config=RunConfig(**TINY_RUN),
                   factor=2, stride_um=16.0, prepare_maps=True)
    whole = out.result.maps
    # the whole map's consistency check ran at the spots' disks only (as on the command line),
    # and it keeps no more factors than any map does: the viewer never shows its other pixels
    assert whole.n_locations > 1500 and not whole.whole_chunks
    assert whole.cache_bytes == map_store.FACTOR_CACHE_BYTES
    step = whole.display_step(2**40)
    assert step > 1
    shown = whole.every(step)
    assert shown.n_locations <= 1500 and shown.ready()  # prepared in the run's worker
    assert expanded[id(shown)] == shown.n_locations  # each shown location's networks once
    model.set_result("enhance", out.result, ad)
    assert model.maps() is shown and len(told) == 1 and f"one pixel in {step}" in told[0]
    gene = model.gene
    np.testing.assert_allclose(shown[gene], whole[gene][::step, ::step], atol=1e-5,
                               equal_nan=True)
    assert expanded[id(shown)] == shown.n_locations  # the shown gene ran nothing again


def test_spots_and_a_narrow_map_share_a_scale_that_covers_both(model):
    """A map that varies less than the spots (ERBB2 on her2st: map 3.9-4.8, spots 0-5.3) must
    not narrow the scale until the spots look binary; what is beyond it is counted."""
    from napari_trihrge.tl import DenseMaps

    ad = sample_adata()
    enh = fake_enhance(ad)
    vals = np.asarray(enh.maps.values, dtype=np.float32).copy()
    gene = enh.maps.gene_names[0]
    spots = model._gene_values(ad, gene)
    centre = float(np.median(spots[spots > 0]))
    vals[0] = np.where(np.isfinite(vals[0]), centre, np.nan)  # a flat map at the spots' middle
    vals[0, 0, 0] = centre + 0.1
    enh.maps = DenseMaps(values=vals, stride_um=enh.maps.stride_um, mask=enh.maps.mask,
                         origin_rc_um=enh.maps.origin_rc_um, gene_names=enh.maps.gene_names)
    model.set_sample(ad)
    model.enhance = enh
    shown = model.show_gene(gene)
    lo, hi = shown["limits"]
    assert lo <= np.percentile(spots, 1) and hi >= np.percentile(spots, 99)
    assert shown["clipped"]["spots"] < 0.02 and shown["clipped"]["map"] == 0.0


def test_after_a_run_the_best_trusted_gene_or_the_asked_one_is_shown(model):
    """The first map after a run is the gene the user asked for, else the run's best-trusted
    gene (not the first gene, not one below interpolation); the run's summary is sent."""
    import pandas as pd

    from napari_trihrge.napari.session import run_scores

    ad = sample_adata()
    enh = fake_enhance(ad)
    genes = list(enh.maps.gene_names)
    # the first gene scores highest but loses to kNN; the third is the best that beats it
    enh.trust = pd.DataFrame({"pcc": [0.9, 0.2, 0.7], "pcc_baseline_knn": [0.95, 0.1, 0.3],
                              "pcc_gain": [-0.05, 0.1, 0.4],
                              "beats_interpolation": [False, True, True]},
                             index=pd.Index(genes[:3], name="gene"))
    enh.metrics = {"trust": {"pcc_mean": 0.6, "baseline_knn_pcc_mean": 0.45,
                             "n_genes_scored": 3, "n_genes_beating_interpolation": 2}}
    rec = Recorder(model)
    tables = []
    model.trust_changed.connect(tables.append)
    model.set_result("enhance", enh, ad)
    assert model.gene == genes[2]
    assert rec.last("scores_changed")[1] == {"task": "enhance", **enh.metrics["trust"]}
    assert list(tables[-1].index[:3]) == [genes[0], genes[2], genes[1]]  # best PCC first
    assert tables[-1]["beats_interpolation"].tolist()[:3] == [False, True, True]
    model.show_gene(genes[1])  # asked by the user: the next run shows it first
    model.set_result("enhance", enh, ad)
    assert model.gene == genes[1] and model.asked_genes == [genes[1]]
    assert run_scores("predict", enh)["n_genes_beating_interpolation"] == 2
