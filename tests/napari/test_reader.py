"""npe2 reader, writers and sample data: dispatch, round trips, registration of maps vs spots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.napari import layers as L
from napari_trihrge.napari._reader import get_reader, read_maps
from napari_trihrge.napari._writer import write_image_ome_tiff, write_points_h5ad
from qt_support import sample_adata, truth_maps
from sample_folders import make_large_jpeg_section

# the legacy ST folders of sample_folders leave 4 spots off the tissue, which the reader says in
# a warning (tests/io/test_spot_table.py checks it); here they are read by napari or a worker
pytestmark = pytest.mark.filterwarnings("ignore:.*are not selected .not under tissue.")


def _kinds(tuples):
    return [kw.get("metadata", {}).get("trihrge", {}).get("kind") for _, kw, _ in tuples]


def _write_truth_zarr(path, genes=("ERBB2", "STROMA_4")):
    from napari_trihrge.io import open_ome_zarr_map

    maps = truth_maps()
    idx = [maps.gene_names.index(g) for g in genes]
    with open_ome_zarr_map(path, (len(idx), *maps.mask.shape), um_per_px=maps.stride_um,
                           gene_names=list(genes), origin_rc_um=maps.origin_rc_um) as w:
        w[:] = maps.values[idx]
    return maps


def test_manifest_is_valid():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-trihrge")
    pm.validate_imports()
    c = pm.contributions
    assert c.readers[0].accepts_directories
    assert {w.display_name for w in c.widgets} == {"Sample", "Train and enhance",
                                                   "Apply a trained model", "Gene explorer",
                                                   "Region explorer", "Cells"}
    assert c.sample_data[0].key == "synthetic"
    assert {tuple(w.layer_types) for w in c.writers} == {("points",), ("image",)}


def test_get_reader_dispatch(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "x.txt").write_text("hello")
    assert get_reader(str(tmp_path / "other")) is None
    assert get_reader(str(tmp_path / "x.txt")) is None
    assert get_reader([str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")]) is None
    assert get_reader(str(tmp_path / "a.h5ad")) is not None
    assert get_reader(str(tmp_path / "m.ome.tif")) is not None


def test_h5ad_round_trip(tmp_path):
    a = sample_adata()
    path = tmp_path / "sample.h5ad"
    a.write_h5ad(path)
    layers = get_reader(str(path))(str(path))
    assert _kinds(layers) == ["image", "spots"]
    (img, ikw, _), (pts, pkw, _) = layers
    np.testing.assert_allclose(pts, L.spots_rc_um(a))
    assert ikw["scale"] == (1.0, 1.0) and img.shape[:2] == (2400, 2400)
    assert pkw["metadata"]["adata"].n_obs == a.n_obs


def test_spaceranger_folder(dlpfc_dir):
    with pytest.warns(UserWarning, match=r"dlpfc_151673: the spot diameter .* \(27% apart\)"):
        layers = get_reader(str(dlpfc_dir))(str(dlpfc_dir))
    assert _kinds(layers) == ["image", "spots"]
    assert len(layers[1][0]) == 3639
    assert layers[1][1]["size"] == pytest.approx(55.0)


def test_points_writer_round_trip(tmp_path):
    a = sample_adata()
    data, kw, _ = L.spots_layer(a, ["ERBB2"])
    out = write_points_h5ad(str(tmp_path / "spots"), data, kw)
    assert out == [str(tmp_path / "spots.h5ad")]
    layers = get_reader(out[0])(out[0])
    back = layers[-1]
    np.testing.assert_allclose(back[0], data)
    back_adata = back[1]["metadata"]["adata"]
    np.testing.assert_allclose(L.gene_expression(back_adata, ["ERBB2"])["ERBB2"],
                               kw["features"]["ERBB2"], rtol=1e-5)
    # a plain points layer (no AnnData) keeps its numeric features and positions
    kw2 = {"features": kw["features"][["barcode", "ERBB2"]], "metadata": {}, "name": "p"}
    out2 = write_points_h5ad(str(tmp_path / "plain.h5ad"), data, kw2)
    import anndata as ad

    b = ad.read_h5ad(out2[0])
    assert list(b.var_names) == ["ERBB2"]
    np.testing.assert_allclose(L.spots_rc_um(b), data)


def test_map_writer_round_trip_keeps_values_and_placement(tmp_path):
    maps = truth_maps()
    (data, kw, _), = L.map_layers(maps, ["ERBB2"])
    out = write_image_ome_tiff(str(tmp_path / "erbb2"), data, kw)
    assert out[0].endswith(".ome.tif")
    layers = get_reader(out[0])(out[0])
    (d2, kw2, _), = layers
    assert kw2["scale"] == kw["scale"] and kw2["translate"] == pytest.approx(kw["translate"])
    back = read_maps(out[0])
    assert back.gene_names == ["ERBB2"]
    np.testing.assert_allclose(np.asarray(back.values[0]), maps.gene("ERBB2"), equal_nan=True)
    # the written file holds expression, not the display sentinel
    assert np.isnan(np.asarray(back.values[0])[~maps.mask]).all()


def test_he_image_writer(tmp_path):
    import tifffile

    img, kw, _ = L.image_layer(sample_adata())
    small = img[:200, :300]
    out = write_image_ome_tiff(str(tmp_path / "he.ome.tif"), small, kw)
    with tifffile.TiffFile(out[0]) as tf:
        arr = tf.asarray()
        assert tf.is_ome and 'PhysicalSizeX="1.0"' in tf.ome_metadata
    np.testing.assert_array_equal(arr, small)


def test_map_registration_against_spots(tmp_path):
    """Read back through the OME-Zarr reader, the map sampled under each spot centre (napari's
    own world -> data transform) follows the spot's measured expression."""
    from napari.layers import Image, Points

    a = sample_adata()
    _write_truth_zarr(tmp_path / "maps.ome.zarr")
    (data, kw, _), = get_reader(str(tmp_path / "maps.ome.zarr"))(str(tmp_path / "maps.ome.zarr"))
    kw = {k: v for k, v in kw.items() if k != "units"}
    layer = Image(data, **kw)
    pdata, pkw, _ = L.spots_layer(a, ["ERBB2"])
    spots = Points(pdata, size=pkw["size"])
    world = np.asarray([spots.data_to_world(p) for p in spots.data])
    idx = np.rint([layer.world_to_data(w) for w in world]).astype(int)
    ok = (idx >= 0).all(1) & (idx[:, 0] < data.shape[0]) & (idx[:, 1] < data.shape[1])
    assert ok.mean() > 0.95
    under = read_maps(tmp_path / "maps.ome.zarr").gene("ERBB2")[idx[ok, 0], idx[ok, 1]]
    measured = L.gene_expression(a, ["ERBB2"])["ERBB2"].to_numpy()[ok]
    good = np.isfinite(under)
    r = np.corrcoef(under[good], measured[good])[0, 1]
    assert r > 0.7, r
    # a map shifted by half the spot spacing correlates clearly worse
    shifted = read_maps(tmp_path / "maps.ome.zarr").gene("ERBB2")[
        np.clip(idx[ok, 0] + 6, 0, data.shape[0] - 1), idx[ok, 1]]
    good2 = good & np.isfinite(shifted)
    assert np.corrcoef(shifted[good2], measured[good2])[0, 1] < r - 0.05


