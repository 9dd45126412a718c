"""Dock widgets driven in a real viewer: Sample, Gene explorer, Region explorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtWidgets import QLineEdit

from qt_support import (
    add_sample,
    fake_enhance,
    fake_recovery,
    sample_adata,
)

pytestmark = pytest.mark.gui


def canvas_text_overlay(viewer):
    from napari_trihrge.napari._qt._display import canvas_text_overlay as overlay

    return overlay(viewer)



# ------------------------------------------------------------------------------------------
# Sample widget
# ------------------------------------------------------------------------------------------
def test_sample_widget_opens_synthetic_in_background(viewer, qtbot):
    from napari_trihrge.napari._qt import SampleWidget

    w = SampleWidget(viewer)
    worker = w.open_synthetic()
    assert worker is not None
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    img, spots = viewer.layers
    assert img.rgb and spots.metadata["adata"] is sample_adata()
    assert np.allclose(spots.size, 55.0)
    assert "barcode" in spots.features.columns
    assert w.session.adata is sample_adata()
    assert f"{sample_adata().n_obs} spots" in w.status.text(), w.status.text()


def _slow_second_sample(seconds=0.0, name="second"):
    """A reader stand-in: another section (the synthetic sample renamed), read in ``seconds``."""
    import threading
    import time

    from napari_trihrge.napari import layers as L

    calls = []

    def read(path, image_path=None, **kw):
        calls.append(threading.current_thread())
        time.sleep(seconds)
        other = sample_adata().copy()
        other.uns["trihrge"] = {**other.uns["trihrge"], "sample": name}
        return L.sample_layers(other, source=f"/data/{name}")

    return read, calls


def test_a_sample_opens_in_the_background_without_blocking_the_viewer(viewer, qtbot,
                                                                       monkeypatch):
    """Reading (and building napari's unit registry, seconds on first use) happens in a worker
    thread; the event loop keeps turning meanwhile."""
    import threading

    from qtpy.QtCore import QTimer

    from napari_trihrge.napari import _reader
    from napari_trihrge.napari._qt import SampleWidget, _sample_widget

    read, calls = _slow_second_sample(seconds=1.0)
    monkeypatch.setattr(_reader, "read_sample_layers", read)
    warmed = []
    monkeypatch.setattr(_sample_widget, "warm_units",
                        lambda: warmed.append(threading.current_thread()))
    w = SampleWidget(viewer)
    ticks = [0]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start(20)
    assert w.open_sample("/data/second") is not None
    assert len(viewer.layers) == 0 and "Reading" in w.status.text()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    timer.stop()
    assert ticks[0] > 10  # the viewer stayed live while the sample was read
    main = threading.main_thread()
    assert calls and calls[0] is not main and warmed and warmed[0] is not main
    assert w.session.sample_name == "second"
    # the worker's 'finished' (buttons back) follows its 'returned' (layers added)
    qtbot.waitUntil(w.open_btn.isEnabled, timeout=10_000)


def test_a_second_sample_opens_in_a_new_viewer_when_chosen(viewer, qtbot, monkeypatch):
    """The Sample panel's choice: another sample opens beside the first (default) or in a new
    viewer with its own panels and session; the first viewer's sample, run and trust stay."""
    from qtpy.QtWidgets import QDockWidget

    from napari_trihrge.napari import _reader
    from napari_trihrge.napari._qt import SampleWidget
    from napari_trihrge.napari._qt._session import get_session
    from qt_support import fake_run_with_trust

    w = SampleWidget(viewer)
    assert w.placement == "beside"
    w.open_synthetic()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    first = w.session.adata
    run = fake_run_with_trust(first)
    w.session.set_result("enhance", run)
    gene, n_layers = w.session.gene, len(viewer.layers)
    monkeypatch.setattr(_reader, "read_sample_layers", _slow_second_sample()[0])
    w.set_placement("new_viewer")
    w.open_sample("/data/second")
    qtbot.waitUntil(lambda: bool(w.other_viewers) and len(w.other_viewers[0].layers) == 2,
                    timeout=60_000)
    new = w.other_viewers[0]
    try:
        assert len(viewer.layers) == n_layers  # nothing added to the first viewer
        assert w.session.adata is first and w.session.enhance is run
        assert w.session.trust(gene) is not None
        other = get_session(new)
        assert other is not w.session and other.sample_name == "second"
        assert other.enhance is None and other.trust_table() is None
        titles = [d.windowTitle() for d in new.window._qt_window.findChildren(QDockWidget)]
        assert any("Train and enhance" in t for t in titles), titles
        assert new.layers[0].translate[-1] == 0  # alone in its viewer: not shifted aside
    finally:
        new.close()


def test_sample_widget_bad_path_is_a_notification(viewer, qtbot, notes, tmp_path):
    from napari_trihrge.napari._qt import SampleWidget

    w = SampleWidget(viewer)
    w.open_sample(str(tmp_path / "does-not-exist"))
    qtbot.waitUntil(lambda: bool(notes.errors()), timeout=20_000)
    assert "not found" in notes.errors()[0]
    assert len(viewer.layers) == 0
    qtbot.waitUntil(lambda: w.open_btn.isEnabled(), timeout=5000)


def test_image_button_adds_a_full_resolution_image_to_a_space_ranger_folder(
        viewer, qtbot, tmp_path, monkeypatch):
    import tifffile
    from qtpy.QtWidgets import QFileDialog

    from napari_trihrge.napari._qt import SampleWidget
    from sample_folders import FULL_HW, make_visium_folder

    folder = make_visium_folder(tmp_path)
    full = np.random.default_rng(0).integers(60, 250, (*FULL_HW, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "slide.tif", full)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "slide.tif"), "")))
    w = SampleWidget(viewer)
    w.path_edit.setText(str(folder))
    w.image_btn.click()
    assert w.image_edit.text() == str(tmp_path / "slide.tif")
    w.open_btn.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    img, spots = viewer.layers
    assert img.data.shape[:2] == FULL_HW  # the full-resolution image, not the hires PNG
    assert img.scale[0] == pytest.approx(0.55, rel=2e-3)
    info = spots.metadata["adata"].uns["trihrge"]
    assert info["fullres_image_path"] == str((tmp_path / "slide.tif").resolve())


