"""TissueImage and open_image: lazy pyramids, micrometre reads, formats, bad input."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.io import TissueImage, image_size_px, open_image


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_pyramid(path, base: np.ndarray, um_per_px: float, n_sub: int = 2) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(base, subifds=n_sub, photometric="rgb", tile=(64, 64),
                 metadata={"axes": "YXS", "PhysicalSizeX": um_per_px, "PhysicalSizeY": um_per_px})
        for k in range(1, n_sub + 1):
            f = 2 ** k
            tw.write(base[::f, ::f], subfiletype=1, photometric="rgb", tile=(64, 64))


@pytest.fixture
def pyramid(tmp_path):
    base = _rgb(256, 320)
    path = tmp_path / "slide.ome.tif"
    _write_pyramid(path, base, 0.5)
    img = open_image(path, 0.5)
    yield img, base
    img.close()


def test_pyramid_is_lazy_with_levels(pyramid):
    img, base = pyramid
    assert isinstance(img.array, da.Array)
    assert img.is_lazy
    assert [lv[0].shape for lv in img.levels] == [(256, 320, 3), (128, 160, 3), (64, 80, 3)]
    assert [lv[1] for lv in img.levels] == pytest.approx([0.5, 1.0, 2.0])
    assert img.shape_rc_um == pytest.approx((128.0, 160.0))
    assert image_size_px(img.path) == (256, 320)


def test_read_um_returns_exact_pixels_at_native_resolution(pyramid):
    img, base = pyramid
    p = img.um_per_px
    r0, c0, n, m = 37, 51, 20, 30
    # the corner of pixel (r0, c0) is half a pixel before its centre
    out = img.read_um(((r0 - 0.5) * p, (c0 - 0.5) * p), (n * p, m * p), (n, m))
    assert out.dtype == np.uint8 and out.shape == (n, m, 3)
    np.testing.assert_array_equal(out, base[r0:r0 + n, c0:c0 + m])


def test_read_um_uses_the_coarsest_fine_enough_level(pyramid):
    img, base = pyramid
    q = 2 * img.um_per_px  # level 1 pixel size
    r0, c0 = 10, 12
    out = img.read_um(((r0 - 0.5) * q, (c0 - 0.5) * q), (16 * q, 16 * q), (16, 16))
    np.testing.assert_array_equal(out, base[::2, ::2][r0:r0 + 16, c0:c0 + 16])


def test_read_um_pads_white_outside(pyramid):
    img, base = pyramid
    p = img.um_per_px
    out = img.read_um((-10.5 * p, -10.5 * p), (20 * p, 20 * p), (20, 20))
    assert (out[:10] == 255).all() and (out[:, :10] == 255).all()
    np.testing.assert_array_equal(out[10:, 10:], base[:10, :10])
    far = img.read_um((1e5, 1e5), (50.0, 50.0), (8, 8))
    assert (far == 255).all()


def test_read_um_antialiases_when_downsampling():
    checker = ((np.indices((200, 200)).sum(0) % 2) * 255).astype(np.uint8)
    img = TissueImage.from_array(np.repeat(checker[..., None], 3, axis=2), 1.0)
    out = img.read_um((20.0, 20.0), (160.0, 160.0), (40, 40))
    assert abs(float(out.mean()) - 127.5) < 3
    assert float(out.std()) < 8  # aliasing would give pure black/white pixels


def test_at_resolution_uses_pyramid_and_keeps_content(pyramid):
    img, base = pyramid
    small, um = img.at_resolution(2.0, return_um_per_px=True)
    assert small.shape == (64, 80, 3) and um == pytest.approx(2.0)
    np.testing.assert_array_equal(small, base[::4, ::4])  # level 2 as is
    coarse = img.at_resolution(5.0)
    assert coarse.shape == (26, 32, 3) and coarse.dtype == np.uint8
    assert abs(float(coarse.mean()) - float(base.mean())) < 3
    up = img.at_resolution(0.25)
    assert up.shape == (512, 640, 3)


def test_at_resolution_block_mean_on_single_level():
    base = np.zeros((90, 120, 3), np.uint8)
    base[:, 60:] = 200
    img = TissueImage.from_array(base, 1.0)
    out = img.at_resolution(3.0)
    assert out.shape == (30, 40, 3)
    assert (out[:, :19] == 0).all() and (out[:, 21:] == 200).all()


def test_at_resolution_rows_read_only_their_rows_and_equal_the_whole(pyramid):
    img, base = pyramid
    # 1 um/px: level 1 block-averaged by 2 (lazy), and the in-memory base by 2
    for image in (img, TissueImage.from_array(base, 0.5)):
        for res in (0.5, 1.0, 2.0):
            whole = image.at_resolution(res)
            assert image.at_resolution_shape(res) == whole.shape[:2]
            for r0, r1 in ((0, 7), (5, 33), (whole.shape[0] - 3, whole.shape[0] + 9)):
                np.testing.assert_array_equal(image.at_resolution_rows(res, r0, r1),
                                              whole[r0:r1])
    # a ragged last block row: 256 / 3 px is not whole, and at_resolution rounds 85.33 to 85
    # while a block mean gives 86 rows: the whole image is resized, which rows cannot reproduce
    assert TissueImage.from_array(base, 0.5).at_resolution_rows(1.5, 0, 10) is None
    # 254 rows / 4 = 63.5 -> 64: the ragged last row averages the 2 rows that exist
    odd = TissueImage.from_array(base[:254], 0.5)
    np.testing.assert_array_equal(odd.at_resolution_rows(2.0, 60, 64),
                                  odd.at_resolution(2.0)[60:64])


def test_jpeg_png_and_rgba(tmp_path):
    arr = _rgb(40, 50, seed=1)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([arr, np.full((40, 50), 128, np.uint8)])).save(tmp_path / "b.png")
    Image.fromarray(arr).save(tmp_path / "c.jpg", quality=95)
    png = open_image(tmp_path / "a.png", 1.0)
    assert isinstance(png.array, np.ndarray)
    np.testing.assert_array_equal(png.array, arr)
    np.testing.assert_array_equal(open_image(tmp_path / "b.png", 1.0).array, arr)
    jpg = open_image(tmp_path / "c.jpg", 2.0)
    assert jpg.array.shape == (40, 50, 3) and jpg.shape_rc_um == (80.0, 100.0)


def test_plain_bigtiff_and_planar_rgb(tmp_path):
    arr = _rgb(30, 40, seed=2)
    tifffile.imwrite(tmp_path / "big.tif", arr, bigtiff=True, photometric="rgb")
    with open_image(tmp_path / "big.tif", 1) as img:  # a lazy TIFF: closed when done
        np.testing.assert_array_equal(np.asarray(img.array), arr)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(arr, 2, 0), photometric="rgb",
                     planarconfig="separate")
    with open_image(tmp_path / "planar.tif", 1) as img:
        np.testing.assert_array_equal(np.asarray(img.array), arr)


def test_a_lazy_tiff_leaves_no_open_file_behind(tmp_path):
    """Closed by the with block, and by the collector when an image is dropped unclosed (a
    ResourceWarning there is an error in the tests)."""
    import gc

    arr = _rgb(300, 260, seed=6)
    tifffile.imwrite(tmp_path / "t.tif", arr, photometric="rgb", tile=(128, 128))
    with open_image(tmp_path / "t.tif", 1.0) as img:
        assert img.is_lazy
        np.testing.assert_array_equal(np.asarray(img.array[:5, :5]), arr[:5, :5])
    dropped = open_image(tmp_path / "t.tif", 1.0)
    np.testing.assert_array_equal(np.asarray(dropped.array[-5:, -5:]), arr[-5:, -5:])
    del dropped
    gc.collect()


def test_float_and_uint16_arrays_become_uint8():
    f = np.full((4, 4, 3), 0.5, np.float32)
    assert (TissueImage.from_array(f, 1.0).array == 128).all()
    u = np.full((4, 4, 3), 65535, np.uint16)
    assert (TissueImage.from_array(u, 1.0).array == 255).all()


@pytest.mark.parametrize("kind", ["gray_png", "gray_tif", "two_channel_tif"])
def test_non_rgb_images_are_rejected(tmp_path, kind):
    if kind == "gray_png":
        path = tmp_path / "g.png"
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)
    elif kind == "gray_tif":
        path = tmp_path / "g.tif"
        tifffile.imwrite(path, np.zeros((10, 10), np.uint8))
    else:
        path = tmp_path / "two.tif"
        tifffile.imwrite(path, np.zeros((2, 10, 10), np.uint8), photometric="minisblack",
                         metadata={"axes": "CYX"})
    with pytest.raises(TrihrgeInputError, match="not an RGB image"):
        open_image(path, 1.0)
    with pytest.raises(TrihrgeInputError, match="not an RGB image"):
        TissueImage.from_array(np.zeros((10, 10), np.uint8), 1.0)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(TrihrgeInputError, match="not found"):
        open_image(tmp_path / "nope.tif", 1.0)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(TrihrgeInputError, match="cannot read"):
        open_image(bad, 1.0)
    badtif = tmp_path / "bad.tif"
    badtif.write_bytes(b"II*\x00garbage")
    with pytest.raises(TrihrgeInputError, match="cannot read"):
        open_image(badtif, 1.0)
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "ok.png")
    with pytest.raises(TrihrgeInputError, match="positive"):
        open_image(tmp_path / "ok.png", 0)


def test_key_identifies_pixels(tmp_path):
    a = TissueImage.from_array(_rgb(20, 20, seed=3), 1.0)
    b = TissueImage.from_array(_rgb(20, 20, seed=3), 1.0)
    c = TissueImage.from_array(_rgb(20, 20, seed=4), 1.0)
    d = TissueImage.from_array(_rgb(20, 20, seed=3), 2.0)
    assert a.key() == b.key() and len({a.key(), c.key(), d.key()}) == 3
    path = tmp_path / "k.png"
    Image.fromarray(_rgb(20, 20)).save(path)
    k1 = open_image(path, 1.0).key()
    assert k1 == open_image(path, 1.0).key()
    Image.fromarray(_rgb(20, 21)).save(path)
    assert open_image(path, 1.0).key() != k1


def test_single_strip_uncompressed_tiff_is_memory_mapped(tmp_path):
    import zarr

    from napari_trihrge.io.image import _big_chunk_as_memmap

    arr = _rgb(300, 200, seed=5)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, arr, photometric="rgb")  # one strip = one zarr chunk
    with tifffile.imread(path, aszarr=True) as store:
        z = zarr.open(store, mode="r")
        assert _big_chunk_as_memmap(path, 0, z) is None  # small: keep zarr
        mm = _big_chunk_as_memmap(path, 0, z, limit_bytes=1000)
        assert isinstance(mm, da.Array)
        np.testing.assert_array_equal(np.asarray(mm[10:20, 5:9]), arr[10:20, 5:9])
    tifffile.imwrite(tmp_path / "z.tif", arr, photometric="rgb", compression="zlib",
                     rowsperstrip=300)
    with tifffile.imread(tmp_path / "z.tif", aszarr=True) as store:
        zz = zarr.open(store, mode="r")
        assert _big_chunk_as_memmap(tmp_path / "z.tif", 0, zz, limit_bytes=1000) is None


def test_blank_images_are_recognised():
    from napari_trihrge.io.image import TissueImage, blank_at_spots, is_blank, to_rgb_uint8

    tissue = _rgb(60, 80, seed=3)
    assert not is_blank(tissue)
    for flat in (0, 255, 200):
        assert is_blank(np.full((60, 80, 3), flat, np.uint8))
    clear_black = np.zeros((60, 80, 4), np.uint8)  # transparent black RGBA: white background
    assert (to_rgb_uint8(clear_black) == 255).all() and is_blank(to_rgb_uint8(clear_black))
    spots = np.array([[20.0, 20.0], [40.0, 60.0]])
    assert not blank_at_spots(TissueImage.from_array(tissue, 1.0), spots, window_um=10)
    # tissue only far from the spots does not count
    half = np.full((60, 80, 3), 255, np.uint8)
    half[:, 70:] = tissue[:, 70:]
    assert blank_at_spots(TissueImage.from_array(half, 1.0), spots, window_um=10)
