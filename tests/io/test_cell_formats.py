"""Cells out as OME-Zarr labels and a SpatialData table on labels; SpatialData elements in."""

import numpy as np
import pandas as pd
import pytest

import napari_trihrge as th
from conftest import truth_dense_maps
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io import cell_formats

pytest.importorskip("spatialdata")


@pytest.fixture(scope="module")
def cells_result():
    adata = th.datasets.synthetic_sample(seed=1, size_um=(600.0, 600.0), n_genes=4)
    return adata, th.tl.cells(adata.copy(), maps=truth_dense_maps(adata))


def test_ome_zarr_labels_round_trip(cells_result, tmp_path):
    import zarr

    _, res = cells_result
    path = cell_formats.write_labels_ome_zarr(
        tmp_path / "labels.ome.zarr", {"nuclei": res.nuclei, "cells": res.cell_labels},
        res.um_per_px)
    root = zarr.open_group(str(path), mode="r")
    assert sorted(root["labels"].attrs["labels"]) == ["cells", "nuclei"]
    meta = root["labels/cells"].attrs["multiscales"][0]
    assert meta["axes"][0]["unit"] == "micrometer"
    scale = meta["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([res.um_per_px, res.um_per_px])
    assert "image-label" in root["labels/cells"].attrs
    # read back through the reader that takes the user's labels (and through ome-zarr-py)
    back = th.tl._cells.read_labels(path / "labels" / "cells", res.cell_labels.shape)
    np.testing.assert_array_equal(back, res.cell_labels)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path / "labels" / "nuclei")))())
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), res.nuclei)
    with pytest.raises(TrihrgeInputError, match="already exists"):
        cell_formats.write_labels_ome_zarr(path, {"cells": res.cell_labels}, res.um_per_px)


def test_spatialdata_table_annotates_the_cell_labels(cells_result, tmp_path):
    import spatialdata as sd
    from spatialdata.models import get_table_keys

    _, res = cells_result
    path = cell_formats.write_cells_spatialdata(tmp_path / "cells.zarr", res.cells, res.nuclei,
                                                res.cell_labels, res.um_per_px)
    sdata = sd.read_zarr(path)
    assert set(sdata.labels) == {"nuclei", "cells"}
    table = sdata.tables[cell_formats.CELLS_TABLE]
    region, region_key, instance_key = get_table_keys(table)
    assert (region, region_key, instance_key) == ("cells", "labels_element", "cell_id")
    ids = table.obs["cell_id"].to_numpy()
    labels = np.asarray(sdata.labels["cells"]["scale0"]["image"])
    np.testing.assert_array_equal(labels, res.cell_labels)
    assert set(np.unique(labels[labels > 0])) == set(ids)
    np.testing.assert_allclose(np.asarray(table.X), np.asarray(res.cells.X))
    # the labels are in micrometres: the transformation scales pixels by their size
    from spatialdata.transformations import get_transformation

    affine = get_transformation(sdata.labels["cells"], "global").to_affine_matrix(
        ("y", "x"), ("y", "x"))
    assert affine[0, 0] == pytest.approx(res.um_per_px)
    # and the store's labels element comes back in as the user's own cells
    again = th.tl.cells(cells_result[0].copy(), cell_labels=f"{path}::cells")
    assert again.metrics["n_cells"] == res.metrics["n_cells"]
    np.testing.assert_array_equal(again.cell_labels, res.cell_labels)


def _shapes_store(path, polygons, transform=None):
    import geopandas as gpd
    import spatialdata as sd
    from spatialdata.models import ShapesModel

    gdf = gpd.GeoDataFrame(geometry=polygons, index=pd.RangeIndex(len(polygons)))
    kw = {} if transform is None else {"transformations": {"global": transform}}
    sdata = sd.SpatialData(shapes={"outlines": ShapesModel.parse(gdf, **kw)})
    sdata.write(path)
    return path


def test_spatialdata_shapes_in_as_nuclei(cells_result, tmp_path):
    from shapely.geometry import Point, box

    adata, _ = cells_result
    shape = th.io.get_image(adata).shape_px
    # two squares and a disk (x/y in the sample's full-resolution px; 1 um per px here)
    polys = [box(10, 20, 30, 40), box(100, 100, 120, 112), Point(200, 250).buffer(8)]
    store = _shapes_store(tmp_path / "seg.zarr", polys)
    lab = cell_formats.read_segmentation_element(f"{store}::outlines", shape)
    assert lab.max() == 3
    assert (lab[25, 15] == 1) and (lab[105, 110] == 2) and (lab[250, 200] == 3)
    assert (lab == 2).sum() == pytest.approx(20 * 12, rel=0.15)
    res = th.tl.cells(adata.copy(), nuclei_labels=f"{store}::outlines", expand_um=2.0)
    assert res.metrics["n_cells"] == 3 and res.metrics["segmentation"] == "given"


def test_spatialdata_elements_refused_clearly(cells_result, tmp_path):
    from shapely.geometry import box
    from spatialdata.transformations import Scale

    adata, _ = cells_result
    shape = th.io.get_image(adata).shape_px
    store = _shapes_store(tmp_path / "far.zarr", [box(0, 0, 10, 10), box(20, 20, 30, 30)],
                          Scale([1000.0, 1000.0], axes=("x", "y")))
    with pytest.raises(TrihrgeInputError, match="outside"):
        cell_formats.read_segmentation_element(f"{store}::outlines", shape)
    with pytest.raises(TrihrgeInputError, match="no labels or shapes element 'nope'"):
        cell_formats.read_segmentation_element(f"{store}::nope", shape)
    with pytest.raises(TrihrgeInputError, match="not found"):
        cell_formats.read_segmentation_element(f"{tmp_path / 'none.zarr'}::x", shape)
