"""The timm encoder: UNI checkpoints embed RGB windows, batching, dense tokens, timm names.

No test downloads anything: the hub is offline (conftest) and the ViTs are tiny random ones
built with UNI's architecture arguments (conftest.tiny_uni)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from conftest import TINY_VIT as TINY  # noqa: E402
from napari_trihrge.features import create_encoder  # noqa: E402
from napari_trihrge.features.vit import TimmEncoder  # noqa: E402
from napari_trihrge.io.image import TissueImage  # noqa: E402
from napari_trihrge.progress import Progress  # noqa: E402


@pytest.fixture(scope="module")
def image() -> TissueImage:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # 480 x 640 px blocks
    return TissueImage.from_array(big, 0.5)


def test_local_checkpoint_loads_strictly_with_uni_architecture(uni_checkpoint):
    path, model = uni_checkpoint
    enc = create_encoder(path, architecture="uni", model_args=TINY, device="cpu")
    assert isinstance(enc, TimmEncoder) and enc.embed_dim == 64
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(enc.model(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert enc.mean == (0.485, 0.456, 0.406) and enc.input_px == 224


def test_embed_windows_equals_model_on_rgb_windows(uni_checkpoint, image):
    path, model = uni_checkpoint
    enc = create_encoder(path, architecture="uni", model_args=TINY, device="cpu", batch_size=3)
    centres = np.array([[100.0, 120.0], [50.0, 300.0], [200.0, 10.0], [-30.0, 20.0],
                        [120.0, 160.0]])
    prog = Progress()
    prog.stage("features", total=len(centres))
    out = enc.embed_windows(image, centres, 112.0, progress=prog)
    assert out.shape == (5, 64) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert prog.done == len(centres)
    tiles = np.stack([image.read_um(c - 56.0, (112.0, 112.0), (224, 224)) for c in centres])
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model((x - mean) / std).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    # RGB, not BGR: swapping the channels changes the embedding
    with torch.no_grad():
        bgr = model((x.flip(1) - mean) / std).numpy()
    assert not np.allclose(out, bgr, atol=1e-3)


def test_timm_name_with_random_weights(image):
    enc = create_encoder("vit_tiny_patch16_224", pretrained=False, device="cpu",
                         model_args=dict(depth=1))
    assert enc.embed_dim == 192
    f = enc.embed_windows(image, [[100.0, 100.0]], 336.0)
    assert f.shape == (1, 192) and np.all(np.isfinite(f))
    other = create_encoder("vit_tiny_patch16_224", pretrained=False, device="cpu",
                           model_args=dict(depth=1))
    assert enc.config_key() != other.config_key()  # different random weights


def test_batching_does_not_change_results(uni_checkpoint, image):
    path, _ = uni_checkpoint
    centres = np.random.default_rng(1).uniform(0, 300, size=(7, 2))
    a = create_encoder(path, architecture="uni", model_args=TINY, device="cpu", batch_size=2,
                       num_workers=2).embed_windows(image, centres, 112.0)
    b = create_encoder(path, architecture="uni", model_args=TINY, device="cpu",
                       batch_size=64).embed_windows(image, centres, 112.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_token_grid_and_dense_embeddings(uni_checkpoint, image):
    path, _ = uni_checkpoint
    enc = create_encoder(path, architecture="uni", model_args=TINY, device="cpu", batch_size=4)
    grid, tok_um = enc.token_grid(image, (0.0, 0.0), (2, 3))
    assert grid.shape == (28, 42, 64) and tok_um == pytest.approx(8.0)
    # token (i, j) covers [i*8, (i+1)*8) um: it equals the patch token of that tile
    tile = image.read_um((0.0, 112.0), (112.0, 112.0), (224, 224))
    tok = enc._tokens(torch.from_numpy(tile[None].copy()))[0]
    np.testing.assert_allclose(grid[:14, 14:28].astype(np.float32), tok.astype(np.float32),
                               atol=1e-2)
    pts = np.array([[60.0, 60.0], [56.0, 56.0], [100.0, 236.0], [-20.0, 10.0]])
    prog = Progress()
    prog.stage("features", total=4 * 3)
    bag = enc.embed_dense(image, pts, (112.0, 336.0), local_window_um=8.0, progress=prog)
    assert bag.shape == (4, 3, 64) and np.all(np.isfinite(bag)) and prog.done == 12
    # the local entry of a point at a token centre is that token
    grid0, _ = enc.token_grid(image, (0.0, 0.0), (1, 1))
    np.testing.assert_allclose(bag[0, 0], grid0[7, 7].astype(np.float32), atol=2e-2)
    # the 112 um window centred on a tile is the mean of the tile's tokens
    np.testing.assert_allclose(bag[1, 1], grid0.astype(np.float32).mean((0, 1)), atol=2e-2)