def test_run_folder_opens_as_layers(tmp_path):
    import anndata as ad

    a = sample_adata()
    run = tmp_path / "run"
    run.mkdir()
    maps = _write_truth_zarr(run / "maps.ome.zarr")
    virt = ad.AnnData(X=L.gene_expression(a, ["ERBB2", "STROMA_4"]).to_numpy())
    virt.var_names = ["ERBB2", "STROMA_4"]
    virt.obs_names = [f"v{i}" for i in range(a.n_obs)]
    virt.obsm["spatial"] = np.asarray(a.obsm["spatial"])
    virt.uns["trihrge"] = {**a.uns["trihrge"], "task": "enhance", "factor": 4}
    virt.uns["spatial"] = a.uns["spatial"]
    virt.write_h5ad(run / "enhanced.h5ad")
    (run / "summary.json").write_text(json.dumps({"sample": "synthetic"}))
    with pytest.raises(TrihrgeInputError, match="not a finished run folder"):
        get_reader(str(run))(str(run))  # the completion marker is missing
    from napari_trihrge.io.outputs import mark_complete

    mark_complete(run)
    layers = get_reader(str(run))(str(run))
    assert _kinds(layers) == ["image", "map", "virtual"]
    (_, mkw, _), (_, vkw, _) = layers[1], layers[2]
    assert mkw["scale"] == (maps.stride_um,) * 2
    assert tuple(mkw["translate"]) == tuple(maps.origin_rc_um)
    assert vkw["face_contrast_limits"] == mkw["contrast_limits"]  # one colour scale
    assert vkw["size"] == pytest.approx(27.5)
    # the enhanced h5ad alone opens as virtual spots
    assert _kinds(get_reader(str(run / "enhanced.h5ad"))(str(run / "enhanced.h5ad")))[-1] == \
        "virtual"


