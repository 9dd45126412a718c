"""timm encoders: UNI, UNI2-h, any timm / hf-hub model, or a local checkpoint.

Windows are read with ``TissueImage.read_um`` straight to the encoder's input size (224 px), RGB,
so a 112 um window is seen at 0.5 um/px (UNI's native 20x) and a 336 um window at 1.5 um/px.
They are normalised with the model's mean/std, batched, and embedded under
``torch.inference_mode()`` (bf16 autocast and channels_last on CUDA; timm's attention uses
``F.scaled_dot_product_attention``). The next batch is read in background threads while the
current one runs; on CUDA it is staged in pinned memory.

Gated weights (UNI, UNI2-h) are fetched with ``huggingface_hub`` using ``hf_token`` (this call
only), else ``HF_TOKEN``, else the ``huggingface-cli login`` token; the token is never logged or
stored. Failures raise :class:`~napari_trihrge.errors.EncoderAccessError` saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..device import resolve_device
from ..errors import EncoderAccessError, TrihrgeInputError
from ..progress import Progress, ensure_progress
from .base import Encoder, as_centres_rc_um, check_window_um, dense_window_sizes
from .registry import CHECKPOINT_SUFFIXES, register_encoder

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..io.image import TissueImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


# -------------------------------------------------------------------------------------------
# Known architectures
# -------------------------------------------------------------------------------------------
def _uni_args() -> dict[str, Any]:
    return dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                dynamic_img_size=True)


def _uni2h_args() -> dict[str, Any]:
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
    "uni": Architecture("vit_large_patch16_224", _uni_args, hub_id="MahmoodLab/UNI",
                        description="UNI ViT-L/16 (1024-d), gated: request access on Hugging Face"),
    "uni2-h": Architecture("vit_giant_patch14_224", _uni2h_args, hub_id="MahmoodLab/UNI2-h",
                           description="UNI2-h ViT-H/14 with 8 registers (1536-d), gated"),
}


def _access_hint(repo_id: str) -> str:
    return (f"request access at https://huggingface.co/{repo_id}, then set HF_TOKEN or run "
            "`huggingface-cli login` (or `hf auth login`), or pass a local checkpoint with "
            "--encoder /path/to/pytorch_model.bin")


# -------------------------------------------------------------------------------------------
# Hub access
# -------------------------------------------------------------------------------------------
def _hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import constants

        return env or bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - huggingface_hub missing or changed: the env decides
        return env


class _MissingRemoteFile(Exception):
    pass


def hub_download(repo_id: str, filename: str, *, hf_token: str | None = None,
                 arch_label: str | None = None) -> str:
    """Download (or find in the local cache) one file of a hub repo; errors say what to do.

    Raises :class:`EncoderAccessError` for gated/unauthorised repos, offline mode or network
    failures; ``_MissingRemoteFile`` when the repo exists but has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = _hub_offline()
    try:
        return hf_hub_download(repo_id, filename, token=hf_token or None,
                               local_files_only=offline, library_name="napari-trihrge")
    except GatedRepoError:
        raise EncoderAccessError(
            f"access to {repo_id} is gated and this account has not been granted access (or no "
            f"token was found). {_access_hint(repo_id)}") from None
    except RepositoryNotFoundError:
        raise EncoderAccessError(
            f"the Hugging Face repo {repo_id} was not found or needs a login (401). "
            f"Check the name; for gated models {_access_hint(repo_id)}") from None
    except LocalEntryNotFoundError:
        why = ("the hub is offline (HF_HUB_OFFLINE=1)" if offline
               else "the hub could not be reached (no network?)")
        raise EncoderAccessError(
            f"{filename} of {repo_id} is not in the local Hugging Face cache and {why}. "
            f"Connect once to download it (gated models: request access at "
            f"https://huggingface.co/{repo_id}, then set HF_TOKEN or run `huggingface-cli "
            f"login`), or pass a checkpoint you downloaded by hand with --encoder "
            f"/path/to/pytorch_model.bin (Python: create_encoder('/path/to/pytorch_model.bin', "
            f"architecture='{arch_label or 'uni'}'))") from None
    except EntryNotFoundError:
        raise _MissingRemoteFile(filename) from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise EncoderAccessError(
                f"the Hugging Face hub refused access to {repo_id} (HTTP {status}). "
                f"{_access_hint(repo_id)}") from None
        raise EncoderAccessError(
            f"downloading {filename} of {repo_id} failed (HTTP {status}): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Retry later, or "
            "pass a local checkpoint with --encoder /path/to/pytorch_model.bin") from None
    except OSError as err:  # connection errors, disk full
        raise EncoderAccessError(
            f"downloading {filename} of {repo_id} failed ({type(err).__name__}). Check the "
            "network and disk space, or pass a local checkpoint with --encoder "
            "/path/to/pytorch_model.bin") from None


