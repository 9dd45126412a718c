"""SpatialData stores in and out. Stores are built in the tests with spatialdata /
spatialdata-io themselves; every test but the missing-extra one skips without the extra."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import geometry, io
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io.spatialdata import table_write_settings
from sample_folders import make_visium_folder


def _sdio():
    pytest.importorskip("spatialdata")
    return pytest.importorskip("spatialdata_io")


@pytest.fixture(scope="module")
def small_sample():
    from napari_trihrge.datasets import synthetic_sample

    return synthetic_sample(seed=2, size_um=(1000.0, 1000.0), n_genes=24, um_per_px=0.5)


@pytest.fixture(scope="module")
def enhanced(small_sample):
    pytest.importorskip("spatialdata")
    from napari_trihrge.tl import RunConfig, enhance

    cfg = RunConfig(n_top_genes=24, model=TINY_MODEL, train=TINY_TRAIN)
    return enhance(small_sample, factor=4, stride_um=16.0, config=cfg)


@pytest.fixture(scope="module")
def written_store(small_sample, enhanced, tmp_path_factory):
    from napari_trihrge.io.spatialdata import write_spatialdata

    return write_spatialdata(tmp_path_factory.mktemp("sd") / "result.zarr", small_sample,
                             enhanced)


def test_visium_store_from_spatialdata_io(tmp_path):
    sdio = _sdio()
    folder = make_visium_folder(tmp_path)
    ours = io.read_visium(folder)
    sdata = sdio.visium(folder, dataset_id="s1")
    store = tmp_path / "s1.zarr"
    with table_write_settings():  # as the package writes tables (no anndata sharding warning)
        sdata.write(store)
    assert io.is_spatialdata_store(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # spot diameter and lattice agree in this folder
        adata = io.read(store)
    assert sorted(adata.obs_names) == sorted(ours.obs_names)
    adata = adata[ours.obs_names]
    # coordinates in the dataset's system are Space Ranger's full-resolution pixels
    np.testing.assert_allclose(adata.obsm["spatial"], ours.obsm["spatial"])
    np.testing.assert_array_equal(adata.X.toarray(), ours.X.toarray())
    info = adata.uns["trihrge"]
    assert info["um_per_px"] == pytest.approx(ours.uns["trihrge"]["um_per_px"], rel=1e-3)
    assert info["spatialdata"]["coordinate_system"] == "s1"
    assert info["spatialdata"]["image"] == "s1_hires_image"  # the finer of hires / lowres
    img = io.get_image(adata)
    hires = io.get_image(ours)  # the same PNG through the Space Ranger reader
    assert img.shape_px == hires.shape_px
    assert img.um_per_px == pytest.approx(hires.um_per_px, rel=1e-3)
    np.testing.assert_array_equal(np.asarray(img.array), hires.array)


def test_store_choices_and_errors(tmp_path):
    sdio = _sdio()
    folder = make_visium_folder(tmp_path)
    store = tmp_path / "s1.zarr"
    with table_write_settings():
        sdio.visium(folder, dataset_id="s1").write(store)
    lowres = io.read(store, image_element="s1_lowres_image")
    assert lowres.uns["trihrge"]["spatialdata"]["image"] == "s1_lowres_image"
    assert io.get_image(lowres).um_per_px > io.get_image(io.read(store)).um_per_px
    with pytest.raises(TrihrgeInputError, match="no image 'nope'.*s1_hires_image"):
        io.read(store, image_element="nope")
    with pytest.raises(TrihrgeInputError, match="no table 'nope'"):
        io.read(store, table="nope")
    # in the hires-pixel system the spots are scaled; the pixel size follows
    hires_cs = io.read(store, coordinate_system="s1_downscaled_hires")
    full = io.read(store)
    ratio = hires_cs.uns["trihrge"]["um_per_px"] / full.uns["trihrge"]["um_per_px"]
    assert ratio == pytest.approx(1 / 0.2, rel=1e-3)  # tissue_hires_scalef 0.2
    np.testing.assert_allclose(hires_cs[full.obs_names].obsm["spatial"],
                               full.obsm["spatial"] * 0.2)


def test_visium_hd_store_from_spatialdata_io(tmp_path):
    sdio = _sdio()
    from napari_trihrge.datasets import synthetic_sample, write_visium_hd

    sample = synthetic_sample(seed=1, size_um=(600.0, 600.0), n_genes=8)
    outs = write_visium_hd(sample, tmp_path / "outs", spatialdata_store=True)
    store = tmp_path / "outs.zarr"
    assert store.is_dir()
    with pytest.raises(TrihrgeInputError, match="several tables"):
        io.read(store)
    from_store = io.read(store, table="square_008um")
    from_folder = io.read(outs)
    assert from_store.uns["trihrge"]["bin_size_um"] == 8
    assert from_store.uns["trihrge"]["um_per_px"] == pytest.approx(1.0, rel=1e-6)
    from_store = from_store[from_folder.obs_names]
    np.testing.assert_allclose(from_store.obsm["spatial"], from_folder.obsm["spatial"])
    np.testing.assert_array_equal(from_store.X.toarray(), from_folder.X.toarray())
    del sdio


def test_write_new_store(small_sample, enhanced, written_store):
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    from napari_trihrge.io.spatialdata import (
        HE_IMAGE,
        MAPS,
        SPOTS,
        TABLE_SUFFIX,
        VIRTUAL_SPOTS,
    )

    sdata = sd.read_zarr(written_store)
    assert {HE_IMAGE, MAPS} <= set(sdata.images)
    assert {SPOTS, VIRTUAL_SPOTS} <= set(sdata.shapes)
    # every image element is multiscale
    for name in (HE_IMAGE, MAPS):
        assert len(sdata.images[name].children) >= 2
    maps = enhanced.maps
    element = sdata.images[MAPS]
    level0 = element["scale0"]["image"]
    assert [str(c) for c in level0.coords["c"].values] == list(maps.gene_names)
    np.testing.assert_allclose(np.asarray(level0.values), np.asarray(maps.values), equal_nan=True)
    # the centre of map pixel (i, j) (intrinsic (i + 0.5, j + 0.5) in SpatialData) sits at
    # origin + (i, j) * stride micrometres in 'global'
    aff = get_transformation(element, "global").to_affine_matrix(("y", "x"), ("y", "x"))
    for i, j in ((0, 0), (3, 5)):
        yx = aff @ np.array([i + 0.5, j + 0.5, 1.0])
        np.testing.assert_allclose(yx[:2], maps.origin_rc_um + np.array([i, j]) * maps.stride_um)
    he_aff = get_transformation(sdata.images[HE_IMAGE], "global").to_affine_matrix(
        ("y", "x"), ("y", "x"))
    np.testing.assert_allclose(np.diag(he_aff)[:2], [0.5, 0.5])
    np.testing.assert_allclose(he_aff[:2, 2], [-0.25, -0.25])  # H&E pixel centres at i * 0.5
    # circles in micrometres with the spot radius
    spots = sdata.shapes[SPOTS]
    assert np.allclose(spots["radius"], 27.5)
    rc_um = geometry.xy_px_to_rc_um(small_sample.obsm["spatial"], 0.5)
    np.testing.assert_allclose(np.stack([spots.geometry.y, spots.geometry.x], axis=1), rc_um)
    # the measured table holds the raw counts, the virtual table the predictions + var
    measured = sdata.tables[SPOTS + TABLE_SUFFIX]
    np.testing.assert_array_equal(measured.X.toarray(), small_sample.X.toarray())
    virtual = sdata.tables[VIRTUAL_SPOTS + TABLE_SUFFIX]
    np.testing.assert_allclose(virtual.X, enhanced.virtual.X)
    assert list(virtual.var.columns) == list(enhanced.virtual.var.columns)
    for col in ("pcc", "pcc_baseline_knn", "pcc_gain", "beats_interpolation"):
        if col in enhanced.virtual.var:  # the per-gene trust contract (issue 9)
            np.testing.assert_array_equal(virtual.var[col], enhanced.virtual.var[col])
    assert len(sdata.shapes[VIRTUAL_SPOTS]) == enhanced.virtual.n_obs


def test_new_store_reads_back_as_input(small_sample, enhanced, written_store):
    from napari_trihrge.io.spatialdata import read_store_maps

    adata = io.read(written_store)
    info = adata.uns["trihrge"]
    assert info["spatialdata"]["table"] == "spots_table"  # the measured table, not the virtual
    assert info["spatialdata"]["image"] == "he_image"  # the RGB image, not the maps
    assert info["um_per_px"] == 1.0  # the store's unit is the micrometre
    np.testing.assert_array_equal(adata.obs_names, small_sample.obs_names)
    np.testing.assert_array_equal(adata.X.toarray(), small_sample.X.toarray())
    np.testing.assert_allclose(
        geometry.xy_px_to_rc_um(adata.obsm["spatial"], info["um_per_px"]),
        geometry.xy_px_to_rc_um(small_sample.obsm["spatial"], 0.5))
    img = io.get_image(adata)
    assert img.um_per_px == pytest.approx(0.5)
    np.testing.assert_array_equal(np.asarray(img.array), io.get_image(small_sample).array)
    assert len(img.levels) >= 2 and img.levels[1][1] == pytest.approx(1.0)
    stored = read_store_maps(adata)
    assert stored["stride_um"] == pytest.approx(16.0)
    np.testing.assert_allclose(stored["origin_rc_um"], enhanced.maps.origin_rc_um)
    assert stored["gene_names"] == list(enhanced.maps.gene_names)
    np.testing.assert_allclose(np.asarray(stored["values"]), np.asarray(enhanced.maps.values),
                               equal_nan=True)


def test_store_refuses_overwrite(small_sample, enhanced, written_store):
    from napari_trihrge.io.spatialdata import write_spatialdata

    with pytest.raises(TrihrgeInputError, match="already exists"):
        write_spatialdata(written_store, small_sample, enhanced)


def test_into_input_store(small_sample, enhanced, written_store, tmp_path):
    import shutil

    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    from napari_trihrge.io.spatialdata import write_into_input

    store = tmp_path / "input.zarr"
    shutil.copytree(written_store, store)
    adata = io.read(store)
    write_into_input(adata, enhanced)
    sdata = sd.read_zarr(store)
    assert "trihrge_enhanced_maps" in sdata.images
    assert "trihrge_virtual_spots_table" in sdata.tables
    aff = get_transformation(sdata.images["trihrge_enhanced_maps"], "global").to_affine_matrix(
        ("y", "x"), ("y", "x"))
    np.testing.assert_allclose(aff[:2, 2], enhanced.maps.origin_rc_um - 8.0)  # stride 16
    with pytest.raises(TrihrgeInputError, match="already holds"):
        write_into_input(adata, enhanced)
    write_into_input(adata, enhanced, overwrite=True)
    assert "trihrge_enhanced_maps" in sd.read_zarr(store).images
    with pytest.raises(TrihrgeInputError, match="not read from a SpatialData store"):
        write_into_input(small_sample, enhanced)


def test_into_input_in_pixel_coordinates(tmp_path, enhanced, small_sample):
    """Into a store whose coordinate system is in full-resolution pixels (as spatialdata-io
    writes), the results are scaled from micrometres into those pixels."""
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    from napari_trihrge.io.spatialdata import write_into_input, write_spatialdata

    store = write_spatialdata(tmp_path / "um.zarr", small_sample, enhanced)
    sdata = sd.read_zarr(store)
    # re-express the store in pixels of 0.5 um: every element scaled by 2
    from spatialdata.transformations import Scale, Sequence, set_transformation

    for name in ("he_image", "spots"):
        el = sdata[name]
        set_transformation(el, {"px": Sequence([get_transformation(el, "global"),
                                                Scale([2.0, 2.0], axes=("x", "y"))])},
                           set_all=True)
        sdata.write_transformations(name)
    for name in ("enhanced_maps", "virtual_spots", "virtual_spots_table"):
        del sdata[name]
        sdata.delete_element_from_disk(name)
    tab = sdata.tables["spots_table"]
    tab.uns["trihrge"]["um_per_unit"] = {}
    sdata.delete_element_from_disk("spots_table")
    with table_write_settings():
        sdata.write_element("spots_table")
    adata = io.read(store)
    assert adata.uns["trihrge"]["spatialdata"]["coordinate_system"] == "px"
    assert adata.uns["trihrge"]["um_per_px"] == pytest.approx(0.5, rel=0.02)
    write_into_input(adata, enhanced)
    maps = sd.read_zarr(store).images["trihrge_enhanced_maps"]
    aff = get_transformation(maps, "px").to_affine_matrix(("y", "x"), ("y", "x"))
    um = adata.uns["trihrge"]["um_per_px"]
    np.testing.assert_allclose(np.diag(aff)[:2], [16.0 / um] * 2)
    np.testing.assert_allclose(aff[:2, 2], (enhanced.maps.origin_rc_um - 8.0) / um)


def test_cli_enhance_spatialdata(small_sample, tmp_path, capsys):
    pytest.importorskip("spatialdata")
    import spatialdata as sd

    from napari_trihrge.workflows import cli

    h5ad = tmp_path / "s.h5ad"
    from napari_trihrge.io.outputs import write_h5ad

    sample = small_sample.copy()
    del sample.uns["truth"]
    write_h5ad(sample, h5ad)
    out = tmp_path / "run"
    code = cli.main(["enhance", str(h5ad), "--genes", "24", "--max-epochs", "3", "--factor",
                     "2", "--stride-um", "32", "--format", "spatialdata", "--out", str(out),
                     "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["spatialdata"] == "spatialdata.zarr"
    sdata = sd.read_zarr(out / "spatialdata.zarr")
    assert {"he_image", "enhanced_maps"} <= set(sdata.images)
    # the store is a valid input: enhance it again, into itself
    store = out / "spatialdata.zarr"
    code = cli.main(["enhance", str(store), "--genes", "24", "--max-epochs", "3", "--factor",
                     "2", "--into-input", "--out", str(tmp_path / "run2"), "--quiet"])
    assert code == 0
    assert "trihrge_virtual_spots" in sd.read_zarr(store).shapes
    # --into-input on a non-store input fails before any work
    code = cli.main(["enhance", str(h5ad), "--into-input", "--out", str(tmp_path / "run3")])
    assert code == 2 and "needs a sample read from a SpatialData store" in \
        capsys.readouterr().err
    assert not (tmp_path / "run3").exists()


def test_cli_names_the_extra_when_missing(tmp_path, monkeypatch, capsys):
    """Without spatialdata installed, a store as PATH or --format spatialdata names the extra."""
    from napari_trihrge.workflows import cli

    store = tmp_path / "s.zarr"
    (store / "tables").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # import spatialdata -> ImportError
    code = cli.main(["enhance", str(store), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "napari-trihrge[spatialdata]"' in err
    code = cli.main(["enhance", str(tmp_path / "missing.h5ad"), "--format", "spatialdata",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "napari-trihrge[spatialdata]" in err


def test_napari_reader_opens_store(small_sample, enhanced, written_store):
    """Dropping a store on napari: napari-trihrge's reader gives the H&E, the stored map (its
    pixel centres at origin + i * stride micrometres) and the spots."""
    from napari_trihrge.napari._reader import get_reader, read_spatialdata_layers

    reader = get_reader(str(written_store))
    # the reader itself, or wrapped (functools.partial) by the folder bookkeeping of the viewer
    assert read_spatialdata_layers in (reader, *getattr(reader, "args", ()))
    layers = read_spatialdata_layers(str(written_store))
    kinds = [t for _, _, t in layers]
    assert kinds == ["image", "image", "points"]
    _, map_kw, _ = layers[1]
    maps = enhanced.maps
    np.testing.assert_allclose(map_kw["scale"][-2:], [maps.stride_um] * 2)
    np.testing.assert_allclose(map_kw["translate"][-2:], maps.origin_rc_um)
    _, he_kw, _ = layers[0]
    np.testing.assert_allclose(he_kw["scale"], [0.5, 0.5])


# ------------------------------------------------------------------------------------------
# --into-input survives a kill: the store stays readable, the next run repairs or replaces
# ------------------------------------------------------------------------------------------
@pytest.fixture
def input_store(small_sample, tmp_path):
    """A store with a first set of results already added into it (values 1)."""
    pytest.importorskip("spatialdata")
    from fault_injection import small_enhance_result
    from napari_trihrge.io.spatialdata import write_into_input, write_spatialdata

    store = write_spatialdata(tmp_path / "input.zarr", small_sample,
                              small_enhance_result(small_sample))
    write_into_input(io.read(store), small_enhance_result(small_sample, 1.0))
    return store


def _map_value(store) -> float:
    import spatialdata as sd

    maps = sd.read_zarr(store).images["trihrge_enhanced_maps"]
    if hasattr(maps, "children"):  # a multiscale image
        maps = maps["scale0"]["image"]
    return float(np.asarray(maps.values).mean())


_REPLACE = '''
from fault_injection import small_enhance_result
from napari_trihrge import io
from napari_trihrge.io.spatialdata import write_into_input
adata = io.read({store!r})
write_into_input(adata, small_enhance_result(adata, 2.0), overwrite=True)
'''


#: where the write is cut off: staging the new elements (half a store written beside the input),
#: just after the old results were unlisted, just before the new ones are listed
KILLS = {
    "staging": "import spatialdata\n"
               "def _half(self, path, *a, **k):\n"
               "    os.makedirs(os.path.join(path, 'images'))\n"
               "    os.kill(os.getpid(), signal.SIGKILL)\n"
               "spatialdata.SpatialData.write = _half\n",
    "old-unlisted": "kill_at('napari_trihrge.io.spatialdata', '_write_root_meta', 1, True)\n",
    "before-commit": "kill_at('napari_trihrge.io.spatialdata', '_write_root_meta', 2)\n",
}


@pytest.mark.parametrize("kill", sorted(KILLS))
def test_into_input_killed_leaves_a_readable_store_that_the_next_run_repairs(
        input_store, kill, small_sample):
    import spatialdata as sd

    from fault_injection import run_killed, small_enhance_result
    from napari_trihrge.io.spatialdata import write_into_input

    setup = KILLS[kill]
    run_killed(setup + _REPLACE.format(store=str(input_store)))
    sdata = sd.read_zarr(input_store)  # readable after the kill
    assert {"he_image", "spots", "spots_table"} <= set(sdata.images) | set(sdata.shapes) | set(
        sdata.tables)
    if "trihrge_enhanced_maps" in sdata.images:
        assert _map_value(input_store) == 1.0  # the old results, whole, never a mix
    adata = io.read(input_store)
    with pytest.warns(UserWarning, match="interrupted earlier write"):
        write_into_input(adata, small_enhance_result(small_sample, 3.0), overwrite=True)
    assert _map_value(input_store) == 3.0
    assert "trihrge_virtual_spots_table" in sd.read_zarr(input_store).tables
    assert not list(input_store.parent.glob(".input.zarr.*"))  # nothing left beside it


def test_a_damaged_element_from_an_older_write_is_replaced(input_store, small_sample):
    import json

    from fault_injection import small_enhance_result
    from napari_trihrge.io.spatialdata import write_into_input

    stray = input_store / "images" / "trihrge_enhanced_maps_std"  # unlisted, half written
    (stray / "s0").mkdir(parents=True)
    (stray / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.warns(UserWarning):
        write_into_input(io.read(input_store), small_enhance_result(small_sample, 4.0),
                         overwrite=True)
    assert _map_value(input_store) == 4.0 and not stray.exists()


def test_into_input_on_a_read_only_store_is_refused_before_training(small_sample, input_store,
                                                                     tmp_path, monkeypatch):
    import os

    from napari_trihrge.workflows import runs

    adata = io.read(input_store)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(
        input_store) else access(path, mode))  # as chmod 555 does for a user (not for root)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(runs, "enhance", no_training)
    with pytest.raises(TrihrgeInputError, match="cannot write into the store"):
        runs.run_enhance(adata, tmp_path / "run", into_input=True)
