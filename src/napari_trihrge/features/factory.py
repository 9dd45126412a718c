"""The encoder factories: ``create_encoder`` and the timm ones it calls (UNI, UNI2-h, a hub
model, a local checkpoint, a timm name).

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

import json
import os
from pathlib import Path
from typing import Any

from ..errors import EncoderAccessError, TrihrgeInputError
from . import (
    fullres,  # noqa: F401 - importing it registers stain-texture-nuclei
    handcrafted,  # noqa: F401 - importing it registers the default encoder
)
from ._architectures import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Architecture,
    is_timm_model,
    resolve_architecture,
)
from ._checkpoint import build_model, infer_architecture, load_checkpoint_file, weights_id_of_file
from ._hub import WEIGHT_FILES, hub_download, hub_weights
from .base import Encoder
from .registry import (
    CHECKPOINT_SUFFIXES,
    DEFAULT_ENCODER,
    list_encoders,
    register_encoder,
    registered_factory,
)
from .vit import TimmEncoder


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
        return from_hub(spec[len("hf-hub:"):], device=device, hf_token=hf_token, **kwargs)
    path = Path(spec).expanduser()
    if path.exists():
        return from_local(path, device=device, **kwargs)
    if _looks_like_path(spec):
        raise TrihrgeInputError(
            f"encoder checkpoint not found: {spec}",
            "check the path, or pass a registered encoder name "
            f"({', '.join(list_encoders())}) or 'hf-hub:org/name'")
    if is_timm_model(spec):
        return from_timm(spec, device=device, **kwargs)
    raise TrihrgeInputError(
        f"unknown encoder {spec!r}",
        f"use one of {', '.join(list_encoders())}, 'hf-hub:org/name', a timm model name "
        "(timm.list_models()), or the path of a downloaded checkpoint "
        "(e.g. --encoder /path/to/pytorch_model.bin with architecture 'uni')")


# -------------------------------------------------------------------------------------------
# timm encoders: UNI and UNI2-h (registered), hub models, local checkpoints, timm names
# -------------------------------------------------------------------------------------------
_ENCODER_OPTS = ("batch_size", "num_workers", "precision", "native_um_per_px", "input_px")


def _split_opts(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in _ENCODER_OPTS}
    return opts, kwargs


def _known_encoder(arch_name: str, *, device: str, hf_token: str | None,
                   checkpoint: str | os.PathLike | None = None, model_args: dict | None = None,
                   **kwargs: Any) -> TimmEncoder:
    opts, rest = _split_opts(dict(kwargs))
    if rest:
        raise TrihrgeInputError(f"unexpected options for {arch_name}: {', '.join(rest)}",
                                f"allowed: checkpoint, model_args, {', '.join(_ENCODER_OPTS)}")
    arch = ARCHITECTURES[arch_name]
    if checkpoint is not None:
        return from_local(checkpoint, device=device, architecture=arch_name,
                          model_args=model_args, **opts)
    path = Path(hub_weights(arch.hub_id, hf_token, first=arch.weights_file,
                            arch_label=arch_name))
    return _encoder_from_file(path, arch_name, model_args, device=device, name=arch_name,
                              weights_id=f"hf-hub:{arch.hub_id}@{path.parent.name}", **opts)


@register_encoder("uni", description=ARCHITECTURES["uni"].description)
def _uni(*, device: str = "auto", hf_token: str | None = None, **kwargs: Any) -> TimmEncoder:
    return _known_encoder("uni", device=device, hf_token=hf_token, **kwargs)


@register_encoder("uni2-h", description=ARCHITECTURES["uni2-h"].description)
def _uni2h(*, device: str = "auto", hf_token: str | None = None, **kwargs: Any) -> TimmEncoder:
    return _known_encoder("uni2-h", device=device, hf_token=hf_token, **kwargs)


def _encoder_from_file(path: Path, architecture: str | Architecture | None,
                       model_args: dict | None, *, device: str, name: str, weights_id: str,
                       **opts: Any) -> TimmEncoder:
    sd = load_checkpoint_file(path)
    if architecture is None:
        architecture = infer_architecture(sd)
        if architecture is None:
            raise TrihrgeInputError(
                f"cannot tell which architecture {path.name} belongs to",
                "pass architecture='uni', 'uni2-h' or a timm model name (CLI: --encoder-arch NAME)")
    timm_name, args, arch, label = resolve_architecture(architecture, model_args)
    model = build_model(timm_name, args, sd, path.name, label)
    return TimmEncoder.from_model(model, name=name, weights_id=weights_id, arch=arch,
                                  device=device, **opts)



def from_local(path: str | os.PathLike, *, device: str = "auto",
               architecture: str | Architecture | None = None,
               model_args: dict[str, Any] | None = None, **kwargs: Any) -> TimmEncoder:
    """Encoder from a checkpoint file or a hub-layout folder (``config.json`` + weights).

    With ``architecture`` ('uni', 'uni2-h' or a timm name; ``model_args`` override its
    arguments) the weights are loaded with ``strict=True``; without it the architecture is read
    from ``config.json`` or recognised from the weights (UNI, UNI2-h)."""
    opts, rest = _split_opts(dict(kwargs))
    if rest:
        raise TrihrgeInputError(f"unexpected encoder options: {', '.join(rest)}",
                                f"allowed: architecture, model_args, {', '.join(_ENCODER_OPTS)}")
    path = Path(path).expanduser()
    if path.is_dir():
        files = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        if not files:
            raise TrihrgeInputError(f"no weights file in {path}",
                                    f"the folder needs one of {', '.join(WEIGHT_FILES)}")
        cfg_file = path / "config.json"
        if architecture is None and cfg_file.is_file():
            return _from_config_dir(path, cfg_file, files[0], model_args, device=device, **opts)
        weights = files[0]
    else:
        weights = path
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise TrihrgeInputError(f"{path.name} is not a checkpoint file",
                                    f"pass a {', '.join(CHECKPOINT_SUFFIXES)} file or a folder")
    label = architecture if isinstance(architecture, str) else "local"
    return _encoder_from_file(weights, architecture, model_args, device=device,
                              name=f"{label}:{weights.name}",
                              weights_id=weights_id_of_file(weights), **opts)


def _from_config_dir(folder: Path, cfg_file: Path, weights: Path, model_args: dict | None, *,
                     device: str, **opts: Any) -> TimmEncoder:
    """A folder in the timm hub layout: architecture and transform from ``config.json``."""
    try:
        cfg = json.loads(cfg_file.read_text())
        timm_name = cfg["architecture"]
    except Exception:  # noqa: BLE001 - unreadable or not a timm config: an actionable error
        raise TrihrgeInputError(f"{cfg_file} is not a timm config.json (no 'architecture')",
                                "pass architecture='uni' (or a timm name) explicitly") from None
    sd = load_checkpoint_file(weights)
    known = infer_architecture(sd)
    if known is not None:  # e.g. UNI's own config.json lacks init_values
        return _encoder_from_file(weights, known, model_args, device=device,
                                  name=f"{known}:{folder.name}",
                                  weights_id=weights_id_of_file(weights), **opts)
    args = {**cfg.get("model_args", {}), "num_classes": 0, **(model_args or {})}
    pcfg = cfg.get("pretrained_cfg", {})
    head_keys = [k for k in sd if k.startswith(("head.", "fc.", "classifier."))]
    for k in head_keys:  # the encoder is used without its classifier
        sd.pop(k)
    model = build_model(timm_name, args, sd, weights.name, timm_name)
    arch = Architecture(timm_name, dict, mean=tuple(pcfg.get("mean", IMAGENET_MEAN)),
                        std=tuple(pcfg.get("std", IMAGENET_STD)),
                        input_px=int(pcfg.get("input_size", (3, 224, 224))[-1]))
    return TimmEncoder.from_model(model, name=f"{timm_name}:{folder.name}",
                                  weights_id=weights_id_of_file(weights), arch=arch,
                                  device=device, **opts)


def from_hub(repo_id: str, *, device: str = "auto", hf_token: str | None = None,
             model_args: dict[str, Any] | None = None, **kwargs: Any) -> TimmEncoder:
    """Encoder from a timm model on the Hugging Face hub (``org/name``)."""
    for label, arch in ARCHITECTURES.items():
        if arch.hub_id and arch.hub_id.lower() == repo_id.lower():
            return _known_encoder(label, device=device, hf_token=hf_token,
                                  model_args=model_args, **kwargs)
    cfg = Path(hub_download(repo_id, "config.json", hf_token=hf_token))
    weights = Path(hub_weights(repo_id, hf_token))
    enc = _from_config_dir(cfg.parent, cfg, weights, model_args, device=device,
                           **_split_opts(dict(kwargs))[0])
    enc.name = f"hf-hub:{repo_id}"
    enc.weights_id = f"hf-hub:{repo_id}@{weights.parent.name}"
    return enc


def from_timm(name: str, *, device: str = "auto", pretrained: bool = True,
              model_args: dict[str, Any] | None = None, **kwargs: Any) -> TimmEncoder:
    """Any timm model by name (ImageNet weights unless ``pretrained=False``)."""
    import timm

    opts, rest = _split_opts(dict(kwargs))
    args = {"num_classes": 0, **(model_args or {}), **rest}
    try:
        model = timm.create_model(name, pretrained=pretrained, **args).eval()
    except Exception as err:  # noqa: BLE001 - hub and timm errors vary: an actionable error
        if pretrained:
            raise EncoderAccessError(
                f"cannot load pretrained weights for the timm model {name!r} "
                f"({type(err).__name__}); offline or not downloadable. Connect once to "
                "download them, or pass a local checkpoint with --encoder /path/to/file.bin"
            ) from None
        raise TrihrgeInputError(f"cannot build the timm model {name!r}: {err}",
                                "check the model name and model_args") from None
    cfg = timm.data.resolve_data_config({}, model=model)
    arch = Architecture(name, dict, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                        input_px=int(cfg["input_size"][-1]))
    weights_id = "imagenet" if pretrained else "random"
    return TimmEncoder.from_model(model, name=name, weights_id=weights_id, arch=arch,
                                  device=device, **opts)