def test_token_is_masked_and_not_kept(viewer):
    from napari_trihrge.napari._qt import SampleWidget, TrainWidget

    w = SampleWidget(viewer)
    t = TrainWidget(viewer)
    assert w.token_edit.echoMode() == QLineEdit.Password
    w.token_edit.setText("hf_secret_token")
    cfg = t.make_config()
    assert cfg.hf_token == "hf_secret_token"
    assert "hf_secret_token" not in repr(cfg)
    assert "hf_secret_token" not in str(cfg.public_dict())
    # the token lives only in the field: not on the widgets or the session
    for obj in (w, t, w.session):
        assert "hf_secret_token" not in str(vars(obj))
    w.token_edit.clear()
    assert t.make_config().hf_token is None


# Space Ranger's spot diameter reads 27 % small on DLPFC (the lattice is used; test_visium checks
# it); the sample is read in a worker thread, where pytest.warns cannot catch it
@pytest.mark.filterwarnings("ignore:sample dlpfc_151673. the spot diameter")
def test_sample_widget_opens_dlpfc_folder(dlpfc_dir, viewer, qtbot):  # skip before a viewer exists
    from napari_trihrge.napari._qt import SampleWidget

    w = SampleWidget(viewer)
    w.open_sample(str(dlpfc_dir))
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    img, spots = viewer.layers
    assert len(spots.data) == 3639
    # lowres image (scalef 0.045) at 0.726 um/px full res (the lattice) -> ~16.1 um per pixel
    assert 15.5 < img.scale[0] < 16.7
    # spots lie on the image
    h_um = img.data.shape[0] * img.scale[0]
    assert 0 < spots.data[:, 0].min() and spots.data[:, 0].max() < h_um


