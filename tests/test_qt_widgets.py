"""Dock widgets driven in a real viewer: Sample, Gene explorer, Region explorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtWidgets import QLineEdit

from test_qt_support import (
    add_sample,
    fake_enhance,
    fake_recovery,
    sample_adata,
)

pytestmark = pytest.mark.gui



# ------------------------------------------------------------------------------------------
# Sample widget
# ------------------------------------------------------------------------------------------
def test_sample_widget_opens_synthetic_in_background(viewer, qtbot):
    from napari_trihrge._qt import SampleWidget

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


def test_sample_widget_bad_path_is_a_notification(viewer, qtbot, notes, tmp_path):
    from napari_trihrge._qt import SampleWidget

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

    from napari_trihrge._qt import SampleWidget
    from test_io_visium import FULL_HW, make_visium_folder

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
    from napari_trihrge._qt import SampleWidget, TrainWidget

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


def test_sample_widget_opens_dlpfc_folder(dlpfc_dir, viewer, qtbot):  # skip before a viewer exists
    from napari_trihrge._qt import SampleWidget

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


def test_plugin_menu_widgets_share_one_session(viewer):
    """napari hands each plugin widget its own viewer proxy: they must still share state."""
    _, ge = viewer.window.add_plugin_dock_widget("napari-trihrge", "Gene explorer")
    _, tw = viewer.window.add_plugin_dock_widget("napari-trihrge", "Train and enhance")
    _, rx = viewer.window.add_plugin_dock_widget("napari-trihrge", "Region explorer")
    assert ge.session is tw.session is rx.session
    add_sample(viewer)
    tw.session.enhance = fake_enhance()
    assert ge.show_gene("ERBB2")
    assert tw.session.find_layer("map") is not None


# ------------------------------------------------------------------------------------------
# Gene explorer
# ------------------------------------------------------------------------------------------
def test_gene_explorer_switch_recolours_spots_and_swaps_map(viewer, qtbot):
    from napari_trihrge._qt import GeneExplorer

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

    assert ge.show_gene("STROMA_12")
    maps_layers2 = [lay for lay in viewer.layers if lay.metadata.get("trihrge", {}).get("kind")
                    == "map"]
    assert maps_layers2 == [m]  # the same layer, new data
    assert m.name == "enhanced STROMA_12"
    assert not np.allclose(np.asarray(m.data), first_data)
    assert not np.allclose(spots.face_color, erbb2_colors)
    # hovering a spot shows its barcode, then the displayed gene
    assert list(spots.features.columns)[:2] == ["barcode", "STROMA_12"]
    status = spots.get_status(position=tuple(spots.data[0]), world=True,
                              view_direction=None, dims_displayed=[0, 1])
    assert "barcode:" in str(status) and "STROMA_12:" in str(status)
    # tumour marker vs stroma marker: anti-correlated colours on the spots
    tumour = spots.features["ERBB2"].to_numpy() > np.median(spots.features["ERBB2"])
    bright = spots.face_color[:, :3].sum(axis=1)
    assert bright[~tumour].mean() > bright[tumour].mean()
    assert spots.face_contrast_limits == pytest.approx(m.contrast_limits)


def test_gene_explorer_completion_and_unknown_gene(viewer, qtbot, notes):
    from napari_trihrge._qt import GeneExplorer

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
    from napari_trihrge._qt import GeneExplorer
    from napari_trihrge._qt._gene_explorer import _grid

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
    from napari_trihrge._qt import GeneExplorer

    add_sample(viewer)
    ge = GeneExplorer(viewer)
    ge.session.recovery = fake_recovery()
    ge.session.recovery_changed.emit(ge.session.recovery)
    assert ge.best_list.count() == 3
    first = ge.best_list.item(0)
    assert first.text().startswith("ERBB2") and "0.90" in first.text()
    ge._on_best(ge.best_list.item(1))
    assert ge.session.gene == "TUMOR_8"


# ------------------------------------------------------------------------------------------
# Region explorer
# ------------------------------------------------------------------------------------------
def _tumour_box(adata):
    """A rectangle around the spots with the highest ERBB2 (a tumour region)."""
    from napari_trihrge import layers as L

    rc = L.spots_rc_um(adata)
    e = L.gene_expression(adata, ["ERBB2"])["ERBB2"].to_numpy()
    top = rc[e >= np.quantile(e, 0.9)]
    c = np.median(top, axis=0)
    return np.array([c - 160, [c[0] - 160, c[1] + 160], c + 160, [c[0] + 160, c[1] - 160]])


def test_region_table_known_layout_and_csv(viewer, qtbot, tmp_path):
    from napari_trihrge._qt import RegionExplorer

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
    out = tmp_path / "regions.csv"
    rx.export_csv(str(out))
    back = pd.read_csv(out)
    assert list(back.columns) == list(stats2.table.columns)
    assert len(back) == len(stats2.table)


def test_region_without_spots_gives_a_clear_message(viewer, qtbot):
    from napari_trihrge._qt import RegionExplorer

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
    from napari_trihrge._qt import RegionExplorer

    add_sample(viewer)
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    layer.add_rectangles([_tumour_box(sample_adata())])
    qtbot.waitUntil(lambda: rx.table.rowCount() > 0, timeout=5000)


def test_gene_switch_shows_the_ensemble_spread_layer(viewer, qtbot):
    """With an ensemble, the spread of the shown gene is one (hidden) layer, swapped per gene."""
    from napari_trihrge._qt import GeneExplorer

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

    assert ge.show_gene("ERBB2")
    (layer,) = spread_layers()
    assert layer.name == "ensemble spread ERBB2" and not layer.visible
    first = np.asarray(layer.data).copy()
    assert ge.show_gene("STROMA_12")
    assert spread_layers() == [layer] and layer.name == "ensemble spread STROMA_12"
    assert not np.allclose(np.asarray(layer.data), first)
