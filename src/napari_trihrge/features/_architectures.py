"""The known ViT architectures (UNI, UNI2-h) and how an architecture name is resolved.

An :class:`Architecture` is a timm model name, its arguments, its Hugging Face repo and its input
transform (mean/std, input size, native pixel size). Any other timm model name is accepted too
(:func:`is_timm_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import TrihrgeInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def uni_args() -> dict[str, Any]:
    """timm arguments of UNI (ViT-L/16) on ``vit_large_patch16_224``."""
    return dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                dynamic_img_size=True)


def uni2h_args() -> dict[str, Any]:
    """timm arguments of UNI2-h (ViT-H/14, SwiGLU, 8 registers) on ``vit_giant_patch14_224``."""
    import timm
    import torch

    return dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
                mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU, reg_tokens=8,
                dynamic_img_size=True)


@dataclass(frozen=True)
class Architecture:
    """A known encoder: timm model name + arguments, hub repo, input transform."""

    timm_name: str
    model_args: Callable[[], dict[str, Any]]
    hub_id: str | None = None
    weights_file: str = "pytorch_model.bin"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_px: int = 224
    native_um_per_px: float = 0.5
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, Architecture] = {
    "uni": Architecture("vit_large_patch16_224", uni_args, hub_id="MahmoodLab/UNI",
                        description="UNI ViT-L/16 (1024-d), gated: request access on Hugging Face"),
    "uni2-h": Architecture("vit_giant_patch14_224", uni2h_args, hub_id="MahmoodLab/UNI2-h",
                           description="UNI2-h ViT-H/14 with 8 registers (1536-d), gated"),
}


@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def is_timm_model(name: str) -> bool:
    """Whether ``name`` is a timm architecture (with or without a ``.tag``)."""
    import timm

    base = name.split(".")[0]
    return name in _timm_names() or base in _timm_names() or bool(timm.is_model(name))


def resolve_architecture(architecture: str | Architecture | None,
                         model_args: dict[str, Any] | None
                         ) -> tuple[str, dict[str, Any], Architecture | None, str]:
    """(timm name, model args, known Architecture or None, label)."""
    if isinstance(architecture, Architecture):
        arch = architecture
        label = arch.timm_name
    elif isinstance(architecture, str) and architecture.lower() in ARCHITECTURES:
        label = architecture.lower()
        arch = ARCHITECTURES[label]
    elif isinstance(architecture, str):
        if not is_timm_model(architecture):
            raise TrihrgeInputError(
                f"unknown architecture {architecture!r}",
                f"use {', '.join(ARCHITECTURES)} or a timm model name (timm.list_models())")
        args = {"num_classes": 0, **(model_args or {})}
        return architecture, args, None, architecture
    else:
        raise TrihrgeInputError("architecture is required", "pass architecture='uni'")
    args = {**arch.model_args(), **(model_args or {})}
    return arch.timm_name, args, arch, label

