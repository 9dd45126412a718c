"""Encoder checkpoints: strict loading, safetensors, hub-layout folders, clear errors for
mismatched, corrupt, unnamed or missing files."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import numpy as np  # noqa: E402

from conftest import TINY_VIT as TINY  # noqa: E402
from conftest import tiny_uni  # noqa: E402
from napari_trihrge.errors import TrihrgeInputError  # noqa: E402
from napari_trihrge.features import create_encoder  # noqa: E402


def test_safetensors_checkpoint(tmp_path, uni_checkpoint):
    from safetensors.torch import save_file

    _, model = uni_checkpoint
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enc = create_encoder(str(path), architecture="uni", model_args=TINY, device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(enc.model(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


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


def test_checkpoint_without_architecture_asks_for_it(uni_checkpoint):
    path, _ = uni_checkpoint
    with pytest.raises(TrihrgeInputError, match="which architecture"):
        create_encoder(path, device="cpu")


def test_missing_checkpoint_path():
    with pytest.raises(TrihrgeInputError, match="not found"):
        create_encoder("/nonexistent/dir/pytorch_model.bin", architecture="uni")


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
