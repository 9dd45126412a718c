"""QuPath GeoJSON in and out: regions with holes and parts, cells round trip, bad input."""

import json

import numpy as np
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io import geojson
from napari_trihrge.regions import ExpressionSet, points_in_regions, region_statistics


def _square(x0, y0, size):
    return [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]


def _write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _annotation(geometry, name, fid=None):
    feat = {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": "annotation",
                           "classification": {"name": name, "color": [255, 0, 0]}}}
    if fid:
        feat["id"] = fid
    return feat


def test_annotations_become_regions_with_holes_and_parts(tmp_path):
    ring_with_hole = {"type": "Polygon", "coordinates": [_square(0, 0, 100), _square(40, 40, 20)]}
    two_parts = {"type": "MultiPolygon", "coordinates": [[_square(200, 0, 50)],
                                                         [_square(200, 100, 50)]]}
    path = _write(tmp_path / "a.geojson", [
        _annotation(ring_with_hole, "Tumor", "a"), _annotation(two_parts, "Stroma", "b"),
        _annotation({"type": "Polygon", "coordinates": [_square(300, 300, 10)]}, "Tumor", "c")])
    regions = geojson.read_regions(path, um_per_px=0.5, image_shape_px=(400, 400))
    assert [r.name for r in regions] == ["Tumor", "Stroma"]
    tumor, stroma = regions
    assert len(tumor.parts) == 2 and len(stroma.parts) == 2
    assert tumor.area_um2 == pytest.approx((100**2 - 20**2 + 10**2) * 0.25)
    # QuPath (x, y) px -> row/col um: x=10.5, y=20.5 (pixel (20, 10)) is at (10, 5) um
    pts_rc_um = np.array([[10.0, 5.0], [25.0, 25.0], [60.0, 110.0], [10.0, 110.0], [10.0, 160.0]])
    inside = points_in_regions(regions, pts_rc_um)
    assert inside[0].tolist() == [True, False, False, False, False]  # (25, 25) um is the hole
    assert inside[1].tolist() == [False, False, True, True, False]
    # the region statistics take them like drawn polygons
    rng = np.random.default_rng(0)
    spots = rng.uniform(0, 100, size=(300, 2))
    values = rng.normal(size=(300, 3))
    values[points_in_regions(regions, spots)[0], 0] += 3.0
    stats = region_statistics(regions, ExpressionSet("measured", spots, values, list("abc")),
                              region_names=[r.name for r in regions])
    top = stats.table[stats.table["region"] == "Tumor"].iloc[0]
    assert top["gene"] == "a"


def test_regions_round_trip(tmp_path):
    path = _write(tmp_path / "a.geojson", [_annotation(
        {"type": "Polygon", "coordinates": [_square(10, 20, 60), _square(30, 40, 10)]}, "Tumor")])
    regions = geojson.read_regions(path, um_per_px=0.7)
    out = geojson.write_geojson(tmp_path / "b.geojson",
                                geojson.regions_to_features(regions, 0.7))
    data = json.loads(out.read_text())
    feat = data["features"][0]
    assert feat["properties"]["objectType"] == "annotation"
    assert feat["properties"]["classification"]["name"] == "Tumor"
    np.testing.assert_allclose(feat["geometry"]["coordinates"][0], _square(10, 20, 60))
    np.testing.assert_allclose(feat["geometry"]["coordinates"][1], _square(30, 40, 10))
    again = geojson.read_regions(out, um_per_px=0.7)
    np.testing.assert_allclose(again[0].parts[0][0], regions[0].parts[0][0])
    with pytest.raises(TrihrgeInputError, match="already exists"):
        geojson.write_geojson(out, [])


