"""Encoder registry (timm style): names -> factories. A leaf: encoders register themselves
(:func:`register_encoder` in :mod:`.handcrafted` and :mod:`.factory`, imported by the package),
:func:`~napari_trihrge.features.factory.create_encoder` looks names up here."""

from __future__ import annotations

from collections.abc import Callable

from .base import Encoder

DEFAULT_ENCODER = "stain-texture"
CHECKPOINT_SUFFIXES = (".bin", ".pth", ".pt", ".safetensors", ".ckpt")

_REGISTRY: dict[str, tuple[Callable[..., Encoder], str]] = {}


def register_encoder(name: str, *, description: str) -> Callable[[Callable[..., Encoder]],
                                                                 Callable[..., Encoder]]:
    """Decorator registering ``factory(*, device, hf_token, **kwargs) -> Encoder`` as ``name``."""
    key = name.lower()

    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[key] = (factory, description)
        return factory

    return deco


def list_encoders() -> dict[str, str]:
    """Registered encoder names -> one-line descriptions."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def registered_factory(name: str) -> Callable[..., Encoder] | None:
    """The factory registered as ``name`` (case-insensitive), or None."""
    entry = _REGISTRY.get(name.lower())
    return None if entry is None else entry[0]
