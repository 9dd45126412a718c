"""npe2 reader, writers and sample data: dispatch, round trips, registration of maps vs spots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.napari import layers as L
from napari_trihrge.napari._reader import get_reader, read_maps
from napari_trihrge.napari._writer import write_image_ome_tiff, write_points_h5ad
from test_qt_support import sample_adata, truth_maps


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
                                                   "Region explorer"}
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


@pytest.mark.gui
def test_viewer_open_and_sample_through_npe2(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-trihrge", "synthetic")
    assert [lay._type_string for lay in viewer.layers] == ["image", "points"]
    path = tmp_path / "s.h5ad"
    sample_adata().write_h5ad(path)
    viewer.open(str(path), plugin="napari-trihrge")
    assert len(viewer.layers) == 4
    assert viewer.layers[-1].metadata["trihrge"]["kind"] == "spots"


@pytest.mark.gui
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
