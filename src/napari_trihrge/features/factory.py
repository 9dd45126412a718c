"""``create_encoder``: an encoder from a name, a hub id, a timm name or a checkpoint.

``create_encoder(name_or_path)`` resolves, in this order:

1. an :class:`~napari_trihrge.features.base.Encoder` instance (returned as is);
2. a registered name (:func:`list_encoders`): ``'stain-texture'`` (default, no download),
   ``'uni'``, ``'uni2-h'``;
3. ``'hf-hub:org/name'``: a timm model on the Hugging Face hub;
4. an existing local checkpoint file (``.bin``, ``.pth``, ``.pt``, ``.safetensors``) or folder in
   the hub layout (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``); pass
   ``architecture='uni'`` (or ``'uni2-h'``, or a timm model name) for a bare weights file, e.g.
   ``create_encoder('/path/pytorch_model.bin', architecture='uni')``;
5. any other timm model name (``timm.list_models()``), ImageNet weights (``pretrained=False``
   for random weights).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import TrihrgeInputError
from . import handcrafted, vit  # noqa: F401 - importing them registers their encoders
from .base import Encoder
from .registry import CHECKPOINT_SUFFIXES, DEFAULT_ENCODER, list_encoders, registered_factory


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or "/" in s or s.startswith(("~", "."))
            or s.lower().endswith(CHECKPOINT_SUFFIXES))


def create_encoder(name_or_path: str | os.PathLike | Encoder = DEFAULT_ENCODER, *,
                   device: str = "auto", hf_token: str | None = None, **kwargs: Any) -> Encoder:
    """Build an encoder from a registered name, ``'hf-hub:org/name'``, a timm model name, or a
    local checkpoint file/folder (see the module docstring). ``hf_token`` is used for this call
    only (never stored or logged); without it ``HF_TOKEN`` or the ``huggingface-cli login`` token
    is used. Extra keyword arguments go to the encoder (e.g. ``batch_size``, ``architecture``,
    ``model_args``)."""
    if isinstance(name_or_path, Encoder):
        return name_or_path
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise TrihrgeInputError(f"invalid encoder {name_or_path!r}",
                                f"pass one of {', '.join(list_encoders())}, 'hf-hub:org/name', "
                                "a timm model name or a checkpoint path")
    spec = name_or_path.strip()
    factory = registered_factory(spec)
    if factory is not None:
        return factory(device=device, hf_token=hf_token, **kwargs)
    if spec.startswith("hf-hub:"):
        return vit.from_hub(spec[len("hf-hub:"):], device=device, hf_token=hf_token, **kwargs)
    path = Path(spec).expanduser()
    if path.exists():
        return vit.from_local(path, device=device, **kwargs)
    if _looks_like_path(spec):
        raise TrihrgeInputError(
            f"encoder checkpoint not found: {spec}",
            "check the path, or pass a registered encoder name "
            f"({', '.join(list_encoders())}) or 'hf-hub:org/name'")
    if vit.is_timm_model(spec):
        return vit.from_timm(spec, device=device, **kwargs)
    raise TrihrgeInputError(
        f"unknown encoder {spec!r}",
        f"use one of {', '.join(list_encoders())}, 'hf-hub:org/name', a timm model name "
        "(timm.list_models()), or the path of a downloaded checkpoint "
        "(e.g. --encoder /path/to/pytorch_model.bin with architecture 'uni')")
