"""The layer view draws the session model: no widget is needed between them."""

from __future__ import annotations

import numpy as np
import pytest

from qt_support import add_sample, fake_recovery, fake_run_with_trust

pytestmark = pytest.mark.gui


def test_the_view_draws_what_the_model_decides(viewer):
    from napari_trihrge.napari._qt._session import get_session, get_view

    _, spots = add_sample(viewer)
    model, view = get_session(viewer), get_view(viewer)
    assert model.adata is spots.metadata["adata"]  # the view handed the opened sample over
    result = fake_recovery(model.adata)
    shown = model.set_result("recovery", result)
    rec = view.find_layer("recovered")
    assert rec is not None and rec.metadata["adata"] is result.predictions
    gene = model.gene
    assert shown["spots"] and shown["recovered"]
    for layer in (spots, rec):  # one colour scale, the model's
        assert layer.metadata["trihrge"]["gene"] == gene
        assert tuple(layer.face_contrast_limits) == pytest.approx(model.contrast_limits)
    # a gene the predictions do not have: they are hidden, not left on the old gene
    other = next(g for g in model.adata.var_names if g not in result.predictions.var_names)
    assert not model.show_gene(other)["recovered"] and not rec.visible
    # removing the layer removes its data from the model too
    viewer.layers.remove(rec)
    assert model.source("recovered") is None


