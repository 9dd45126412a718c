"""timm/UNI encoders: strict local checkpoints, hub access errors, batching, dense tokens.

No test downloads anything: the hub is offline (conftest) and the ViTs are tiny random ones
built with UNI's architecture arguments."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from napari_trihrge.errors import EncoderAccessError, TrihrgeInputError  # noqa: E402
from napari_trihrge.features import create_encoder  # noqa: E402
from napari_trihrge.features.vit import TimmEncoder, _uni_args  # noqa: E402
from napari_trihrge.io.image import TissueImage  # noqa: E402
from napari_trihrge.progress import Progress  # noqa: E402

TINY = dict(depth=2, embed_dim=64, num_heads=2)


def tiny_uni(seed: int = 0, **over) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("vit_large_patch16_224", pretrained=False,
                              **{**_uni_args(), **TINY, **over})
    with torch.no_grad():  # LayerScale starts at 1e-5: make the blocks matter for the test
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(0.5)
    return model.eval()


@pytest.fixture(scope="module")
def image() -> TissueImage:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # 480 x 640 px blocks
    return TissueImage.from_array(big, 0.5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("uni") / "pytorch_model.bin"
    model = tiny_uni()
    torch.save(model.state_dict(), path)
    return path, model


def test_local_checkpoint_loads_strictly_with_uni_architecture(ckpt):
    path, model = ckpt
    enc = create_encoder(path, architecture="uni", model_args=TINY, device="cpu")
    assert isinstance(enc, TimmEncoder) and enc.embed_dim == 64
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(enc.model(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert enc.mean == (0.485, 0.456, 0.406) and enc.input_px == 224


def test_safetensors_checkpoint(tmp_path, ckpt):
    from safetensors.torch import save_file

    _, model = ckpt
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = create_encoder(str(path), architecture="uni", model_args=TINY, device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(enc.model(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_embed_windows_equals_model_on_rgb_windows(ckpt, image):
    path, model = ckpt
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


def test_mismatched_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(tiny_uni(depth=3).state_dict(), path)
    with pytest.raises(TrihrgeInputError, match="does not match.*unexpected keys") as err:
        create_encoder(path, architecture="uni", model_args=TINY, device="cpu")
    assert "architecture" in err.value.hint


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(TrihrgeInputError, match="cannot read the encoder checkpoint") as err:
        create_encoder(path, architecture="uni", device="cpu")
    assert "download it again" in err.value.hint


def test_checkpoint_without_architecture_asks_for_it(ckpt):
    path, _ = ckpt
    with pytest.raises(TrihrgeInputError, match="which architecture"):
        create_encoder(path, device="cpu")


def test_missing_checkpoint_path():
    with pytest.raises(TrihrgeInputError, match="not found"):
        create_encoder("/nonexistent/dir/pytorch_model.bin", architecture="uni")


def test_uni_offline_fails_fast_with_howto_and_no_token(monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_envSECRETtoken123")
    caplog.set_level(logging.DEBUG)
    import socket

    connections = []

    def no_network(self, address, *args, **kwargs):
        connections.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(EncoderAccessError) as err:
        create_encoder("uni", hf_token="hf_argSECRETtoken456", device="cpu")
    assert connections == []  # offline means offline: no connection is even attempted
    msg = str(err.value)
    assert "https://huggingface.co/MahmoodLab/UNI" in msg
    assert "HF_TOKEN" in msg and "huggingface-cli login" in msg
    assert "--encoder /path/to/pytorch_model.bin" in msg
    assert "not in the local Hugging Face cache" in msg
    out = capsys.readouterr()
    seen = msg + out.out + out.err + caplog.text + repr(err.value.__cause__)
    assert "SECRET" not in seen


def test_hub_models_offline_raise_access_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderAccessError, match="MahmoodLab/UNI2-h"):
        create_encoder("uni2-h", device="cpu")
    with pytest.raises(EncoderAccessError, match="not in the local"):
        create_encoder("hf-hub:someorg/some-model", device="cpu")
    with pytest.raises(EncoderAccessError, match="pretrained weights"):
        create_encoder("resnet18", device="cpu")


def test_timm_name_with_random_weights(image):
    enc = create_encoder("vit_tiny_patch16_224", pretrained=False, device="cpu",
                         model_args=dict(depth=1))
    assert enc.embed_dim == 192
    f = enc.embed_windows(image, [[100.0, 100.0]], 336.0)
    assert f.shape == (1, 192) and np.all(np.isfinite(f))
    other = create_encoder("vit_tiny_patch16_224", pretrained=False, device="cpu",
                           model_args=dict(depth=1))
    assert enc.config_key() != other.config_key()  # different random weights


def test_batching_does_not_change_results(ckpt, image):
    path, _ = ckpt
    centres = np.random.default_rng(1).uniform(0, 300, size=(7, 2))
    a = create_encoder(path, architecture="uni", model_args=TINY, device="cpu", batch_size=2,
                       num_workers=2).embed_windows(image, centres, 112.0)
    b = create_encoder(path, architecture="uni", model_args=TINY, device="cpu",
                       batch_size=64).embed_windows(image, centres, 112.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_token_grid_and_dense_embeddings(ckpt, image):
    path, _ = ckpt
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


def _fake_response(status: int):
    from types import SimpleNamespace

    return SimpleNamespace(status_code=status, headers={}, request=None)


@pytest.mark.parametrize("kind", ["gated", "401", "403"])
def test_gated_or_forbidden_hub_repo_says_how_to_get_access(monkeypatch, kind):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    def fake_download(repo_id, filename, **kw):
        assert kw.get("token") == "hf_argSECRET"  # passed through, for this call only
        if kind == "gated":
            raise GatedRepoError("gated hf_argSECRET", response=_fake_response(403))
        if kind == "401":
            raise RepositoryNotFoundError("401", response=_fake_response(401))
        raise HfHubHTTPError("403 hf_argSECRET", response=_fake_response(403))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(EncoderAccessError) as err:
        create_encoder("uni", hf_token="hf_argSECRET", device="cpu")
    msg = str(err.value)
    assert "request access at https://huggingface.co/MahmoodLab/UNI" in msg
    assert "HF_TOKEN" in msg and "--encoder /path/to/pytorch_model.bin" in msg
    assert "SECRET" not in msg and err.value.__cause__ is None


def test_hub_layout_folder_with_config_json(tmp_path):
    import json

    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 1000,
           "model_args": {"depth": 1},
           "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "input_size": [3, 224, 224]}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    enc = create_encoder(tmp_path, device="cpu")
    assert enc.mean == (0.5, 0.5, 0.5) and enc.embed_dim == 192
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
        np.testing.assert_allclose(enc.model(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