def test_predicted_h5ad_opens_as_a_result(tmp_path):
    """``enhanced.h5ad`` written by ``trihrge predict`` (task 'predict') opens as predicted
    virtual spots, alone and in its run folder, not as a new sample."""
    import anndata as ad

    from napari_trihrge.io.outputs import mark_complete

    a = sample_adata()
    run = tmp_path / "run"
    run.mkdir()
    virt = ad.AnnData(X=L.gene_expression(a, ["ERBB2", "STROMA_4"]).to_numpy())
    virt.var_names = ["ERBB2", "STROMA_4"]
    virt.obs_names = [f"v{i}" for i in range(a.n_obs)]
    virt.obsm["spatial"] = np.asarray(a.obsm["spatial"])
    virt.uns["trihrge"] = {**a.uns["trihrge"], "task": "predict", "factor": 16,
                           "lattice_spacing_um": 100.0}
    virt.write_h5ad(run / "enhanced.h5ad")
    (run / "summary.json").write_text(json.dumps({"sample": "synthetic"}))
    mark_complete(run)
    for path in (run / "enhanced.h5ad", run):
        layers = get_reader(str(path))(str(path))
        assert _kinds(layers)[-1] == "virtual"
        _, kwargs, _ = layers[-1]
        assert kwargs["name"] == "predicted: 16x virtual spots"
        assert kwargs["size"] == pytest.approx(55.0 / 4)  # spacing 100 um, 16x denser


