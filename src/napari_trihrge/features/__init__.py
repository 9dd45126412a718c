"""Image features: encoder registry (timm style), the hand-crafted default encoder, timm/UNI
encoders, and cached extraction of multi-window feature bags ``(N, S, D)``.

    from napari_trihrge.features import create_encoder, extract_features
    enc = create_encoder("stain-texture")          # or "uni", "hf-hub:org/name", a path
    bags = extract_features(image, centres_rc_um, enc, windows_um=(112.0, 336.0))
"""

from __future__ import annotations

from .base import Encoder, dense_window_sizes
from .extract import DEFAULT_WINDOWS_UM, cache_key, extract_features
from .factory import create_encoder
from .fullres import NucleiStainEncoder
from .handcrafted import StainTextureEncoder
from .registry import DEFAULT_ENCODER, list_encoders, register_encoder

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_WINDOWS_UM",
    "Encoder",
    "NucleiStainEncoder",
    "StainTextureEncoder",
    "cache_key",
    "create_encoder",
    "dense_window_sizes",
    "extract_features",
    "list_encoders",
    "register_encoder",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