def _hub_weights(repo_id: str, hf_token: str | None, first: str | None = None,
                 arch_label: str | None = None) -> str:
    names = [first] if first else []
    names += [n for n in _WEIGHT_FILES if n not in names]
    for name in names:
        try:
            return hub_download(repo_id, name, hf_token=hf_token, arch_label=arch_label)
        except _MissingRemoteFile:
            continue
    raise EncoderAccessError(f"the Hugging Face repo {repo_id} has no weights file "
                             f"({', '.join(names)}). Pass a local checkpoint instead")


# -------------------------------------------------------------------------------------------
# Checkpoints
# -------------------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """State dict from a ``.safetensors`` or torch file (``weights_only=True``); unwraps
    ``state_dict`` / ``model`` wrappers and DDP/compile prefixes."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise TrihrgeInputError(f"encoder checkpoint not found: {path}", "check the path")
    try:
        sd = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: an actionable error
        raise TrihrgeInputError(
            f"cannot read the encoder checkpoint {path.name} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''})",
            "the file is corrupt, incomplete or not a PyTorch/safetensors state dict: download "
            "it again (pytorch_model.bin from the model's Hugging Face page)") from None
    if not isinstance(sd, dict) or not sd or not all(hasattr(v, "shape") for v in sd.values()):
        raise TrihrgeInputError(f"{path.name} does not contain a model state dict",
                                "pass the weights file (pytorch_model.bin / model.safetensors)")
    return sd


def _mismatch_summary(model: torch.nn.Module, sd: dict[str, Any]) -> str | None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {theirs[k]} vs "
                     f"model {own[k]})")
    return "; ".join(parts)


def _build(timm_name: str, model_args: dict[str, Any], sd: dict[str, Any] | None,
           what: str, arch_label: str) -> torch.nn.Module:
    """timm model ``timm_name(**model_args)``, loaded strictly from ``sd`` when given."""
    import timm
    import torch

    def create() -> torch.nn.Module:
        try:
            return timm.create_model(timm_name, pretrained=False, **model_args)
        except Exception as err:  # noqa: BLE001 - timm's errors vary: an actionable error
            raise TrihrgeInputError(f"cannot build the timm model {timm_name!r} "
                                    f"({type(err).__name__}: {err})",
                                    "check the architecture name and model_args") from None

    if sd is None:
        return create().eval()
    with torch.device("meta"):  # shapes only: no slow random init of hundreds of M params
        skeleton = create()
    problem = _mismatch_summary(skeleton, sd)
    if problem:
        raise TrihrgeInputError(
            f"the checkpoint {what} does not match the {arch_label} architecture: {problem}",
            "pass the architecture it was trained with (architecture='uni' for UNI "
            "pytorch_model.bin, 'uni2-h' for UNI2-h), or the original, unmodified file")
    try:
        skeleton.load_state_dict(sd, strict=True, assign=True)
        on_meta = any(t.is_meta for t in (*skeleton.parameters(), *skeleton.buffers()))
    except Exception:  # noqa: BLE001 - assign-loading unsupported: the slower path below
        on_meta = True
    if not on_meta:
        return skeleton.float().eval()
    model = create()  # a buffer not in the checkpoint: build for real
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise TrihrgeInputError(f"the checkpoint {what} does not match {arch_label}: "
                                f"{str(err).splitlines()[0]}",
                                "pass the architecture it was trained with") from None
    return model.eval()