@pytest.mark.gui
def test_reopened_run_folder_switches_genes(make_napari_viewer, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer

    viewer = make_napari_viewer()
    test_run_folder_opens_as_layers(tmp_path)  # writes tmp_path / "run"
    viewer.open(str(tmp_path / "run"), plugin="napari-trihrge")
    ge = GeneExplorer(viewer)
    assert {"ERBB2", "STROMA_4"} <= set(ge.model.stringList())
    m = ge.view.find_layer("map")
    before = np.asarray(m.data).copy()
    assert ge.show_gene("STROMA_4")
    assert ge.view.find_layer("map") is m and m.metadata["trihrge"]["gene"] == "STROMA_4"
    assert not np.allclose(np.asarray(m.data), before)
    virt = ge.view.find_layer("virtual")
    assert virt.face_contrast_limits == pytest.approx(m.contrast_limits)
    # the header names the layers showing the gene: the run's map and spots (no sample opened)
    header = ge.current.text()
    assert m.name in header and virt.name in header


@pytest.mark.gui
def test_a_reopened_run_folder_is_ready_for_side_by_side(make_napari_viewer, tmp_path):
    from napari_trihrge.napari._qt import GeneExplorer

    viewer = make_napari_viewer()
    test_a_reopened_run_folder_brings_its_measured_spots(tmp_path)
    sample_adata().write_h5ad(tmp_path / "sample.h5ad")  # back in place
    viewer.open(str(tmp_path / "run"), plugin="napari-trihrge")
    ge = GeneExplorer(viewer)
    assert ge.view.find_layer("spots") is not None and ge.session.adata is not None
    assert ge.show_gene("STROMA_4")
    assert ge.set_side_by_side(True)  # not "run Enhance first": the run is open
    assert ge.set_side_by_side(False)


@pytest.mark.gui
def test_a_reopened_run_folder_is_compared_in_a_region(make_napari_viewer, tmp_path):
    """The Region explorer compares a reopened run's enhanced expression (its virtual spots)
    with the measured spots it brings back, with no run in this session."""
    from napari_trihrge.napari._qt import RegionExplorer

    viewer = make_napari_viewer()
    test_a_reopened_run_folder_brings_its_measured_spots(tmp_path)
    a = sample_adata()
    a.write_h5ad(tmp_path / "sample.h5ad")  # back in place
    viewer.open(str(tmp_path / "run"), plugin="napari-trihrge")
    rx = RegionExplorer(viewer)
    assert rx.session.enhance is None and rx.session.adata is not None
    rx.top_spin.setValue(500)
    centre = np.median(L.spots_rc_um(a), axis=0)
    box = np.array([centre - 200, [centre[0] - 200, centre[1] + 200], centre + 200,
                    [centre[0] + 200, centre[1] - 200]])
    rx.regions_layer(create=True).add_rectangles([box])
    stats = rx.compute()
    assert {"enhanced_inside", "enhanced_outside"} <= set(stats.table.columns)
    summary = stats.summary.iloc[0]
    assert summary["enhanced_points_inside"] > 0 and summary["measured_spots_inside"] > 0
    assert set(stats.table.loc[stats.table["mapped"], "gene"]) == {"ERBB2", "STROMA_4"}
    assert "run Enhance" not in rx.message.text()


@pytest.mark.gui
def test_viewer_open_and_sample_through_npe2(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-trihrge", "synthetic")
    assert [lay._type_string for lay in viewer.layers] == ["image", "points"]
    path = tmp_path / "s.h5ad"
    sample_adata().write_h5ad(path)
    viewer.open(str(path), plugin="napari-trihrge")
    assert viewer.layers[-1].metadata["trihrge"]["kind"] == "spots"
    # the same H&E opened again: the open layer is used, not a second copy
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=5000)
    assert [lay._type_string for lay in viewer.layers] == ["image", "points", "points"]


def test_a_reopened_run_folder_brings_its_measured_spots(tmp_path):
    """A run folder whose summary records the sample path reopens with the measured spots,
    coloured by the map's gene on the map's scale (side by side needs them)."""
    test_run_folder_opens_as_layers(tmp_path)  # writes tmp_path / "run"
    run = tmp_path / "run"
    sample = tmp_path / "sample.h5ad"
    a = sample_adata()
    a.write_h5ad(sample)
    (run / "summary.json").write_text(json.dumps({
        "sample": "synthetic", "source": str(sample), "um_per_px": a.uns["trihrge"]["um_per_px"]}))
    layers = get_reader(str(run))(str(run))
    assert _kinds(layers) == ["image", "map", "virtual", "spots"]
    (_, mkw, _), (data, skw, _) = layers[1], layers[3]
    assert skw["metadata"]["trihrge"]["source"] == str(sample.resolve())
    assert len(data) == a.n_obs and skw["metadata"]["trihrge"]["gene"] == \
        mkw["metadata"]["trihrge"]["gene"]
    assert skw["face_contrast_limits"] == mkw["contrast_limits"]
    sample.unlink()  # moved since: the run opens all the same, without the spots
    assert _kinds(get_reader(str(run))(str(run))) == ["image", "map", "virtual"]


def test_a_reopened_run_reads_its_sample_from_what_it_recorded(tmp_path):
    """A run of a her2st-like section whose summary records the counts table as the source
    (and no ``read_from``: runs written before it was recorded) reads the section folder."""
    from sample_folders import make_st_section

    test_run_folder_opens_as_layers(tmp_path)  # writes tmp_path / "run"
    run = tmp_path / "run"
    section = make_st_section(tmp_path / "C9", "C9")
    (run / "summary.json").write_text(json.dumps({
        "sample": "C9", "source": str((section / "C9.tsv.gz").resolve())}))
    layers = get_reader(str(run))(str(run))
    assert _kinds(layers)[-1] == "spots"
    data, kwargs, _ = layers[-1]
    assert kwargs["metadata"]["trihrge"]["source"] == str(section.resolve())
    assert len(data) == len(kwargs["metadata"]["adata"]) > 0
    # a Space Ranger matrix file read directly (an .h5, not a folder) comes back too
    from sample_folders import make_visium_folder

    matrix = make_visium_folder(tmp_path / "visium") / "filtered_feature_bc_matrix.h5"
    (run / "summary.json").write_text(json.dumps({
        "sample": "sample1", "source": str(matrix.parent), "read_from": str(matrix)}))
    data, kwargs, _ = get_reader(str(run))(str(run))[-1]
    assert kwargs["metadata"]["trihrge"]["kind"] == "spots" and len(data) > 0
    # an H&E alone (a prediction on a slide never sequenced): no spots, the run opens
    (run / "summary.json").write_text(json.dumps({
        "sample": "slide", "source": str(section / "C9_HE.jpg")}))
    assert _kinds(get_reader(str(run))(str(run)))[-1] == "virtual"


@pytest.mark.gui
# Space Ranger's spot diameter reads 27 % small on DLPFC (the lattice is used; test_visium checks it)
@pytest.mark.filterwarnings("ignore:sample .*. the spot diameter")
def test_spaceranger_outs_folder_opens_with_no_reader_chooser(make_napari_viewer, dlpfc_dir,
                                                              tmp_path):
    """napari's builtins also claim every folder; the plugin records itself as the reader of
    Space Ranger 'outs' folders (unless the user chose otherwise), so no chooser appears."""
    import shutil

    from napari.plugins import _npe2
    from napari.settings import get_settings

    from napari_trihrge.napari._qt._session import get_session

    viewer = make_napari_viewer()
    outs = tmp_path / "outs"
    shutil.copytree(dlpfc_dir, outs)
    assert len(_npe2.get_readers(str(outs))) > 1  # without a preference napari would ask
    get_session(viewer)  # any TriHRGE widget or reader call does this
    assert get_settings().plugins.extension2reader["*/outs/"] == "napari-trihrge"
    # plugin=None is what a drop or File > Open does (raises MultipleReaderError without a
    # preference; the GUI then shows the chooser)
    viewer.open(str(outs), plugin=None)
    kinds = [lay.metadata.get("trihrge", {}).get("kind") for lay in viewer.layers]
    assert kinds == ["image", "spots"]


@pytest.mark.gui
def test_large_jpeg_opens_without_freezing_the_viewer(make_napari_viewer, qtbot, tmp_path,
                                                     monkeypatch):
    """viewer.open returns with the spots and a preview; the full image is decoded in a worker
    (the event loop keeps ticking meanwhile, a progress bar is shown), then replaces the
    preview at its place in the layer list."""
    import threading

    from napari.utils import progress
    from qtpy.QtCore import QTimer

    from napari_trihrge import io
    from napari_trihrge.napari._qt import _image_loader

    section = make_large_jpeg_section(tmp_path / "BIG")
    viewer = make_napari_viewer()
    ticks = {"n": 0}
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__("n", ticks["n"] + 1))
    timer.start(5)
    during = {}
    real_get_image = io.get_image

    opened = threading.Event()

    def counting_get_image(adata, *args, **kwargs):
        # runs in the worker: the ticks counted while the full image is decoded (after
        # viewer.open has returned: napari's own work adding the layers is not counted)
        during["thread_is_main"] = threading.current_thread() is threading.main_thread()
        if not during["thread_is_main"]:
            opened.wait(60)
        before = ticks["n"]
        img = real_get_image(adata, *args, **kwargs)
        during["ticks"] = ticks["n"] - before
        during["bars"] = [p.desc for p in progress._all_instances]
        return img

    monkeypatch.setattr(io, "get_image", counting_get_image)
    layers = viewer.open(str(section), plugin="napari-trihrge")
    opened.set()
    kinds = [lay.metadata["trihrge"]["kind"] for lay in layers]
    assert kinds == ["image", "spots"]
    preview = layers[0]
    assert not preview.multiscale and max(preview.data.shape[:2]) <= 2000
    assert "preview" in preview.name
    qtbot.waitUntil(lambda: not _image_loader.ACTIVE, timeout=120_000)
    timer.stop()
    assert during["thread_is_main"] is False
    assert during["ticks"] > 0, "the event loop did not run while the image was decoded"
    assert any("full-resolution H&E" in str(d) for d in during["bars"])
    assert preview not in viewer.layers
    full, spots = viewer.layers
    assert full.multiscale and full.data[0].shape[:2] == (6000, 6000)
    assert full.metadata["trihrge"]["kind"] == "image" and spots is layers[1]
    assert full.name == "BIG H&E"
    assert full.metadata["trihrge"]["source"] == preview.metadata["trihrge"]["source"]