def test_a_closed_dock_is_not_called_back(viewer, qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent

    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._qt._session import get_session

    add_sample(viewer)
    model = get_session(viewer)
    ge = GeneExplorer(viewer)
    n_before = len(model.gene_changed)
    assert n_before >= 1
    ge.deleteLater()  # the Python object lives on; its Qt widget is deleted
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    qtbot.waitUntil(lambda: len(model.gene_changed) < n_before, timeout=5000)
    gene = str(model.adata.var_names[0])
    assert model.show_gene(gene)["spots"]  # no call into the deleted widget
    assert np.isfinite(model.contrast_limits).all()


def test_the_result_follows_the_run(viewer, qtbot):
    """After enhance: the Train panel shows the held-out summary, Best predicted genes lists
    the run's per-gene trust (orange below interpolation), the first map is the best-trusted
    gene, the visible map layer is selected (not the hidden spread) and the scale bar is on."""
    from napari_trihrge.napari._qt import GeneExplorer, TrainWidget
    from napari_trihrge.napari._qt._display import WARN_COLOUR
    from napari_trihrge.napari._qt._session import get_session, get_view

    add_sample(viewer)
    tw, ge = TrainWidget(viewer), GeneExplorer(viewer)
    model, view = get_session(viewer), get_view(viewer)
    assert "Run Enhance or Recovery" in ge.best_note.text()
    result = fake_run_with_trust(model.adata)
    genes = list(result.maps.gene_names)
    model.set_result("enhance", result)
    # the first map: the best gene that beats interpolation, not the top PCC that loses
    assert model.gene == genes[2]
    m = view.find_layer("map")
    assert m.visible and m.metadata["trihrge"]["gene"] == genes[2]
    assert viewer.layers.selection.active is m
    text = tw.scores.text()
    n_beat = result.metrics["trust"]["n_genes_beating_interpolation"]
    assert "Enhance: held-out check" in text and f"{n_beat} of {len(genes)}" in text
    assert "0.950" not in text and f"{result.metrics['trust']['pcc_mean']:.3f}" in text
    first = ge.best_list.item(0)
    assert first.data(0x0100) == genes[0] and "not better than interpolation" in first.text()
    assert first.foreground().color().name() == WARN_COLOUR
    assert ge.best_list.count() == min(50, len(genes))
    assert f"{n_beat} of {len(genes)} genes beat" in ge.best_note.text()
    bar = viewer.canvas.overlays.scale_bar
    assert bar.visible and str(m.units[0]) == "micrometer"


def test_a_gene_below_interpolation_is_orange_on_a_bare_slide(viewer, qtbot):
    """A prediction on a slide where nothing was measured: a gene that lost to kNN on the
    model's training sections is orange on the canvas, the map name and the panels."""
    from napari_trihrge.napari._qt import ApplyModelWidget, GeneExplorer
    from napari_trihrge.napari._qt._display import WARN_COLOUR, canvas_text_overlay
    from napari_trihrge.napari._qt._session import get_session, get_view

    aw, ge = ApplyModelWidget(viewer), GeneExplorer(viewer)
    model, view = get_session(viewer), get_view(viewer)
    result = fake_run_with_trust(task="predict")
    genes = list(result.maps.gene_names)
    model.set_result("predict", result)
    assert model.gene == genes[2]
    assert "Model trust" in aw.scores.text() or model.scores["n_genes_scored"] == len(genes)
    model.show_gene(genes[0])  # held-out PCC 0.90 vs kNN 0.95 on the training sections
    label = canvas_text_overlay(viewer)
    assert "NOT better than interpolation" in label.text
    assert max(map(len, label.text.splitlines())) <= 56  # fits a narrow canvas
    assert np.allclose(label.color, np.array([0xFF, 0xB7, 0x4D, 0xFF]) / 255)
    assert view.find_layer("map").name.endswith("(not better than interpolation)")
    assert WARN_COLOUR in ge.trust_label.styleSheet()
    model.show_gene(genes[2])
    assert not view.find_layer("map").name.endswith("(not better than interpolation)")


def test_an_he_opened_again_or_later_stays_under_the_maps(viewer, qtbot):
    """The same H&E opened a second time (say from the run folder) reuses the open layer; an
    H&E opened after the results goes under them."""
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt._session import get_session, get_view

    img, _ = add_sample(viewer)
    model, view = get_session(viewer), get_view(viewer)
    model.set_result("enhance", fake_run_with_trust(model.adata))
    n = len(viewer.layers)
    data, kwargs, _ = L.image_layer(model.adata)
    kwargs["metadata"]["trihrge"]["source"] = "/somewhere/run"
    viewer.add_image(data, **kwargs)
    qtbot.waitUntil(lambda: len(viewer.layers) == n, timeout=5000)
    assert img in viewer.layers
    viewer.layers.remove(img)
    again = viewer.add_image(data, **kwargs)  # no copy open now: added, under the map
    qtbot.waitUntil(lambda: list(viewer.layers).index(again) == 0, timeout=5000)
    assert view.find_layer("image") is again


def _open_second_sample(viewer, name="second"):
    """Another section (the synthetic sample under another name), opened as the reader would."""
    from napari_trihrge.napari import layers as L
    from qt_support import sample_adata

    other = sample_adata().copy()
    other.uns["trihrge"] = {**other.uns["trihrge"], "sample": name}
    added = [getattr(viewer, f"add_{kind}")(data, **kw)
             for data, kw, kind in L.sample_layers(other, source=f"/data/{name}")]
    return other, added


def test_a_second_sample_opens_beside_the_first_with_its_own_scale_and_trust(viewer, qtbot):
    """Each sample in its own place: the second section opens to the right of the first,
    never on top; showing a gene on it leaves the first sample's layers, scale and trust as
    they were; selecting the first sample's layer brings its run back; regions are measured
    in the current sample's own coordinates."""
    from napari_trihrge.napari._qt import RegionExplorer
    from napari_trihrge.napari._qt._session import get_session, get_view

    img, spots = add_sample(viewer)
    model, view = get_session(viewer), get_view(viewer)
    first = model.adata
    result = fake_run_with_trust(first)
    model.set_result("enhance", result)
    first_gene, first_limits = model.gene, tuple(spots.face_contrast_limits)
    first_map = view.find_layer("map")
    assert model.trust(first_gene) is not None

    other, (img2, spots2) = _open_second_sample(viewer)
    assert model.adata is other and model.sample_name == "second"
    right_of_first = max(lay.extent.world[1][-1] for lay in (img, spots, first_map))
    assert img2.extent.world[0][-1] > right_of_first
    assert spots2.extent.world[0][-1] > right_of_first
    np.testing.assert_allclose(img2.translate[-1] - img.translate[-1],
                               spots2.translate[-1] - spots.translate[-1])
    # the second sample has no run: nothing of the first sample's run is borrowed
    assert model.enhance is None and model.maps() is None
    assert model.trust(first_gene) is None and model.trust_table() is None
    gene = next(g for g in other.var_names if g != first_gene)
    shown = model.show_gene(gene)
    assert shown["spots"] and not shown["map"]
    assert spots.metadata["trihrge"]["gene"] == first_gene
    assert tuple(spots.face_contrast_limits) == pytest.approx(first_limits)
    assert first_map.visible and first_map.metadata["trihrge"]["gene"] == first_gene
    assert spots2.metadata["trihrge"]["gene"] == gene
    # the first section still shows its own gene: the canvas names the section of this one
    from napari_trihrge.napari._qt._display import canvas_text_overlay

    assert canvas_text_overlay(viewer).text.startswith(f"{gene} on second")

    # regions over the second section: its own spots, in its own coordinates
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    world = spots2.data + np.asarray(spots2.translate)
    lo, hi = world.min(axis=0), world.max(axis=0)
    mid = (lo + hi) / 2
    box = np.array([lo, [lo[0], mid[1]], [hi[0], mid[1]], [hi[0], lo[1]]])
    layer.add_rectangles([box])
    stats = rx.compute()
    assert stats.summary.loc[0, "measured_spots_inside"] > 0.3 * other.n_obs

    # selecting the first sample's layer makes it current again, with its run
    viewer.layers.selection.active = spots
    assert model.adata is first and model.enhance is result
    assert model.trust(first_gene) is not None
