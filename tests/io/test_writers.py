"""Writers: atomic h5ad, OME-TIFF and OME-Zarr maps, read_map round trips, overwrite refusal."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import tifffile

from napari_trihrge import io
from napari_trihrge.errors import TrihrgeInputError


def _maps(n=3, rows=20, cols=30):
    return np.random.default_rng(0).random((n, rows, cols)).astype(np.float32)


def test_h5ad_atomic_round_trip_and_overwrite(tmp_path):
    a = ad.AnnData(X=np.arange(6, dtype=np.float32).reshape(3, 2))
    a.obsm["spatial"] = np.ones((3, 2))
    a.uns["trihrge"] = {"um_per_px": 0.5, "platform": "visium"}
    path = tmp_path / "out" / "a.h5ad"
    assert io.write_h5ad_atomic(a, path) == path
    b = ad.read_h5ad(path)
    np.testing.assert_array_equal(b.X, a.X)
    assert b.uns["trihrge"]["um_per_px"] == 0.5
    with pytest.raises(TrihrgeInputError, match="already exists.*--overwrite"):
        io.write_h5ad_atomic(a, path)
    a.X[0, 0] = 42
    io.write_h5ad_atomic(a, path, overwrite=True)
    assert ad.read_h5ad(path).X[0, 0] == 42
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.h5ad"]  # no temp files left


def test_ome_tiff_round_trip(tmp_path):
    maps = _maps()
    path = tmp_path / "maps.ome.tif"
    io.write_ome_tiff(path, maps, 8.0, ["A", "B", "C"], origin_rc_um=(4.0, 6.0))
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.series[0].axes == "CYX"
        assert 'PhysicalSizeX="8.0"' in tf.ome_metadata
    arr, um, names, origin = io.read_map(path, with_origin=True)
    assert um == 8.0 and names == ["A", "B", "C"]
    np.testing.assert_array_equal(np.asarray(arr), maps)
    np.testing.assert_array_equal(origin, [4.0, 6.0])
    with pytest.raises(TrihrgeInputError, match="already exists.*--overwrite"):
        io.write_ome_tiff(path, maps, 8.0, ["A", "B", "C"])
    io.write_ome_tiff(path, maps[0], 4.0, ["only"], overwrite=True)  # 2-D map
    arr, um, names = io.read_map(path)
    assert arr.shape == (1, 20, 30) and um == 4.0 and names == ["only"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.ome.tif"]


def test_ome_tiff_from_lazy_array(tmp_path):
    import dask.array as da

    maps = _maps()
    io.write_ome_tiff(tmp_path / "m.ome.tif", da.from_array(maps, chunks=(1, 20, 30)), 2.0)
    arr, _, names = io.read_map(tmp_path / "m.ome.tif")
    np.testing.assert_array_equal(np.asarray(arr), maps)
    assert names == ["channel_0", "channel_1", "channel_2"]


def test_ome_zarr_chunked_writes_and_metadata(tmp_path):
    maps = _maps(n=5)
    path = tmp_path / "maps.ome.zarr"
    writer = io.open_ome_zarr_map(path, maps.shape, (2, 10, 10), 8.0, list("abcde"),
                                  origin_rc_um=(4.0, 4.0))
    assert not path.exists() and writer.partial_path.exists()
    for g0 in range(0, 5, 2):
        writer[g0:g0 + 2] = maps[g0:g0 + 2]
    assert len(writer) == 5 and writer.ndim == 3
    np.testing.assert_array_equal(np.asarray(writer), maps)
    assert writer.finalize() == path
    assert not writer.partial_path.exists()
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    tr = ms["datasets"][0]["coordinateTransformations"]
    assert tr[0] == {"type": "scale", "scale": [1.0, 8.0, 8.0]}
    assert tr[1] == {"type": "translation", "translation": [0.0, 4.0, 4.0]}
    assert [c["label"] for c in attrs["omero"]["channels"]] == list("abcde")
    arr, um, names, origin = io.read_map(path, with_origin=True)
    assert um == 8.0 and names == list("abcde") and arr.chunksize == (2, 10, 10)
    np.testing.assert_array_equal(np.asarray(arr), maps)
    np.testing.assert_array_equal(origin, [4.0, 4.0])
    with pytest.raises(TrihrgeInputError, match="already exists.*--overwrite"):
        io.open_ome_zarr_map(path, maps.shape, None, 8.0, list("abcde"))


def test_ome_zarr_map_is_multiscale_and_ome_zarr_py_reads_it(tmp_path):
    """ome-zarr-py's reader opens our map: every level, its micrometre scale and translation
    (the centre of the level's first pixel), the gene names; each coarser level is the mean of
    2 x 2 blocks, NaN outside the tissue ignored."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    maps = np.random.default_rng(1).random((2, 1100, 140)).astype(np.float32)
    maps[:, :300, :] = np.nan  # outside the tissue
    maps[:, 301, 1] = np.nan   # one missing pixel inside a block
    path = tmp_path / "maps.ome.zarr"
    with io.open_ome_zarr_map(path, maps.shape, (1, 256, 140), 8.0, ["G1", "G2"],
                              origin_rc_um=(4.0, 6.0), fill_value=np.nan) as writer:
        writer[:] = maps
    node = list(Reader(parse_url(str(path)))())[0]
    assert [a.shape for a in node.data] == [(2, 1100, 140), (2, 550, 70), (2, 275, 35)]
    assert node.metadata["channel_names"] == ["G1", "G2"]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    transforms = node.metadata["coordinateTransformations"]
    for k, factor in enumerate((1, 2, 4)):
        scale, translation = transforms[k]
        assert scale["scale"] == [1.0, 8.0 * factor, 8.0 * factor]
        # pixel (0, 0) of level k is centred on its block of level-0 pixels 0 .. factor - 1
        centre = np.array([4.0, 6.0]) + (factor - 1) / 2 * 8.0
        np.testing.assert_allclose(translation["translation"][1:], centre)
    np.testing.assert_array_equal(np.asarray(node.data[0]), maps)
    level1 = np.asarray(node.data[1])
    blocks = maps.reshape(2, 550, 2, 70, 2)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmean(blocks, axis=(2, 4))
    np.testing.assert_allclose(level1, expected, rtol=1e-6)
    assert np.isnan(level1[:, :150]).all() and not np.isnan(level1[:, 150:]).any()
    levels = io.read_map_levels(path)
    assert [(a.shape, um) for a, um, _ in levels] == [
        ((2, 1100, 140), 8.0), ((2, 550, 70), 16.0), ((2, 275, 35), 32.0)]
    np.testing.assert_allclose(levels[2][2], [16.0, 18.0])


def test_a_map_written_band_by_band_equals_the_map_written_whole(tmp_path):
    """``stream_levels``: the coarser levels averaged in memory band by band (``write_band``)
    are those ``finalize`` reads back from the disk, with the same metadata; every level is
    chunked as the full resolution, so bands never share a chunk."""
    import zarr

    maps = np.random.default_rng(2).random((4, 530, 70)).astype(np.float32)
    maps[:, :90] = np.nan  # outside the tissue
    maps[:, 301, 3] = np.nan
    kw = dict(chunks=(2, 32, 32), um_per_px=8.0, gene_names=list("abcd"),
              origin_rc_um=(4.0, 6.0), fill_value=np.nan)
    whole = tmp_path / "whole.ome.zarr"
    with io.open_ome_zarr_map(whole, maps.shape, **kw) as writer:
        writer[:] = maps
    expected = io.read_map_levels(whole)
    for with_mask in (False, True):  # NaN found block by block, or where the mask says
        banded = tmp_path / f"banded{with_mask}.ome.zarr"
        writer = io.open_ome_zarr_map(banded, maps.shape, stream_levels=True, **kw)
        assert writer.band_rows == 32 * 2  # one coarser level (530 rows)
        for r0 in range(0, maps.shape[1], writer.band_rows):
            band = maps[:, r0:r0 + writer.band_rows]
            valid = ~np.isnan(band[0]) if with_mask else None
            for g0 in (0, 2):
                writer.write_band(g0, r0, band[g0:g0 + 2], valid)
        assert writer.finalize() == banded
        got = io.read_map_levels(banded)
        assert len(got) == len(expected) == 2
        for (a, um_a, origin_a), (b, um_b, origin_b) in zip(got, expected, strict=True):
            assert a.shape == b.shape and um_a == um_b
            np.testing.assert_array_equal(origin_a, origin_b)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                       equal_nan=True)
        assert zarr.open_group(str(banded), mode="r")["1"].chunks == (2, 32, 32)
        assert io.read_map(banded)[2] == list("abcd")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_map_reads_an_ome_zarr_py_image(tmp_path, version, caplog):
    """A map written by ome-zarr-py itself (NGFF 0.4 in zarr format 2, or 0.5 in zarr format 3)
    reads back with its pixel size, origin and channel labels, and without the reader's
    "version mismatch" warning."""
    import logging

    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale

    fmt = FormatV04() if version == "0.4" else FormatV05()
    maps = _maps(n=2, rows=40, cols=24)
    group = zarr.open_group(str(tmp_path / "theirs.zarr"), mode="w", zarr_format=fmt.zarr_format)
    transforms = [[{"type": "scale", "scale": [1.0, 2.5 * f, 2.5 * f]},
                   {"type": "translation", "translation": [0.0, 10.0, 20.0]}] for f in (1, 2)]
    omero = {"channels": [{"label": "ERBB2", "color": "FF0000"},
                          {"label": "CD74", "color": "00FF00"}]}
    write_multiscale([maps, maps[:, ::2, ::2]], group, fmt=fmt, axes="cyx",
                     coordinate_transformations=transforms, metadata={"omero": omero})
    with caplog.at_level(logging.WARNING):
        arr, um, names, origin = io.read_map(tmp_path / "theirs.zarr", with_origin=True)
    assert "mismatch" not in caplog.text
    assert arr.shape == (2, 40, 24) and um == 2.5 and names == ["ERBB2", "CD74"]
    np.testing.assert_array_equal(origin, [10.0, 20.0])
    np.testing.assert_array_equal(np.asarray(arr), maps)
    assert [lv[1] for lv in io.read_map_levels(tmp_path / "theirs.zarr")] == [2.5, 5.0]


def test_ome_zarr_context_manager_aborts_and_overwrites(tmp_path):
    path = tmp_path / "m.zarr"
    with pytest.raises(RuntimeError), io.open_ome_zarr_map(path, (2, 4, 4), None, 1.0) as w:
        w[0] = 1.0
        raise RuntimeError("boom")
    assert not path.exists() and not w.partial_path.exists()
    with io.open_ome_zarr_map(path, (2, 4, 4), None, 1.0, ["x", "y"]) as w:
        w[:] = 3.0
    with io.open_ome_zarr_map(path, (1, 4, 4), None, 2.0, ["z"], overwrite=True) as w:
        w[:] = 5.0
    arr, um, names = io.read_map(path)
    assert arr.shape == (1, 4, 4) and um == 2.0 and names == ["z"]
    assert float(arr.max().compute()) == 5.0


def test_read_map_errors(tmp_path):
    with pytest.raises(TrihrgeInputError, match="map not found"):
        io.read_map(tmp_path / "none.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(TrihrgeInputError, match="cannot read the map"):
        io.read_map(tmp_path / "junk.zarr")
