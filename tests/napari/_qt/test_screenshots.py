"""Screenshots of the key states, with assertions on their pixels."""

from __future__ import annotations

import numpy as np
import pytest

from qt_support import add_sample, canvas_png, fake_enhance

pytestmark = pytest.mark.gui


def canvas_text_overlay(viewer):
    from napari_trihrge.napari._qt._display import canvas_text_overlay as overlay

    return overlay(viewer)


def _world_of_pixels(viewer, shape):
    """Row/col world coordinates (um) of every screenshot pixel centre."""
    from napari_trihrge.napari._qt._gene_explorer import _camera

    h, w = shape[:2]
    camera = _camera(viewer)  # viewer.camera is deprecated since napari 0.9
    zoom = camera.zoom * (w / viewer.canvas.size[1])  # canvas px -> screenshot px
    cr, cc = camera.center[-2:]
    rows = cr + (np.arange(h) + 0.5 - h / 2) / zoom
    cols = cc + (np.arange(w) + 0.5 - w / 2) / zoom
    return rows, cols


def _map_on_pixels(viewer, shape, maps, gene):
    """The map's value under every screenshot pixel (NaN outside the map / tissue)."""
    rows, cols = _world_of_pixels(viewer, shape)
    ii = np.rint((rows - maps.origin_rc_um[0]) / maps.stride_um).astype(int)
    jj = np.rint((cols - maps.origin_rc_um[1]) / maps.stride_um).astype(int)
    vals = maps.gene(gene)
    out = np.full((len(ii), len(jj)), np.nan, np.float32)
    okr = (ii >= 0) & (ii < vals.shape[0])
    okc = (jj >= 0) & (jj < vals.shape[1])
    out[np.ix_(okr, okc)] = vals[np.ix_(ii[okr], jj[okc])]
    return out


def _central_blank_columns(img, reach_px: int = 150) -> int:
    """Width (px) of the run of plain dark columns around the middle of a screenshot (its
    middle three fifths, clear of the labels)."""
    h, w = img.shape[:2]
    rgb = img[h // 5: -h // 5, :, :3].astype(float)  # below the labels, above the gene label
    blank = (rgb.std(axis=0).max(-1) < 3) & (rgb.mean(axis=(0, 2)) < 60)
    mid = w // 2
    lo = hi = mid
    while lo - 1 >= max(0, mid - reach_px) and blank[lo - 1]:
        lo -= 1
    while hi < min(w, mid + reach_px) and blank[hi]:
        hi += 1
    return hi - lo


def _brightness(img):
    return img[..., :3].astype(float).mean(axis=-1)


def test_overlay_changes_canvas_where_expression_is_high(make_napari_viewer, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1000, 800)
    _, spots = add_sample(viewer)
    spots.visible = False  # isolate the map's effect on the canvas
    viewer.reset_view()
    before = canvas_png(viewer, tmp_path / "1_he.png")

    ge = GeneExplorer(viewer)
    ge.session.enhance = fake_enhance()
    ge.show_gene("ERBB2")
    maps = ge.session.enhance.maps
    # the canvas label and the scale bar (on since the view exists) are not the map's effect
    canvas_text_overlay(viewer).visible = False
    viewer.canvas.overlays.scale_bar.visible = False
    after = canvas_png(viewer, tmp_path / "2_erbb2_map.png")
    assert before.shape == after.shape

    under = _map_on_pixels(viewer, after.shape, maps, "ERBB2")
    tissue = np.isfinite(under)
    assert tissue.mean() > 0.2
    hi = tissue & (under >= np.nanpercentile(under, 90))
    lo = tissue & (under <= np.nanpercentile(under, 10))
    diff = np.abs(after[..., :3].astype(float) - before[..., :3].astype(float)).mean(-1)
    # the overlay changes the canvas over the tissue, not outside it
    assert diff[tissue].mean() > 20
    outside = ~tissue
    assert diff[outside].mean() < 0.1 * diff[tissue].mean()
    # with magma, high expression is bright and low dark: the order flips vs the H&E alone
    b0, b1 = _brightness(before), _brightness(after)
    assert b1[hi].mean() > b1[lo].mean() + 60
    assert b1[hi].mean() - b1[lo].mean() > (b0[hi].mean() - b0[lo].mean()) + 60

    # switching the gene (stroma marker) moves the bright area away from the tumour
    ge.show_gene("STROMA_4")
    third = canvas_png(viewer, tmp_path / "3_stroma_map.png")
    b2 = _brightness(third)
    assert b2[hi].mean() < b1[hi].mean() - 40
    assert (tmp_path / "2_erbb2_map.png").stat().st_size > 10_000


def test_spots_colour_by_gene_on_canvas(make_napari_viewer, tmp_path):
    from napari_trihrge.napari import layers as L
    from napari_trihrge.napari._qt import GeneExplorer

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1000, 800)
    _, spots = add_sample(viewer)
    viewer.reset_view()
    ge = GeneExplorer(viewer)
    ge.show_gene("ERBB2")
    img = canvas_png(viewer, tmp_path / "spots_erbb2.png")
    rows, cols = _world_of_pixels(viewer, img.shape)
    e = spots.features["ERBB2"].to_numpy()
    b = _brightness(img)

    def at(p):
        r = np.argmin(np.abs(rows - p[0]))
        c = np.argmin(np.abs(cols - p[1]))
        return b[r, c]

    rc = L.spots_rc_um(ge.session.adata)
    high = [at(p) for p in rc[e >= np.quantile(e, 0.9)]]
    low = [at(p) for p in rc[e <= np.quantile(e, 0.1)]]
    assert np.mean(high) > np.mean(low) + 80  # bright (yellow) vs dark (black/purple)