@pytest.mark.gui
def test_cancelling_the_full_image_keeps_the_preview(make_napari_viewer, qtbot, tmp_path,
                                                    monkeypatch):
    import threading

    from napari_trihrge import io
    from napari_trihrge.napari._qt import _image_loader

    section = make_large_jpeg_section(tmp_path / "BIG", side_px=5000)
    viewer = make_napari_viewer()
    real_get_image = io.get_image

    def cancel_while_decoding(adata, *args, **kwargs):
        # the user presses the progress bar's cancel button while the image is decoded
        if threading.current_thread() is not threading.main_thread():  # not the preview
            next(iter(_image_loader.ACTIVE.values())).progress.cancel()
        return real_get_image(adata, *args, **kwargs)

    monkeypatch.setattr(io, "get_image", cancel_while_decoding)
    layers = viewer.open(str(section), plugin="napari-trihrge")
    qtbot.waitUntil(lambda: not _image_loader.ACTIVE, timeout=60_000)
    preview, spots = viewer.layers
    assert preview is layers[0] and not preview.multiscale  # no full image swapped in
    assert preview.name == "BIG H&E (preview)"


def test_blank_image_is_an_error_not_a_silent_none():
    a = sample_adata().copy()
    lib = next(iter(a.uns["spatial"]))
    for res in ("hires", "lowres"):
        a.uns["spatial"][lib]["images"][res][:] = 255
    with pytest.raises(TrihrgeInputError, match="blank"):
        L.image_layer(a)
    del a.uns["spatial"][lib]["images"]
    assert L.image_layer(a) is None  # no image at all is not a problem: spots only


