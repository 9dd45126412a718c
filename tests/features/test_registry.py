"""Encoder registry: names, defaults, custom registration, resolution errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.features import (
    DEFAULT_ENCODER,
    Encoder,
    StainTextureEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)
from napari_trihrge.features import registry as reg


def test_builtin_encoders_are_listed_with_descriptions():
    enc = list_encoders()
    assert {"stain-texture", "uni", "uni2-h"} <= set(enc)
    assert all(isinstance(d, str) and d for d in enc.values())
    assert DEFAULT_ENCODER == "stain-texture"


def test_default_encoder_needs_no_weights_and_ignores_gpu_options():
    enc = create_encoder()
    assert isinstance(enc, StainTextureEncoder)
    enc2 = create_encoder("Stain-Texture", device="cuda", hf_token="x", batch_size=8,
                          fine_um_per_px=4.0)
    assert enc2.fine_um_per_px == 4.0
    assert enc.config_key() != enc2.config_key()
    assert create_encoder(enc) is enc  # instances pass through


def test_unknown_stain_texture_option_is_an_input_error():
    with pytest.raises(TrihrgeInputError, match="unexpected option"):
        create_encoder("stain-texture", windoww=3)


def test_register_custom_encoder(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))

    class Const(Encoder):
        name = "const"
        embed_dim = 3

        def __init__(self, value: float = 1.0):
            self.value = value

        def embed_windows(self, image, centres_rc_um, window_um, *, progress=None):
            return np.full((len(centres_rc_um), 3), self.value, dtype=np.float32)

    @register_encoder("const", description="constant features")
    def make_const(*, device="auto", hf_token=None, value=1.0):
        return Const(value)

    assert list_encoders()["const"] == "constant features"
    enc = create_encoder("const", value=2.0)
    assert isinstance(enc, Const) and enc.value == 2.0


@pytest.mark.parametrize("spec, match", [
    ("no-such-encoder", "unknown encoder"),
    ("/does/not/exist.pth", "not found"),
    ("./weights.safetensors", "not found"),
    ("", "invalid encoder"),
])
def test_bad_encoder_names(spec, match):
    with pytest.raises(TrihrgeInputError, match=match) as err:
        create_encoder(spec)
    assert err.value.hint


def test_importing_features_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, napari_trihrge.features as f; f.list_encoders(); "
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False False"