def test_plugin_menu_widgets_share_one_session(viewer, qtbot):
    """napari hands each plugin widget its own viewer proxy: they must still share state.
    Opened from the Plugins menu (no tabify), the panels join one tab group."""
    docks = {}
    docks["ge"], ge = viewer.window.add_plugin_dock_widget("napari-trihrge", "Gene explorer")
    docks["tw"], tw = viewer.window.add_plugin_dock_widget("napari-trihrge", "Train and enhance")
    docks["rx"], rx = viewer.window.add_plugin_dock_widget("napari-trihrge", "Region explorer")
    assert ge.session is tw.session is rx.session
    main = viewer.window._qt_window
    qtbot.waitUntil(lambda: set(main.tabifiedDockWidgets(docks["ge"])) ==
                    {docks["tw"], docks["rx"]}, timeout=5000)
    add_sample(viewer)
    tw.session.enhance = fake_enhance()
    assert ge.show_gene("ERBB2")
    assert ge.view.find_layer("map") is not None


# ------------------------------------------------------------------------------------------
# Gene explorer
# ------------------------------------------------------------------------------------------
def test_gene_explorer_switch_recolours_spots_and_swaps_map(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer

    _, spots = add_sample(viewer)
    ge = GeneExplorer(viewer)
    s = ge.session
    assert s.adata is sample_adata()
    assert ge.model.rowCount() == 300  # completion over every gene
    s.enhance = fake_enhance()
    s.enhance_changed.emit(s.enhance)

    assert ge.show_gene("ERBB2")
    maps_layers = [lay for lay in viewer.layers if lay.metadata.get("trihrge", {}).get("kind")
                   == "map"]
    assert len(maps_layers) == 1
    m = maps_layers[0]
    first_data = np.asarray(m.data).copy()
    assert spots.face_contrast_limits == pytest.approx(m.contrast_limits)  # one scale
    erbb2_colors = spots.face_color.copy()

    assert ge.show_gene("STROMA_4")
    maps_layers2 = [lay for lay in viewer.layers if lay.metadata.get("trihrge", {}).get("kind")
                    == "map"]
    assert maps_layers2 == [m]  # the same layer, new data
    assert m.name == "enhanced STROMA_4"
    assert not np.allclose(np.asarray(m.data), first_data)
    assert not np.allclose(spots.face_color, erbb2_colors)
    # hovering a spot shows its barcode, then the displayed gene
    assert list(spots.features.columns)[:2] == ["barcode", "STROMA_4"]
    status = spots.get_status(position=tuple(spots.data[0]), world=True,
                              view_direction=None, dims_displayed=[0, 1])
    assert "barcode:" in str(status) and "STROMA_4:" in str(status)
    # tumour marker vs stroma marker: anti-correlated colours on the spots
    tumour = spots.features["ERBB2"].to_numpy() > np.median(spots.features["ERBB2"])
    bright = spots.face_color[:, :3].sum(axis=1)
    assert bright[~tumour].mean() > bright[tumour].mean()
    assert spots.face_contrast_limits == pytest.approx(m.contrast_limits)


def test_gene_explorer_completion_and_unknown_gene(viewer, qtbot, notes):
    from napari_trihrge.napari._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    ge.completer.setCompletionPrefix("erbb")
    assert ge.completer.completionCount() >= 1
    assert ge.completer.currentCompletion() == "ERBB2"
    ge.search.setText("erbb2")  # case-insensitive exact match
    ge._on_enter()
    assert ge.session.gene == "ERBB2"
    assert not ge.show_gene("NOT_A_GENE")
    assert any("NOT_A_GENE" in e for e in notes.errors())


def test_side_by_side_grid_and_back(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._qt._gene_explorer import _grid

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    assert not ge.set_side_by_side(True)  # nothing to compare yet
    ge.session.enhance = fake_enhance()
    ge.show_gene("ERBB2")
    assert ge.set_side_by_side(True)
    grid = _grid(viewer)
    assert grid.enabled and grid.stride == 2 and len(viewer.layers) == 4
    kinds = [lay.metadata.get("trihrge", {}).get("kind") for lay in viewer.layers]
    assert kinds == ["image", "spots", "image-twin", "map"]
    assert viewer.layers[2].data is viewer.layers[0].data  # no copy of the H&E
    assert grid.position(1, viewer.layers) != grid.position(3, viewer.layers)
    ge.set_side_by_side(False)
    assert not grid.enabled and len(viewer.layers) == 3


def test_best_genes_list_from_recovery(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    ge.session.recovery = fake_recovery()
    ge.session.recovery_changed.emit(ge.session.recovery)
    assert ge.best_list.count() == 3
    first = ge.best_list.item(0)
    assert first.text().startswith("ERBB2") and "0.90" in first.text()
    ge._on_best(ge.best_list.item(1))
    assert ge.session.gene == "TUMOR_3"


# ------------------------------------------------------------------------------------------
# Region explorer
# ------------------------------------------------------------------------------------------
def _tumour_box(adata, half_um: float = 160.0):
    """A rectangle around the spots with the highest ERBB2 (a tumour region)."""
    from napari_trihrge.napari import layers as L

    rc = L.spots_rc_um(adata)
    e = L.gene_expression(adata, ["ERBB2"])["ERBB2"].to_numpy()
    top = rc[e >= np.quantile(e, 0.9)]
    c = np.median(top, axis=0)
    h = half_um
    return np.array([c - h, [c[0] - h, c[1] + h], c + h, [c[0] + h, c[1] - h]])


def test_region_table_known_layout_and_csv(viewer, qtbot, tmp_path):
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt import RegionExplorer

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    assert rx.compute() is None and "Draw" in rx.message.text()
    rx.start_drawing()
    layer = rx.regions_layer()
    assert layer.mode == "add_polygon"
    adata = sample_adata()
    layer.add_rectangles([_tumour_box(adata)])
    stats = rx.compute()
    assert stats is not None
    t = stats.table
    assert rx.table.rowCount() == len(t) > 0
    # a tumour region: a tumour marker is among the top genes, up inside
    top = t[t.region == "region 1"].head(10)
    up = top[top["difference"] > 0]["gene"].tolist()
    assert any(g.startswith(("TUMOR", "ERBB2")) for g in up), top
    assert stats.summary.loc[0, "measured_spots_inside"] > 3
    # with enhanced maps the table gains enhanced columns
    rx.session.enhance = fake_enhance()
    rx.session.enhance_changed.emit(rx.session.enhance)
    stats2 = rx.compute()
    assert {"enhanced_inside", "enhanced_outside"} <= set(stats2.table.columns)
    # every measured gene is tested, the run's genes marked
    mapped = set(rx.session.enhance.maps.gene_names)
    assert stats2.table["mapped"].tolist() == [g in mapped for g in stats2.table["gene"]]
    out = tmp_path / "regions.csv"
    rx.export_csv(str(out))
    back = pd.read_csv(out)
    # the CSV holds every gene (not only the rows shown), the sample and where the region is
    assert set(stats2.table.columns) <= set(back.columns)
    assert back["gene"].nunique() == adata.n_vars > len(stats2.table)
    assert (back["sample"] == L.sample_name(adata)).all()
    box = _tumour_box(adata)
    assert back["region_centre_row_um"].iloc[0] == pytest.approx(box[:, 0].mean(), abs=1.0)
    assert back["region_centre_col_um"].iloc[0] == pytest.approx(box[:, 1].mean(), abs=1.0)
    verts = [[float(v) for v in pair.split()] for pair in
             back["region_vertices_rc_um"].iloc[0].split(";")]
    np.testing.assert_allclose(sorted(map(tuple, verts)), sorted(map(tuple, box)), atol=0.1)
    assert set(back.loc[back["mapped"], "gene"]) == mapped & set(adata.var_names)


def test_region_table_refreshes_when_a_run_finishes_and_outlines_keep_their_width(viewer,
                                                                                   qtbot):
    from napari_trihrge.napari._qt import RegionExplorer
    from napari_trihrge.napari._qt._gene_explorer import _camera
    from napari_trihrge.napari._qt._region_explorer import OUTLINE_WIDTH_PX

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    adata = sample_adata()
    layer.add_rectangles([_tumour_box(adata)])
    assert "enhanced_inside" not in rx.compute().table.columns
    enh = fake_enhance(adata)
    enh.virtual = fake_recovery(adata).predictions  # stand-in virtual spots
    rx.session.set_result("enhance", enh, adata)
    # the table shown follows the run without a click (compared in a helper thread)
    qtbot.waitUntil(lambda: "enhanced_inside" in rx.stats.table.columns, timeout=10_000)
    headers = [rx.table.horizontalHeaderItem(i).text() for i in range(rx.table.columnCount())]
    assert "Enh. in" in headers and "Mapped" in headers
    # outlines: the same width on screen at every zoom
    for zoom in (0.25, 4.0):
        _camera(viewer).zoom = zoom
        assert layer.edge_width[0] * zoom == pytest.approx(OUTLINE_WIDTH_PX)


def test_region_comparison_runs_in_the_background_and_the_newest_request_wins(viewer, qtbot,
                                                                                monkeypatch):
    """The panel compares in a helper thread (the GUI thread is free meanwhile); a request
    made while another runs replaces it: only the newest fills the table. A failure is a
    message, not a crash."""
    import threading

    from napari_trihrge import regions as R
    from napari_trihrge.napari._qt import RegionExplorer

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    rx.auto_check.setChecked(False)
    rx.regions_layer(create=True).add_rectangles([_tumour_box(sample_adata())])
    release, threads = threading.Event(), set()
    original = R.region_statistics

    def held(*args, **kwargs):
        threads.add(threading.get_ident())
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(R, "region_statistics", held)
    rx.top_spin.setValue(3)
    rx.compute_btn.click()
    assert rx.busy and "Comparing" in rx.message.text() and rx.stats is None
    rx.top_spin.setValue(5)
    rx.compute_btn.click()  # the newer request
    release.set()
    qtbot.waitUntil(lambda: not rx.busy, timeout=20_000)
    assert threading.get_ident() not in threads
    assert len(rx.stats.table) == 5 and rx.table.rowCount() == 5

    def broken(*args, **kwargs):
        raise ValueError("no statistics today")

    monkeypatch.setattr(R, "region_statistics", broken)
    rx.compute_btn.click()
    qtbot.waitUntil(lambda: not rx.busy, timeout=20_000)
    assert "could not be compared" in rx.message.text()


def test_region_without_spots_gives_a_clear_message(viewer, qtbot):
    from napari_trihrge.napari._qt import RegionExplorer

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    # the top-left corner of the image is background: no spot there
    layer.add_rectangles([np.array([[0, 0], [0, 60], [60, 60], [60, 0]])])
    stats = rx.compute()
    assert stats is not None
    assert "contains no spots" in rx.message.text()
    assert stats.table.empty and not rx.export_btn.isEnabled()


def test_region_updates_when_shapes_change(viewer, qtbot):
    from napari_trihrge.napari._qt import RegionExplorer

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    layer.add_rectangles([_tumour_box(sample_adata())])
    qtbot.waitUntil(lambda: rx.table.rowCount() > 0, timeout=5000)


def test_gene_switch_shows_the_ensemble_spread_layer(viewer, qtbot):
    """With an ensemble, the spread of the shown gene is one (hidden) layer, swapped per gene."""
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    s = ge.session
    enhance = fake_enhance()
    enhance.maps.std = np.abs(np.asarray(enhance.maps.values)) * 0.1  # stand-in spread
    s.enhance = enhance
    s.enhance_changed.emit(s.enhance)

    def spread_layers():
        return [lay for lay in viewer.layers
                if lay.metadata.get("trihrge", {}).get("kind") == "spread"]

    def assert_shows(gene):  # the pixels and scale spread_layer gives the gene
        data, kwargs, _ = L.spread_layer(enhance.maps, gene)
        np.testing.assert_array_equal(np.asarray(layer.data), data)
        np.testing.assert_allclose(layer.contrast_limits, kwargs["contrast_limits"])
        assert layer.metadata["trihrge"]["gene"] == gene == layer.name.rpartition(" ")[2]

    assert ge.show_gene("ERBB2")
    (layer,) = spread_layers()
    assert layer.name == "ensemble spread ERBB2" and not layer.visible
    assert_shows("ERBB2")
    assert viewer.layers.selection.active is ge.view.find_layer("map")  # not the hidden one
    first = np.asarray(layer.data).copy()
    assert ge.show_gene("STROMA_4")
    assert spread_layers() == [layer] and layer.name == "ensemble spread STROMA_4"
    # hidden: its pixels are computed when it is switched on, as they would have been now
    np.testing.assert_array_equal(np.asarray(layer.data), first)
    layer.visible = True
    assert_shows("STROMA_4")
    assert not np.allclose(np.asarray(layer.data), first)
    # shown: each gene's spread at once
    assert ge.show_gene("ERBB2")
    assert_shows("ERBB2")
    # hidden again, then selected (its values read on hover): filled first
    layer.visible = False
    assert ge.show_gene("STROMA_4")
    viewer.layers.selection.active = layer
    assert_shows("STROMA_4")


# ------------------------------------------------------------------------------------------
# What the canvas says: gene, units, trust; genes without a map; hover outside the tissue
# ------------------------------------------------------------------------------------------
def _maps_without(maps, drop):
    from napari_trihrge.tl import DenseMaps

    keep = [i for i, g in enumerate(maps.gene_names) if g not in drop]
    return DenseMaps(values=np.asarray(maps.values)[keep], stride_um=maps.stride_um,
                     origin_rc_um=maps.origin_rc_um,
                     gene_names=[maps.gene_names[i] for i in keep], mask=maps.mask)


def test_canvas_names_the_gene_with_units_and_one_colour_bar(viewer, qtbot):
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt import GeneExplorer

    ge = GeneExplorer(viewer)
    _, spots = add_sample(viewer)
    # on opening, the spots are coloured by a gene: the canvas and the explorer say which
    first = spots.metadata["trihrge"]["gene"]
    assert canvas_text_overlay(viewer).visible and canvas_text_overlay(viewer).text.startswith(first)
    assert first in ge.current.text()
    assert first in GeneExplorer(viewer).current.text()  # a widget opened later says it too
    ge.session.enhance = fake_enhance()
    assert ge.show_gene("ERBB2")
    text = canvas_text_overlay(viewer).text
    assert text.startswith("ERBB2") and L.EXPRESSION_UNITS in " ".join(text.split())
    assert max(map(len, text.splitlines())) <= 56  # wrapped to fit a narrow canvas
    m = ge.view.find_layer("map")
    assert m.colorbar.visible and not spots.face_colorbar.visible  # exactly one colour bar
    assert "log-normalised" in ge.scale_label.text()


def test_gene_without_a_map_hides_the_map_and_says_how_to_get_one(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer

    _, spots = add_sample(viewer)
    ge = GeneExplorer(viewer)
    enh = fake_enhance()
    enh.maps = _maps_without(enh.maps, {"STROMA_4"})
    enh.maps.std = np.abs(np.asarray(enh.maps.values)) * 0.1
    ge.session.enhance = enh
    assert ge.show_gene("ERBB2")
    m = ge.view.find_layer("map")
    spread = ge.view.find_layer("spread")
    spread.visible = True
    assert m.visible and m.metadata["trihrge"]["gene"] == "ERBB2"
    # a gene of the sample that was not modelled: the spots change, the map must not stay on
    # ERBB2 pretending to be STROMA_4
    assert ge.show_gene("STROMA_4")
    assert spots.metadata["trihrge"]["gene"] == "STROMA_4"
    assert not m.visible and not spread.visible
    assert m.metadata["trihrge"]["gene"] is None and "STROMA_4" in m.name
    assert "Extra genes" in ge.missing_label.text() and ge.missing_label.isVisibleTo(ge)
    assert "no enhanced map for STROMA_4" in canvas_text_overlay(viewer).text
    assert spots.face_colorbar.visible  # the colour bar follows the layer that shows the gene
    # back to a modelled gene: the map is shown again, the message goes
    assert ge.show_gene("ERBB2")
    assert m.visible and m.metadata["trihrge"]["gene"] == "ERBB2"
    assert not ge.missing_label.isVisibleTo(ge)


def test_predictions_of_other_genes_are_hidden_not_left_on_the_old_gene(viewer, qtbot):
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    rec = fake_recovery()
    data, kw, _ = L.spots_layer(rec.predictions, ["ERBB2"], kind="recovered")
    layer = viewer.add_points(data, **kw)
    ge.session.recovery = rec
    assert ge.show_gene("ERBB2") and layer.visible
    assert ge.show_gene("COL1A1" if "COL1A1" in ge.session.adata.var_names else
                        [g for g in ge.session.adata.var_names if g not in
                         rec.predictions.var_names][0])
    assert not layer.visible


def test_hover_outside_the_tissue_shows_no_value(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    ge.session.enhance = fake_enhance()
    ge.show_gene("ERBB2")
    m = ge.view.find_layer("map")
    maps = ge.session.enhance.maps
    ii, jj = np.nonzero(~np.asarray(maps.mask))
    out_world = maps.origin_rc_um + np.array([ii[0], jj[0]]) * maps.stride_um
    ii, jj = np.nonzero(np.asarray(maps.mask))
    in_world = maps.origin_rc_um + np.array([ii[len(ii) // 2], jj[len(jj) // 2]]) * maps.stride_um
    kw = {"world": True, "view_direction": None, "dims_displayed": [0, 1]}
    assert m.get_value(tuple(out_world), **kw) is None
    inside = m.get_value(tuple(in_world), **kw)
    assert inside is not None and np.isfinite(float(inside))
    assert float(inside) == pytest.approx(float(maps.gene("ERBB2")[ii[len(ii) // 2],
                                                                  jj[len(jj) // 2]]), abs=0.05)
    status = m.get_status(tuple(out_world), **kw)
    assert "-" not in str(status.get("coordinates", status)).split(":")[-1]


def test_trust_is_shown_next_to_the_gene(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    rec = fake_recovery()
    ge.session.recovery = rec
    ge.session.recovery_changed.emit(rec)
    ge.session.enhance = fake_enhance()
    # STROMA_4: PCC 0.1 vs kNN 0.2 -> does not beat interpolation, marked everywhere
    item = ge.best_list.item(2)
    assert item.text().startswith("STROMA_4") and "not better than interpolation" in \
        item.text()
    assert "not better" not in ge.best_list.item(0).text()
    assert ge.show_gene("STROMA_4")
    assert "NOT better than interpolation" in ge.trust_label.text()
    assert "NOT better than interpolation" in canvas_text_overlay(viewer).text
    assert ge.view.find_layer("map").name.endswith("(not better than interpolation)")
    assert ge.show_gene("ERBB2")
    assert "beats interpolation" in ge.trust_label.text()
    assert ge.view.find_layer("map").name == "enhanced ERBB2"
    # the contract's columns win over the older pcc_baseline
    rec.per_gene["pcc_baseline_knn"] = [0.95, 0.4, 0.05]
    rec.per_gene["pcc_gain"] = rec.per_gene["pcc"] - rec.per_gene["pcc_baseline_knn"]
    rec.per_gene["beats_interpolation"] = rec.per_gene["pcc_gain"] > 0
    t = ge.session.trust("ERBB2")
    assert t["beats_interpolation"] is False and t["pcc_baseline_knn"] == pytest.approx(0.95)


def test_side_by_side_panels_are_labelled_and_everything_is_restored(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._qt._gene_explorer import PANEL_GAP_PX, _camera, _grid

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    ge.session.enhance = fake_enhance()
    ge.show_gene("ERBB2")
    # a user order: the map above the spots would be wrong after leaving; keep theirs
    _camera(viewer).zoom = 3.0
    _camera(viewer).center = (0, 500.0, 700.0)
    before = [lay.name for lay in viewer.layers]
    visible = [lay.visible for lay in viewer.layers]
    assert ge.set_side_by_side(True)
    grid = _grid(viewer)
    assert grid.spacing == PANEL_GAP_PX
    left, right = viewer.layers[1], viewer.layers[3]
    assert left.name == "measured spots: ERBB2" and left.name_overlay.visible
    assert right.name == "enhanced map: ERBB2" and right.name_overlay.visible
    assert canvas_text_overlay(viewer).position == "bottom_left"  # clear of the panel labels
    ge.show_gene("STROMA_4")  # the labels follow the gene
    assert left.name == "measured spots: STROMA_4"
    assert right.name == "enhanced map: STROMA_4"
    ge.side_check.setChecked(False)
    assert not grid.enabled
    after = [lay.name for lay in viewer.layers]
    assert after == [n.replace("ERBB2", "STROMA_4") for n in before]
    assert [lay.visible for lay in viewer.layers] == visible
    assert not any(lay.name_overlay.visible for lay in viewer.layers)
    assert canvas_text_overlay(viewer).position == "top_left"
    assert _camera(viewer).zoom == pytest.approx(3.0)
    assert tuple(_camera(viewer).center[-2:]) == pytest.approx((500.0, 700.0))


def test_region_numbers_are_drawn_and_table_has_statistics(viewer, qtbot):
    from napari_trihrge import regions as R
    from napari_trihrge.napari._qt import RegionExplorer

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    layer.add_rectangles([_tumour_box(sample_adata(), half_um=300.0)])  # about 46 spots
    layer.add_rectangles([np.array([[0, 0], [0, 60], [60, 60], [60, 0]])])
    assert list(layer.features["region"]) == [1, 2]
    assert layer.text.visible and list(layer.text.values) == ["1", "2"]
    stats = rx.compute()
    headers = [rx.table.horizontalHeaderItem(i).text() for i in range(rx.table.columnCount())]
    assert headers[:4] == ["Region", "Gene", "log2 FC", "FDR"]
    assert all(rx.table.horizontalHeaderItem(i).toolTip() for i in range(len(headers)))
    t = stats.table[stats.table.region == "region 1"]
    assert (t["fdr"] < 0.05).any() and (t["n_spots_inside"] >= R.MIN_SPOTS_FOR_TEST).all()
    assert "region 2 contains no spots" in rx.message.text()


def test_every_setting_and_score_has_a_tooltip_and_old_scores_stay(viewer, qtbot):
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox

    from napari_trihrge.napari._qt import TrainWidget

    add_sample(viewer)
    tw = TrainWidget(viewer)
    inputs = [w for w in tw.findChildren((QComboBox, QAbstractSpinBox, QLineEdit,
                                          QAbstractButton))
              if not isinstance(w.parent(), QComboBox | QAbstractSpinBox)]
    missing = [type(w).__name__ for w in inputs if not w.toolTip()]
    assert not missing, missing
    rec = fake_recovery()
    rec.metrics.update({"baseline_knn_k": 12, "pcc_top100": 0.5, "baseline_knn_pcc_top100": 0.3,
                        "n_genes_constant_prediction": 1,
                        "fraction_genes_better_than_baseline": 0.66})
    tw.session.set_result("recovery", rec, tw.session.adata)
    text = tw.scores.text()
    for label in ("Mean PCC", "k = 12", "100 most expressed", "Genes better than kNN",
                  "predicted as a constant"):
        assert label in text, label
    assert "kNN baseline" in tw.scores.toolTip() and "constant" in tw.scores.toolTip()
    tw._mark_scores_previous()  # what start() does: the old scores stay, marked
    assert "Previous run" in tw.scores.text() and "Mean PCC" in tw.scores.text()
    from napari_trihrge.errors import Cancelled
    from napari_trihrge.napari._qt._worker import Outcome

    tw._on_done(Outcome("cancelled", error=Cancelled("stop")))
    assert "Previous run" in tw.scores.text() and "Mean PCC" in tw.scores.text()
    assert tw.status.text().startswith("Cancelled")


def test_opening_the_same_sample_twice_replaces_it(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "sample.h5ad"
    a = sample_adata().copy()
    a.uns.pop("truth", None)
    a.write_h5ad(path)
    viewer.open(str(path), plugin="napari-trihrge")
    assert len(viewer.layers) == 2
    viewer.open(str(path), plugin="napari-trihrge")
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=5000)
    spots = [lay for lay in viewer.layers if lay.metadata.get("trihrge", {}).get("kind")
             == "spots"]
    assert len(spots) == 1
    qtbot.waitUntil(lambda: [lay.name for lay in viewer.layers] == ["synthetic H&E",
                                                                    "synthetic spots"],
                    timeout=5000)  # not 'synthetic spots [1]'


def test_layers_opened_before_the_first_widget_are_named_too(viewer, qtbot):
    from napari_trihrge.napari._qt import GeneExplorer

    _, spots = add_sample(viewer)  # File > Open Sample before any TriHRGE panel
    ge = GeneExplorer(viewer)
    gene = spots.metadata["trihrge"]["gene"]
    assert ge.session.gene == gene and gene in ge.current.text()
    assert canvas_text_overlay(viewer).text.startswith(gene)