@pytest.mark.gui
def test_blank_image_reaches_the_user_and_the_spots_still_open(make_napari_viewer, notes,
                                                               tmp_path):
    a = sample_adata().copy()
    lib = next(iter(a.uns["spatial"]))
    for res in ("hires", "lowres"):
        a.uns["spatial"][lib]["images"][res][:] = 255  # an all-white export
    path = tmp_path / "blank.h5ad"
    a.write_h5ad(path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-trihrge")
    assert [lay.metadata["trihrge"]["kind"] for lay in viewer.layers] == ["spots"]
    warned = [m for s, m in notes.items if "warn" in s]
    assert any("H&E" in m and "blank" in m and "pass the H&E" in m for m in warned), notes.items


@pytest.mark.gui
def test_sample_and_run_folders_of_any_name_open_with_no_chooser_after_the_first(
        make_napari_viewer, tmp_path):
    """napari offers every folder to its builtins too and cannot choose by content: the first
    folder of a study asks (the chooser); once this plugin opened it, the folders next to it
    open with no chooser, whatever their names. A drop and File > Open call
    ``viewer.open(path, plugin=None)`` (napari's ``viewer.open`` defaults to its builtins)."""
    import shutil

    from napari.errors import MultipleReaderError, ReaderPluginError
    from napari.settings import get_settings

    from sample_folders import make_st_section

    study = tmp_path / "study [2024]"  # a glob character in the path must not break it
    first = make_st_section(study / "section A", "A")
    second = make_st_section(study / "B", "B", seed=1)
    viewer = make_napari_viewer()
    with pytest.raises(MultipleReaderError):
        viewer.open(str(first), plugin=None)  # a drop: the GUI shows the chooser here
    viewer.open(str(first), plugin="napari-trihrge")  # the user's choice in the chooser
    prefs = get_settings().plugins.extension2reader
    assert prefs.get(str(study).replace("[", "[[]") + "/*/") == "napari-trihrge"
    layers = viewer.open(str(second), plugin=None)
    assert [lay.metadata["trihrge"]["kind"] for lay in layers] == ["image", "spots"]
    assert layers[1].metadata["adata"].uns["trihrge"]["sample"] == "B"
    (study / "notes").mkdir()
    with pytest.raises(ReaderPluginError):
        viewer.open(str(study / "notes"), plugin=None)  # not a sample: the GUI shows the chooser, with why
    # run folders: the same
    runs = tmp_path / "runs"
    runs.mkdir()
    test_run_folder_opens_as_layers(runs)
    shutil.copytree(runs / "run", runs / "another run")
    viewer.open(str(runs / "run"), plugin="napari-trihrge")
    layers = viewer.open(str(runs / "another run"), plugin=None)
    assert [lay.metadata["trihrge"]["kind"] for lay in layers] == ["image", "map", "virtual"]


@pytest.mark.gui
def test_large_blank_jpeg_decoded_in_the_background_is_reported(make_napari_viewer, qtbot,
                                                                notes, tmp_path):
    from PIL import Image

    from napari_trihrge.napari._qt import _image_loader
    from sample_folders import make_st_section

    section = make_st_section(tmp_path / "WHITE", "WHITE", image=False)
    Image.fromarray(np.full((5000, 5000, 3), 255, np.uint8)).save(section / "WHITE_HE.jpg")
    viewer = make_napari_viewer()
    layers = viewer.open(str(section), plugin="napari-trihrge")
    assert [lay.metadata["trihrge"]["kind"] for lay in layers] == ["spots"]  # blank preview
    qtbot.waitUntil(lambda: not _image_loader.ACTIVE, timeout=60_000)
    assert [lay.metadata["trihrge"]["kind"] for lay in viewer.layers] == ["spots"]
    warned = [m for s, m in notes.items if "warn" in s]
    assert any("H&E of WHITE" in m and "blank" in m for m in warned), notes.items


def test_cells_formats_open_as_labels_in_micrometres(tmp_path):
    """labels.ome.zarr opens as Labels layers (lazy, um); a cells SpatialData store opens as
    the cells layer with its table (hover features, gene colours)."""
    pytest.importorskip("spatialdata")
    import anndata as ad
    import pandas as pd

    from napari_trihrge.io import cell_formats

    lab = np.zeros((300, 200), dtype=np.int32)
    lab[10:30, 20:40], lab[100:120, 50:90] = 1, 2
    nuc = np.where(np.isin(lab, [1, 2]) & (np.arange(200)[None, :] % 2 == 0), lab, 0)
    cells = ad.AnnData(X=np.array([[1.0, 0.0], [0.0, 3.0]], dtype=np.float32),
                       obs=pd.DataFrame({"cell_id": [1, 2], "area_um2": [100.0, 200.0],
                                         "spot": ["a", ""], "region": ["Tumor", ""]},
                                        index=["cell_1", "cell_2"]),
                       var=pd.DataFrame(index=["G", "H"]))
    cells.obsm["spatial"] = np.array([[30.0, 20.0], [70.0, 110.0]])
    zarr_path = cell_formats.write_labels_ome_zarr(tmp_path / "labels.ome.zarr",
                                                   {"nuclei": nuc, "cells": lab}, 0.5)
    layers = get_reader(str(zarr_path))(str(zarr_path))
    assert sorted(kw["name"] for _, kw, _ in layers) == ["cells", "nuclei"]
    data, kw, kind = next(t for t in layers if t[1]["name"] == "cells")
    assert kind == "labels" and kw["scale"] == (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(data[0]), lab)
    store = cell_formats.write_cells_spatialdata(tmp_path / "cells.zarr", cells, nuc, lab, 0.5)
    (data, kw, kind), = get_reader(str(store))(str(store))
    assert kind == "labels" and kw["scale"] == (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(data[0]), lab)
    assert kw["metadata"]["trihrge"]["kind"] == "cells"
    feats = kw["features"]
    assert feats.loc[2, "area_um2"] == 200.0 and feats.loc[1, "region"] == "Tumor"
    assert L.cell_description(feats, 1).startswith("cell 1: 100 um²")
    colours = kw["colormap"]
    assert not np.allclose(colours[1], colours[2])  # coloured by G: 1 vs 0