def _weights_id_of_file(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _resolve_arch(architecture: str | Architecture | None, model_args: dict[str, Any] | None
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


# -------------------------------------------------------------------------------------------
# Factories
# -------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def is_timm_model(name: str) -> bool:
    """Whether ``name`` is a timm architecture (with or without a ``.tag``)."""
    import timm

    base = name.split(".")[0]
    return name in _timm_names() or base in _timm_names() or bool(timm.is_model(name))


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
    path = Path(_hub_weights(arch.hub_id, hf_token, first=arch.weights_file,
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
    timm_name, args, arch, label = _resolve_arch(architecture, model_args)
    model = _build(timm_name, args, sd, path.name, label)
    return TimmEncoder.from_model(model, name=name, weights_id=weights_id, arch=arch,
                                  device=device, **opts)


def infer_architecture(sd: dict[str, Any]) -> str | None:
    """'uni' / 'uni2-h' when the state dict matches that architecture exactly, else None."""
    import timm
    import torch

    for label, arch in ARCHITECTURES.items():
        with torch.device("meta"):
            m = timm.create_model(arch.timm_name, pretrained=False, **arch.model_args())
        if _mismatch_summary(m, sd) is None:
            return label
    return None


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
        files = [path / n for n in _WEIGHT_FILES if (path / n).is_file()]
        if not files:
            raise TrihrgeInputError(f"no weights file in {path}",
                                    f"the folder needs one of {', '.join(_WEIGHT_FILES)}")
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
                              weights_id=_weights_id_of_file(weights), **opts)


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
                                  weights_id=_weights_id_of_file(weights), **opts)
    args = {**cfg.get("model_args", {}), "num_classes": 0, **(model_args or {})}
    pcfg = cfg.get("pretrained_cfg", {})
    head_keys = [k for k in sd if k.startswith(("head.", "fc.", "classifier."))]
    for k in head_keys:  # the encoder is used without its classifier
        sd.pop(k)
    model = _build(timm_name, args, sd, weights.name, timm_name)
    arch = Architecture(timm_name, dict, mean=tuple(pcfg.get("mean", IMAGENET_MEAN)),
                        std=tuple(pcfg.get("std", IMAGENET_STD)),
                        input_px=int(pcfg.get("input_size", (3, 224, 224))[-1]))
    return TimmEncoder.from_model(model, name=f"{timm_name}:{folder.name}",
                                  weights_id=_weights_id_of_file(weights), arch=arch,
                                  device=device, **opts)


def from_hub(repo_id: str, *, device: str = "auto", hf_token: str | None = None,
             model_args: dict[str, Any] | None = None, **kwargs: Any) -> TimmEncoder:
    """Encoder from a timm model on the Hugging Face hub (``org/name``)."""
    for label, arch in ARCHITECTURES.items():
        if arch.hub_id and arch.hub_id.lower() == repo_id.lower():
            return _known_encoder(label, device=device, hf_token=hf_token,
                                  model_args=model_args, **kwargs)
    cfg = Path(hub_download(repo_id, "config.json", hf_token=hf_token))
    weights = Path(_hub_weights(repo_id, hf_token))
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


# -------------------------------------------------------------------------------------------
# The encoder
# -------------------------------------------------------------------------------------------
def _fingerprint(model: torch.nn.Module) -> str:
    """Cheap identity of the weights: shapes + a strided sample of every tensor."""
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            flat = v.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class TimmEncoder(Encoder):
    """A timm image model used as a window encoder (its pooled output / CLS token)."""

    def __init__(self, model: torch.nn.Module, *, name: str, weights_id: str,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_px: int = 224, native_um_per_px: float = 0.5, device: str = "auto",
                 batch_size: int | None = None, num_workers: int | None = None,
                 precision: str = "auto"):
        import torch

        self.device = str(resolve_device(device))
        self.cuda = self.device.startswith("cuda")
        self.model = model.eval().to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = name
        self.weights_id = weights_id
        self.embed_dim = int(getattr(model, "num_features", 0) or model.embed_dim)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.input_px = int(input_px)
        self.native_um_per_px = float(native_um_per_px)
        if precision not in ("auto", "bf16", "fp16", "fp32"):
            raise TrihrgeInputError(f"unknown precision {precision!r}", "use auto, bf16 or fp32")
        self.precision = ("bf16" if self.cuda else "fp32") if precision == "auto" else precision
        self.batch_size = int(batch_size or (256 if self.cuda else 64))
        self.num_workers = int(num_workers or min(8, os.cpu_count() or 1))
        self._fp: str | None = None
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_model(cls, model: torch.nn.Module, *, name: str, weights_id: str,
                   arch: Architecture | None, device: str = "auto", **opts: Any) -> TimmEncoder:
        a: dict[str, Any] = {}
        if arch is not None:
            a = dict(mean=arch.mean, std=arch.std, input_px=arch.input_px,
                     native_um_per_px=arch.native_um_per_px)
        return cls(model, name=name, weights_id=weights_id, device=device, **{**a, **opts})

    def config_key(self) -> str:
        if self._fp is None:
            self._fp = _fingerprint(self.model)
        return (f"timm|{self.name}|{self.weights_id}|{self._fp}|{self.input_px}|"
                f"{self.mean}|{self.std}|{self.precision}")

    # -- batches ---------------------------------------------------------------------------
    def _read_batch(self, image: TissueImage, top_left_rc_um: np.ndarray, size_um: float,
                    pool: ThreadPoolExecutor) -> torch.Tensor:
        import torch

        px = (self.input_px, self.input_px)
        tiles = list(pool.map(lambda tl: np.asarray(image.read_um(tl, (size_um, size_um), px)
                                                    )[..., :3], list(top_left_rc_um)))
        t = torch.from_numpy(np.ascontiguousarray(np.stack(tiles)))
        return t.pin_memory() if self.cuda else t

    def _to_input(self, batch_u8: torch.Tensor) -> torch.Tensor:
        import torch

        x = batch_u8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self._mean_t) / self._std_t
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _autocast(self):
        import contextlib

        import torch

        if self.precision in ("bf16", "fp16") and self.device != "cpu":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.split(":")[0], dtype=dtype)
        return contextlib.nullcontext()

    def _forward(self, batch_u8: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            y = self.model(self._to_input(batch_u8))
        return y.float().cpu().numpy()

    def _pipelined(self, image: TissueImage, top_left_rc_um: np.ndarray, size_um: float,
                   run: Callable[[torch.Tensor, slice], None], progress: Progress) -> None:
        """Read batch k+1 in background threads while ``run`` processes batch k."""
        n = len(top_left_rc_um)
        slices = [slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        with ThreadPoolExecutor(self.num_workers) as readers, ThreadPoolExecutor(1) as ahead:
            def prep(sl: slice) -> torch.Tensor:
                return self._read_batch(image, top_left_rc_um[sl], size_um, readers)

            fut = ahead.submit(prep, slices[0]) if slices else None
            for k, sl in enumerate(slices):
                batch = fut.result()
                if k + 1 < len(slices):
                    fut = ahead.submit(prep, slices[k + 1])
                run(batch, sl)
                progress.advance(sl.stop - sl.start)

    def embed_windows(self, image: TissueImage, centres_rc_um: np.ndarray, window_um: float,
                      *, progress: Progress | None = None) -> np.ndarray:
        progress = ensure_progress(progress)
        centres = as_centres_rc_um(centres_rc_um)
        window_um = check_window_um(window_um)
        out = np.empty((len(centres), self.embed_dim), dtype=np.float32)

        def run(batch: torch.Tensor, sl: slice) -> None:
            out[sl] = self._forward(batch)

        self._pipelined(image, centres - window_um / 2.0, window_um, run, progress)
        return out

    # -- dense patch-token grid ------------------------------------------------------------
    @property
    def patch_px(self) -> int:
        pe = getattr(self.model, "patch_embed", None)
        ps = getattr(pe, "patch_size", None)
        if ps is None:
            raise TrihrgeInputError(f"{self.name} has no patch tokens",
                                    "use a ViT encoder (uni, uni2-h) for dense token features")
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def _tokens(self, batch_u8: torch.Tensor) -> np.ndarray:
        """Patch tokens (B, G, G, D) float16 of a batch of input_px tiles."""
        import torch

        with torch.inference_mode(), self._autocast():
            feats = self.model.forward_features(self._to_input(batch_u8))
        n_prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        g = self.input_px // self.patch_px
        tok = feats[:, n_prefix:, :].float()
        return tok.reshape(tok.shape[0], g, g, tok.shape[-1]).cpu().numpy().astype(np.float16)

    def token_grid(self, image: TissueImage, top_left_rc_um: Sequence[float],
                   shape_tiles: tuple[int, int], *, progress: Progress | None = None
                   ) -> tuple[np.ndarray, float]:
        """Patch-token grid of ``shape_tiles`` adjacent tiles of ``input_px`` pixels at the
        native pixel size, starting at ``top_left_rc_um``: ``(R*G, C*G, D)`` float16 and the
        token size in um. One forward per tile (UNI: 112 um tiles, 8 um tokens)."""
        progress = ensure_progress(progress)
        tile_um = self.input_px * self.native_um_per_px
        g = self.input_px // self.patch_px
        rows, cols = shape_tiles
        tl = np.asarray(top_left_rc_um, dtype=np.float64)
        ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        corners = tl[None, :] + np.stack([ii.ravel(), jj.ravel()], axis=1) * tile_um
        grid = np.empty((rows * g, cols * g, self.embed_dim), dtype=np.float16)

        def run(batch: torch.Tensor, sl: slice) -> None:
            tok = self._tokens(batch)
            for k, t in zip(range(sl.start, sl.stop), tok, strict=True):
                r, c = divmod(k, cols)
                grid[r * g:(r + 1) * g, c * g:(c + 1) * g] = t

        self._pipelined(image, corners, tile_um, run, progress)
        return grid, tile_um / g

    def embed_dense(self, image: TissueImage, points_rc_um: np.ndarray,
                    windows_um: Sequence[float], local_window_um: float | None = None,
                    *, progress: Progress | None = None, chunk_dims: int = 128) -> np.ndarray:
        """Dense embeddings from the patch-token grid: each window is the mean of the
        ``round(window / token)`` x same tokens around the point (box filter, sampled
        bilinearly); windows under 1.5 tokens take the token at the point. ``(M, S, D)``
        float32, S as in :func:`~napari_trihrge.features.base.dense_window_sizes`. Not
        interchangeable with :meth:`embed_windows` (CLS of a resized window): use one kind for
        both training and prediction."""
        from scipy import ndimage as ndi

        progress = ensure_progress(progress)
        pts = as_centres_rc_um(points_rc_um)
        sizes = dense_window_sizes(windows_um, local_window_um)
        m = len(pts)
        out = np.empty((m, len(sizes), self.embed_dim), dtype=np.float32)
        if m == 0:
            return out
        tile_um = self.input_px * self.native_um_per_px
        half = max(sizes) / 2.0 + tile_um / self.input_px * self.patch_px
        origin = np.floor((pts.min(0) - half) / tile_um) * tile_um
        shape = tuple(int(v) for v in np.ceil((pts.max(0) + half - origin) / tile_um))
        # the stage counts locations x windows: tiles only check for cancellation
        grid, tok_um = self.token_grid(image, origin, shape, progress=_CancelOnly(progress))
        # token (i, j) is centred at origin + (i + 0.5, j + 0.5) * tok_um
        pos = (pts - origin[None, :]) / tok_um - 0.5
        for s, w in enumerate(sizes):
            k = int(round(w / tok_um))
            p = pos + (0.5 if k >= 2 and k % 2 == 0 else 0.0)  # even box: centre is i - 0.5
            for d0 in range(0, self.embed_dim, chunk_dims):
                progress.check_cancelled()
                block = grid[:, :, d0:d0 + chunk_dims].astype(np.float32)
                if k >= 2:
                    block = ndi.uniform_filter(block, size=(k, k, 1), mode="nearest")
                out[:, s, d0:d0 + chunk_dims] = _bilinear_rows(block, p)
            progress.advance(m)
        return out


class _CancelOnly(Progress):
    """Forwards cancellation but not step counts."""

    def __init__(self, parent: Progress):
        super().__init__()
        self._parent = parent

    def advance(self, n: int = 1) -> None:
        self._parent.check_cancelled()

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()


def _bilinear_rows(grid: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``grid`` (H, W, D) interpolated at fractional (row, col) index positions (M, 2)."""
    gh, gw = grid.shape[:2]
    p = np.clip(pos, 0, [gh - 1, gw - 1])
    i0 = np.minimum(np.floor(p[:, 0]).astype(np.intp), max(gh - 2, 0))
    j0 = np.minimum(np.floor(p[:, 1]).astype(np.intp), max(gw - 2, 0))
    i1, j1 = np.minimum(i0 + 1, gh - 1), np.minimum(j0 + 1, gw - 1)
    fr = (p[:, 0] - i0)[:, None]
    fc = (p[:, 1] - j0)[:, None]
    return (grid[i0, j0] * (1 - fr) * (1 - fc) + grid[i1, j0] * fr * (1 - fc)
            + grid[i0, j1] * (1 - fr) * fc + grid[i1, j1] * fr * fc)