def test_cells_round_trip_pixel_for_pixel(tmp_path):
    import anndata as ad
    import pandas as pd
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(1)
    nuclei = np.zeros((120, 160), dtype=np.int32)
    rr, cc = np.mgrid[:120, :160]
    for k, (r, c) in enumerate(rng.uniform(15, 105, size=(12, 2)), start=1):
        nuclei[((rr - r) ** 2 / 20 + (cc - c * 1.3) ** 2 / 12 <= 1) & (nuclei == 0)] = k
    present = np.unique(nuclei[nuclei > 0])
    cells_lab = expand_labels(nuclei, 4)
    obs = pd.DataFrame({"cell_id": present, "area_um2": 1.0, "nucleus_area_um2": 0.5},
                       index=[f"cell_{k}" for k in present])
    cells = ad.AnnData(X=rng.normal(size=(len(present), 2)).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=["ERBB2", "CD3E"]))
    feats = geojson.cells_to_features(cells, cells_lab, 0.5, 0.5, nuclei=nuclei, genes=["ERBB2"])
    assert len(feats) == len(present)
    f0 = feats[0]
    assert f0["properties"]["objectType"] == "cell" and "nucleusGeometry" in f0
    assert f0["properties"]["measurements"]["ERBB2"] == pytest.approx(float(cells.X[0, 0]))
    path = geojson.write_geojson(tmp_path / "cells.geojson", feats)
    back_cells, back_nuclei = geojson.labels_from_geojson(path, cells_lab.shape)
    ids = np.zeros(back_cells.max() + 1, dtype=np.int32)
    ids[1:] = present  # features are written in cell order
    np.testing.assert_array_equal(ids[back_cells], cells_lab)
    np.testing.assert_array_equal(ids[back_nuclei], nuclei)
    # on a grid at half the full resolution (labels on a hires image)
    half, _ = geojson.labels_from_geojson(path, (60, 80), px_per_fullres_px=0.5)
    assert set(np.unique(half)) <= set(range(len(present) + 1)) and half.max() > 0
    with pytest.raises(TrihrgeInputError, match="not predicted"):
        geojson.cells_to_features(cells, cells_lab, 0.5, 0.5, genes=["MISSING"])


def test_bad_geojson_is_refused_or_warned(tmp_path):
    poly = {"type": "Polygon", "coordinates": [_square(0, 0, 10)]}
    far = {"type": "Polygon", "coordinates": [_square(5000, 5000, 10)]}
    path = _write(tmp_path / "far.geojson", [_annotation(far, "T"), _annotation(far, "T")])
    with pytest.raises(TrihrgeInputError, match=r"100% of the vertices .* outside"):
        geojson.read_regions(path, 0.5, image_shape_px=(100, 100))
    path = _write(tmp_path / "some.geojson", [_annotation(far, "T")] + [_annotation(poly, "T")] * 3)
    with pytest.warns(UserWarning, match="25.0% of the vertices"):
        geojson.read_regions(path, 0.5, image_shape_px=(100, 100))
    path = _write(tmp_path / "pts.geojson", [
        _annotation({"type": "Point", "coordinates": [1, 2]}, "T"), _annotation(poly, "T")])
    with pytest.warns(UserWarning, match="skipped 1 feature"):
        assert len(geojson.read_regions(path, 0.5)) == 1
    path = _write(tmp_path / "only_points.geojson", [
        _annotation({"type": "Point", "coordinates": [1, 2]}, "T")])
    with pytest.warns(UserWarning), pytest.raises(TrihrgeInputError, match="no polygon"):
        geojson.read_regions(path, 0.5)
    with pytest.raises(TrihrgeInputError, match="no polygon"):
        geojson.read_regions(_write(tmp_path / "empty.geojson", []), 0.5)
    path = _write(tmp_path / "dup.geojson", [_annotation(poly, "T", "x"), _annotation(poly, "S", "x")])
    with pytest.raises(TrihrgeInputError, match="duplicate object id"):
        geojson.read_regions(path, 0.5)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(TrihrgeInputError, match="not valid JSON"):
        geojson.read_regions(tmp_path / "bad.geojson", 0.5)
    with pytest.raises(TrihrgeInputError, match="not found"):
        geojson.read_regions(tmp_path / "missing.geojson", 0.5)
