"""A map store opened in the viewer: its networks run in a worker, never in the viewer's thread;
the layer appears at once and is filled when the map is ready; a gene asked for meanwhile is
served; closing the layer or the viewer stops the work; a damaged store shows nothing."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io import map_store

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def store_run(_synthetic_cached, tmp_path_factory):
    """A finished enhance run folder whose maps are a format 3 store of several chunks."""
    from napari_trihrge import tl
    from napari_trihrge.workflows.runs import run_enhance

    out = tmp_path_factory.mktemp("maprun") / "run"
    cfg = tl.RunConfig(n_top_genes=12, model=dict(TINY_MODEL), train=dict(TINY_TRAIN),
                       stacking_folds=2, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(map_store, "LOCATION_CHUNK", 256)  # several chunks to warm
        run_enhance(_synthetic_cached.copy(), out, factor=2, stride_um=16.0, config=cfg,
                    trust=False)
    return out


class Gate:
    """Holds the store's networks (FactorModel.factors) until released, counting the
    locations they ran on and the threads they ran in."""

    def __init__(self, monkeypatch):
        self.open = threading.Event()
        self.locations, self.threads = [], set()
        factors = map_store.FactorModel.factors

        def gated(model, inputs, y):
            self.threads.add(threading.current_thread().name)
            self.open.wait(60)
            self.locations.append(len(inputs))
            return factors(model, inputs, y)

        monkeypatch.setattr(map_store.FactorModel, "factors", gated)


def _map_layer(viewer):
    return next(lay for lay in viewer.layers
                if (lay.metadata or {}).get("trihrge", {}).get("kind") == "map")


def _opened(viewer, path):
    viewer.open(str(path), plugin="napari-trihrge")
    return _map_layer(viewer)


@pytest.mark.parametrize("what", ["run", "store"])
def test_opening_a_store_returns_at_once_and_the_map_follows(viewer, qtbot, notes, monkeypatch,
                                                             store_run, what):
    from napari_trihrge.napari._qt._session import get_view

    gate = Gate(monkeypatch)
    path = store_run if what == "run" else store_run / map_store.STORE_NAME
    layer = _opened(viewer, path)  # returns with the networks held: nothing ran here
    meta = layer.metadata["trihrge"]
    maps = layer.metadata["maps"]
    assert meta["pending"] and "computing" in layer.name and gate.locations == []
    assert maps.n_chunks >= 3
    view = get_view(viewer)
    assert view.preparer.busy(maps)
    gene = meta["gene"]
    gate.open.set()
    qtbot.waitUntil(lambda: not view.preparer.busy(maps), timeout=60_000)
    qtbot.waitUntil(lambda: not layer.metadata["trihrge"].get("pending"), timeout=10_000)
    assert "MainThread" not in gate.threads  # the networks ran in the worker alone
    assert sum(gate.locations) == maps.n_locations  # once per location
    assert layer.metadata["trihrge"]["gene"] == gene and "computing" not in layer.name
    expected = np.asarray(maps[gene])
    inside = maps.mask
    shown = np.asarray(layer.data)[inside]
    lo = layer.contrast_limits[0]
    assert np.allclose(shown, np.maximum(expected[inside], shown.min()), atol=1e-5)
    assert shown.max() > lo and np.ptp(shown) > 0  # a real map, not the placeholder
    assert not notes.errors()


def test_a_gene_asked_for_while_warming_is_served(viewer, qtbot, notes, monkeypatch,
                                                  store_run):
    from napari_trihrge.napari._qt import GeneExplorer

    gate = Gate(monkeypatch)
    layer = _opened(viewer, store_run)
    maps = layer.metadata["maps"]
    ge = GeneExplorer(viewer)
    first = layer.metadata["trihrge"]["gene"]
    other = next(g for g in maps.gene_names if g != first)
    assert ge.show_gene(other)  # returns at once: the map waits for the worker
    assert layer.metadata["trihrge"]["gene"] == other and layer.metadata["trihrge"]["pending"]
    assert "being computed" in _overlay_text(viewer)
    gate.open.set()
    qtbot.waitUntil(lambda: not layer.metadata["trihrge"].get("pending"), timeout=60_000)
    assert ge.session.gene == other and layer.metadata["trihrge"]["gene"] == other
    inside = maps.mask
    shown = np.asarray(layer.data)[inside]
    np.testing.assert_allclose(shown, np.maximum(np.asarray(maps[other])[inside], shown.min()),
                               atol=1e-5)
    assert sum(gate.locations) == maps.n_locations
    # the maps are ready now: a further switch is drawn at once, in this thread
    third = next(g for g in maps.gene_names if g not in (first, other))
    assert ge.show_gene(third) and not layer.metadata["trihrge"].get("pending")
    assert sum(gate.locations) == maps.n_locations and not notes.errors()


def test_a_store_too_large_opens_at_every_nth_pixel_and_switches_genes(viewer, qtbot, notes,
                                                                      monkeypatch, store_run):
    from napari_trihrge.napari._qt import GeneExplorer

    whole = map_store.open_map_store(store_run / map_store.STORE_NAME)
    monkeypatch.setattr(map_store, "DISPLAY_LOCATIONS", whole.n_locations // 3)  # 1 px in 2
    gate = Gate(monkeypatch)
    layer = _opened(viewer, store_run)
    shown = layer.metadata["maps"]
    assert shown.stride_um == 2 * whole.stride_um and layer.scale[-1] == shown.stride_um
    assert any("one pixel in 2" in m for _, m in notes.items)
    gate.open.set()
    qtbot.waitUntil(lambda: not layer.metadata["trihrge"].get("pending"), timeout=60_000)
    assert sum(gate.locations) == shown.n_locations < whole.n_locations  # those pixels only
    ge = GeneExplorer(viewer)
    other = next(g for g in shown.gene_names if g != layer.metadata["trihrge"]["gene"])
    assert ge.show_gene(other) and not layer.metadata["trihrge"].get("pending")
    inside = shown.mask
    data = np.asarray(layer.data)
    assert data.shape[:2] == whole.mask[::2, ::2].shape
    np.testing.assert_allclose(data[inside], np.maximum(
        np.asarray(whole[other])[::2, ::2][inside], data[inside].min()), atol=1e-5)
    assert not notes.errors()


def test_a_region_opened_beside_its_run_never_leaves_a_map_on_an_earlier_gene(
        viewer, qtbot, notes, store_run, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.workflows.map_export import export_maps

    layer = _opened(viewer, store_run)
    qtbot.waitUntil(lambda: not layer.metadata["trihrge"].get("pending"), timeout=60_000)
    maps = layer.metadata["maps"]
    gene = layer.metadata["trihrge"]["gene"]
    rows = maps.origin_rc_um[0] + np.array([0.3, 0.7]) * maps.mask.shape[0] * maps.stride_um
    cols = maps.origin_rc_um[1] + np.array([0.3, 0.7]) * maps.mask.shape[1] * maps.stride_um
    region = tmp_path / "region.ome.zarr"
    export_maps(store_run, region, genes=[gene], window_um=(*rows, *cols))
    viewer.open(str(region), plugin="napari-trihrge")
    ge = GeneExplorer(viewer)
    other = next(g for g in maps.gene_names if g != gene)
    assert ge.show_gene(other)

    def stale():
        return [lay.name for lay in viewer.layers if lay.visible
                and (lay.metadata or {}).get("trihrge", {}).get("kind") == "map"
                and lay.metadata["trihrge"].get("gene") != other]

    assert stale() == []  # the run's map is not left showing the first gene
    assert ge.show_gene(gene)  # the region's gene: its map is drawn again
    assert any(lay.visible and lay.metadata["trihrge"].get("gene") == gene
               for lay in viewer.layers
               if (lay.metadata or {}).get("trihrge", {}).get("kind") == "map")
    # the region closed: the run's maps show every gene again
    from napari_trihrge.napari._qt._session import get_session

    viewer.layers.remove(next(lay for lay in viewer.layers if lay is not layer and (
        lay.metadata or {}).get("trihrge", {}).get("kind") == "map"))
    assert get_session(viewer).maps() is maps
    assert ge.show_gene(other) and layer.visible
    assert layer.metadata["trihrge"]["gene"] == other
    assert not notes.errors()


def _overlay_text(viewer):
    from napari_trihrge.napari._qt._display import canvas_text_overlay

    return canvas_text_overlay(viewer).text


@pytest.mark.parametrize("close", ["layer", "viewer"])
def test_closing_while_warming_cancels_the_work(make_napari_viewer, qtbot, notes, monkeypatch,
                                                store_run, close):
    from napari_trihrge.napari._qt._session import get_view

    viewer = make_napari_viewer()
    gate = Gate(monkeypatch)
    layer = _opened(viewer, store_run)
    maps = layer.metadata["maps"]
    view = get_view(viewer)
    job = view.preparer._jobs[id(maps)]
    finished = []
    job.worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: bool(gate.threads), timeout=10_000)  # the first chunk under way
    if close == "layer":
        viewer.layers.remove(layer)
    else:
        viewer.layers.clear()  # what viewer.close() does first
    assert job.progress.cancelled
    gate.open.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    assert not view.preparer.busy(maps)
    assert sum(gate.locations) <= maps.chunk_locations  # stopped after the chunk under way
    assert not notes.errors()


def test_a_damaged_store_shows_nothing(viewer, qtbot, notes, monkeypatch, store_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(store_run, copy)
    chunk = next(p for p in sorted((copy / map_store.STORE_NAME / "locations").rglob("*"))
                 if p.is_file() and not p.name.startswith("."))
    whole = chunk.read_bytes()
    chunk.write_bytes(whole[: len(whole) // 2])
    for path in (copy, copy / map_store.STORE_NAME):  # refused before any layer is made
        with pytest.raises(Exception) as err:  # napari wraps the reader's error
            viewer.open(str(path), plugin="napari-trihrge")
        assert "incomplete" in str(err.value) or isinstance(err.value, TrihrgeInputError)
        assert len(viewer.layers) == 0
    # the last chunk cut short after the store was opened (a copy going on): the worker's
    # error is a notification and the layer stays empty, saying so
    chunk.write_bytes(whole)
    features = copy / map_store.STORE_NAME / "locations" / "image_features"
    last = max((p for p in features.rglob("*") if p.is_file() and not p.name.startswith(".")),
               key=lambda p: int(p.relative_to(features).parts[0]))
    gate = Gate(monkeypatch)
    layer = _opened(viewer, copy)
    maps = layer.metadata["maps"]
    last.write_bytes(last.read_bytes()[:16])
    gate.open.set()
    from napari_trihrge.napari._qt._session import get_view

    qtbot.waitUntil(lambda: not get_view(viewer).preparer.busy(maps), timeout=30_000)
    qtbot.waitUntil(lambda: bool(notes.errors()), timeout=10_000)
    assert "could not be computed" in notes.errors()[0]
    assert "not computed" in layer.name and layer.metadata["trihrge"]["pending"]
    assert layer.data.max() < layer.contrast_limits[0]  # nothing drawn


def test_the_view_at_full_resolution_is_added_over_a_coarser_map_and_follows_each_gene(
        viewer, qtbot, notes, monkeypatch, store_run):
    """A map shown at every n-th pixel: the Gene explorer adds the region the canvas shows at
    the map's own pixel size (its networks at those locations only, in a worker), on top of
    the whole section; the next gene is drawn on both; a view too large is refused with what
    to do; deleting the region goes back to the whole section."""
    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._qt._gene_explorer import _camera
    from napari_trihrge.napari._qt._session import get_session

    whole = map_store.open_map_store(store_run / map_store.STORE_NAME)
    monkeypatch.setattr(map_store, "DISPLAY_LOCATIONS", whole.n_locations // 3)  # 1 px in 2
    layer = _opened(viewer, store_run)
    qtbot.waitUntil(lambda: not layer.metadata["trihrge"].get("pending"), timeout=60_000)
    coarse, gene = layer.metadata["maps"], layer.metadata["trihrge"]["gene"]
    ge = GeneExplorer(viewer)
    assert not ge.full_btn.isHidden()
    camera, canvas_hw = _camera(viewer), viewer.canvas.size  # (height, width) screen px
    # frame 40 % of the map across, around its middle
    extent_um = np.array(whole.mask.shape) * whole.stride_um
    camera.center = tuple(whole.origin_rc_um + extent_um / 2)
    camera.zoom = max(canvas_hw) / (0.4 * extent_um.max())
    rows_um, cols_um = ge.view_rectangle_um()
    assert np.mean(rows_um) == pytest.approx(camera.center[-2])
    assert cols_um[1] - cols_um[0] == pytest.approx(canvas_hw[1] / camera.zoom)
    expected = whole.window(rows_um, cols_um)
    gate = Gate(monkeypatch)
    gate.open.set()
    region_layer = ge.show_full_resolution()
    assert region_layer is not None and viewer.layers[-1] is region_layer
    region = region_layer.metadata["maps"]
    assert region.stride_um == whole.stride_um and region_layer.scale[-1] == whole.stride_um
    assert region.mask.shape == expected.mask.shape
    np.testing.assert_array_equal(region.origin_rc_um, expected.origin_rc_um)
    qtbot.waitUntil(lambda: not region_layer.metadata["trihrge"].get("pending"),
                    timeout=60_000)
    assert sum(gate.locations) == region.n_locations < coarse.n_locations  # the view only
    assert region_layer.name == f"enhanced {gene} (full resolution, {whole.stride_um:g} um)"
    inside = region.mask
    data = np.asarray(region_layer.data)
    np.testing.assert_allclose(data[inside], np.maximum(np.asarray(expected[gene])[inside],
                                                        data[inside].min()), atol=1e-5)
    # the next gene: the region (computed in a worker) and the whole section (ready) both
    other = next(g for g in whole.gene_names if g != gene)
    assert ge.show_gene(other)
    qtbot.waitUntil(lambda: not region_layer.metadata["trihrge"].get("pending"),
                    timeout=60_000)
    assert region_layer.name == f"enhanced {other} (full resolution, {whole.stride_um:g} um)"
    assert layer.name == f"enhanced {other}"
    for lay, maps in ((region_layer, region), (layer, coarse)):
        assert lay.visible and lay.metadata["trihrge"]["gene"] == other
        inside, data = maps.mask, np.asarray(lay.data)
        np.testing.assert_allclose(data[inside], np.maximum(np.asarray(maps[other])[inside],
                                                            data[inside].min()), atol=1e-5)
    assert tuple(layer.contrast_limits) == tuple(region_layer.contrast_limits)  # one scale
    n_layers = len(viewer.layers)  # the same view again: said, not added twice
    assert ge.show_full_resolution() is None and len(viewer.layers) == n_layers
    assert any("shown at full resolution already" in m for _, m in notes.items)
    # the whole section in view: more locations than the viewer computes at once
    camera.zoom = max(canvas_hw) / (3 * extent_um.max())
    assert ge.show_full_resolution() is None
    assert any("zoom in" in m for _, m in notes.items)
    viewer.layers.remove(region_layer)
    assert get_session(viewer).maps() is coarse
    assert not notes.errors()
    # a view beside the tissue: refused with the map's extent, nothing added
    camera.center = tuple(whole.origin_rc_um - 5 * extent_um)
    camera.zoom = max(canvas_hw) / (0.4 * extent_um.max())
    n_layers = len(viewer.layers)
    assert ge.show_full_resolution() is None and len(viewer.layers) == n_layers
    assert any("No map in this view" in m and "the map spans rows" in m
               for m in notes.errors())


def test_follow_mode_computes_the_region_in_view_once_the_view_settles(
        viewer, qtbot, notes, monkeypatch, store_run):
    """Follow the view: once the view stops moving, the region in view is added at full
    resolution; a view inside it adds nothing; a view elsewhere replaces it (one followed
    region at a time); a view too large changes nothing and says nothing; unticked, nothing
    follows."""
    from napari_trihrge.napari._qt import GeneExplorer
    from napari_trihrge.napari._qt import _gene_explorer as gx

    whole = map_store.open_map_store(store_run / map_store.STORE_NAME)
    monkeypatch.setattr(map_store, "DISPLAY_LOCATIONS", whole.n_locations // 3)  # 1 px in 2
    monkeypatch.setattr(gx, "FOLLOW_DELAY_MS", 50)
    layer = _opened(viewer, store_run)
    qtbot.waitUntil(lambda: not layer.metadata["trihrge"].get("pending"), timeout=60_000)
    ge = GeneExplorer(viewer)
    assert not ge.follow_check.isHidden() and not ge.follow_check.isChecked()

    def followed():
        return [lay for lay in viewer.layers
                if (lay.metadata or {}).get("trihrge", {}).get("follows_view")]

    camera, canvas_hw = gx._camera(viewer), viewer.canvas.size
    extent_um = np.array(whole.mask.shape) * whole.stride_um
    middle = whole.origin_rc_um + extent_um / 2
    camera.center = tuple(middle)
    camera.zoom = max(canvas_hw) / (0.3 * extent_um.max())
    ge.follow_check.setChecked(True)  # follows from the view shown now
    qtbot.waitUntil(lambda: len(followed()) == 1, timeout=10_000)
    first = followed()[0]
    assert first.metadata["maps"].stride_um == whole.stride_um
    assert "(full resolution" in first.name
    qtbot.waitUntil(lambda: not first.metadata["trihrge"].get("pending"), timeout=60_000)
    n_layers = len(viewer.layers)
    view_rows = np.diff(ge.view_rectangle_um()[0])[0]
    region_rows = first.metadata["maps"].mask.shape[0] * whole.stride_um
    assert region_rows > 1.3 * view_rows  # the view with a margin around it
    camera.zoom = camera.zoom * 1.5  # closer in, inside the region: nothing new
    qtbot.wait(300)
    camera.center = tuple(middle + 0.05 * extent_um)  # a small pan stays inside the margin
    qtbot.wait(300)
    assert followed() == [first] and len(viewer.layers) == n_layers
    camera.center = tuple(middle + 0.3 * extent_um)  # elsewhere: replaced
    qtbot.waitUntil(lambda: followed() and followed()[0] is not first, timeout=10_000)
    assert first not in viewer.layers and len(followed()) == 1
    second = followed()[0]
    camera.zoom = max(canvas_hw) / (3 * extent_um.max())  # the whole section: too large
    camera.center = tuple(middle)
    qtbot.wait(300)
    assert followed() == [second]
    ge.follow_check.setChecked(False)
    camera.zoom = max(canvas_hw) / (0.3 * extent_um.max())
    camera.center = tuple(middle - 0.3 * extent_um)
    qtbot.wait(300)
    assert followed() == [second]
    qtbot.waitUntil(lambda: not second.metadata["trihrge"].get("pending"), timeout=60_000)
    assert not notes.errors() and not any("press the button again" in m for _, m in notes.items)