def test_side_by_side_screenshot_has_two_panels(make_napari_viewer, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1200, 700)
    add_sample(viewer)
    ge = GeneExplorer(viewer)
    ge.session.enhance = fake_enhance()
    ge.show_gene("ERBB2")
    assert ge.set_side_by_side(True)
    img = canvas_png(viewer, tmp_path / "side_by_side.png")
    h, w = img.shape[:2]
    half = w // 2
    left, right = img[:, :half], img[:, w - half:]
    # both panels show the tissue (not the black background) and they differ
    assert (_brightness(left) > 100).mean() > 0.2 and (_brightness(right) > 100).mean() > 0.2
    assert np.abs(left[..., :3].astype(float) - right[..., :3].astype(float)).mean() > 10
    # a visible gap: the band of plain background between the two panels is wider than with
    # no spacing (by about the gap's width)
    from napari_trihrge.napari._qt._gene_explorer import PANEL_GAP_PX, _grid

    grid = _grid(viewer)
    assert grid.spacing == PANEL_GAP_PX
    with_gap = _central_blank_columns(img)
    grid.spacing = 0
    no_gap = _central_blank_columns(canvas_png(viewer))
    grid.spacing = PANEL_GAP_PX
    assert with_gap >= no_gap + 0.5 * PANEL_GAP_PX * w / viewer.canvas.size[1], (with_gap, no_gap)
    # each panel carries its label (measured spots / enhanced map + gene) at its top left
    spots, enhanced = viewer.layers[1], viewer.layers[3]
    assert spots.name == "measured spots: ERBB2" and enhanced.name == "enhanced map: ERBB2"
    for lay in (spots, enhanced):
        lay.name_overlay.visible = False
    bare = canvas_png(viewer)
    for lay in (spots, enhanced):
        lay.name_overlay.visible = True
    labelled = canvas_png(viewer, tmp_path / "side_by_side_labelled.png")
    changed = np.abs(labelled[..., :3].astype(float) - bare[..., :3].astype(float)).mean(-1) > 30
    top = changed[: h // 4]
    assert top[:, : w // 2].sum() > 200 and top[:, w // 2:].sum() > 200  # a label per panel
    assert changed[h // 2:].sum() < 0.01 * changed.size  # nothing else changed


def test_gene_name_is_drawn_on_the_canvas(make_napari_viewer, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1000, 800)
    ge = GeneExplorer(viewer)
    add_sample(viewer)
    ge.session.enhance = fake_enhance()
    ge.show_gene("ERBB2")
    assert canvas_text_overlay(viewer).text.startswith("ERBB2")
    labelled = canvas_png(viewer, tmp_path / "gene_label.png")
    canvas_text_overlay(viewer).visible = False
    bare = canvas_png(viewer)
    h, w = labelled.shape[:2]
    changed = np.abs(labelled[..., :3].astype(float) - bare[..., :3].astype(float)).mean(-1) > 30
    # the label sits at the top left: text pixels there, nothing changed elsewhere
    assert changed[: h // 5, : w // 2].sum() > 300
    assert changed[h // 2:].sum() == 0
    # and the colour bar of the map is drawn at the bottom right
    m = ge.view.find_layer("map")
    assert m.colorbar.visible
    m.colorbar.visible = False
    no_bar = canvas_png(viewer)
    bar = np.abs(bare[..., :3].astype(float) - no_bar[..., :3].astype(float)).mean(-1) > 30
    assert bar[h // 2:, w // 2:].sum() > 300 and bar[: h // 2].sum() == 0


def test_region_numbers_are_drawn(make_napari_viewer, tmp_path):
    from napari_trihrge.napari._qt import RegionExplorer

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1000, 800)
    add_sample(viewer)
    rx = RegionExplorer(viewer)
    layer = rx.regions_layer(create=True)
    layer.face_color = "transparent"
    layer.add_rectangles([np.array([[300, 300], [300, 900], [900, 900], [900, 300]])])
    viewer.reset_view()
    numbered = canvas_png(viewer, tmp_path / "region_number.png")
    layer.text.visible = False
    layer.refresh()
    bare = canvas_png(viewer)
    changed = np.abs(numbered[..., :3].astype(float) - bare[..., :3].astype(float)).mean(-1) > 30
    rows, cols = _world_of_pixels(viewer, numbered.shape)
    near = (np.abs(rows - 600)[:, None] < 150) & (np.abs(cols - 600)[None, :] < 150)
    assert changed[near].sum() > 20  # the "1" at the region's centre
    assert changed[~near].sum() == 0
