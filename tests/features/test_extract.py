"""extract_features: (N, S, D) bags, the on-disk cache, progress."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.features import StainTextureEncoder, cache_key, extract_features
from napari_trihrge.io.image import TissueImage
from napari_trihrge.progress import Progress


@pytest.fixture(scope="module")
def image() -> TissueImage:
    rng = np.random.default_rng(0)
    base = rng.integers(60, 256, size=(30, 40, 3), dtype=np.uint8)
    return TissueImage.from_array(np.kron(base, np.ones((10, 10, 1), dtype=np.uint8)), 1.0)


@pytest.fixture
def counted(monkeypatch):
    enc = StainTextureEncoder()
    calls = []
    real = enc.embed_windows

    def counting(image, centres, window_um, *, progress=None):
        calls.append(window_um)
        return real(image, centres, window_um, progress=progress)

    monkeypatch.setattr(enc, "embed_windows", counting)
    return enc, calls


CENTRES = np.array([[50.0, 60.0], [150.0, 200.0], [290.0, 390.0], [-10.0, 5.0]])


def test_bag_shape_and_content(image, counted):
    enc, calls = counted
    bag = extract_features(image, CENTRES, enc, windows_um=(56.0, 112.0, 336.0))
    assert bag.shape == (4, 3, enc.embed_dim) and bag.dtype == np.float32
    assert calls == [56.0, 112.0, 336.0]
    fresh = StainTextureEncoder()
    np.testing.assert_array_equal(bag[:, 1], fresh.embed_windows(image, CENTRES, 112.0))


def test_second_call_hits_the_cache(tmp_path, image, counted):
    enc, calls = counted
    events = []
    a = extract_features(image, CENTRES, enc, cache_dir=tmp_path,
                         progress=Progress(on_event=events.append))
    assert len(calls) == 2
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temporary files left behind
    prog = Progress()
    b = extract_features(image, CENTRES + 0.001, enc, cache_dir=tmp_path, progress=prog)
    assert len(calls) == 2  # rounded to 0.01 um: same key, no new embedding
    np.testing.assert_array_equal(a, b)
    assert prog.stage_name == "features" and prog.total == prog.done == 8
    assert events[0] == {"event": "stage", "stage": "features", "total": 8}
    extract_features(image, CENTRES + 1.0, enc, cache_dir=tmp_path)  # other locations
    assert len(calls) == 4
    extract_features(image, CENTRES, enc, windows_um=(112.0,), cache_dir=tmp_path)
    assert len(calls) == 5


def test_corrupt_cache_entry_is_recomputed(tmp_path, image, counted):
    enc, calls = counted
    a = extract_features(image, CENTRES, enc, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"garbage")
    b = extract_features(image, CENTRES, enc, cache_dir=tmp_path)
    assert len(calls) == 4
    np.testing.assert_array_equal(a, b)
    assert np.load(path).shape == a.shape


def test_cache_key_depends_on_every_input(image):
    enc = StainTextureEncoder()
    k = cache_key(image, CENTRES, (112.0, 336.0), enc)
    assert k == cache_key(image, CENTRES.copy(), [112, 336], enc)
    assert k != cache_key(image, CENTRES[:3], (112.0, 336.0), enc)
    assert k != cache_key(image, CENTRES, (112.0,), enc)
    assert k != cache_key(image, CENTRES, (112.0, 336.0), StainTextureEncoder(px_per_window=16))
    assert k != cache_key(image, CENTRES, (112.0, 336.0), enc, mode="dense")
    other = TissueImage.from_array(np.asarray(image.array)[::-1].copy(), 1.0)
    assert k != cache_key(other, CENTRES, (112.0, 336.0), enc)


def test_dense_mode_with_local_window(image):
    bag = extract_features(image, CENTRES, "stain-texture", windows_um=(112.0, 336.0),
                           dense=True, local_window_um=24.0)
    assert bag.shape == (4, 3, 84)
    enc = StainTextureEncoder()
    np.testing.assert_allclose(bag[:, 0], enc.embed_windows(image, CENTRES, 24.0))


def test_no_windows_is_an_input_error(image):
    from napari_trihrge.errors import TrihrgeInputError

    with pytest.raises(TrihrgeInputError, match="no window sizes"):
        extract_features(image, CENTRES, "stain-texture", windows_um=())
