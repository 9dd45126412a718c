"""Hugging Face hub access: offline means no connection, gated and refused repos say how to get
access, and no token is ever shown."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import logging  # noqa: E402

from napari_trihrge.errors import EncoderAccessError  # noqa: E402
from napari_trihrge.features import create_encoder  # noqa: E402


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
