"""Encoder checkpoints: reading a state dict safely, building a timm model strictly from it,
recognising UNI / UNI2-h from its keys and shapes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrihrgeInputError
from ._architectures import ARCHITECTURES

if TYPE_CHECKING:  # pragma: no cover
    import torch


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


def mismatch_summary(model: torch.nn.Module, sd: dict[str, Any]) -> str | None:
    """What differs between ``model``'s state dict and ``sd`` (keys, shapes), or None."""
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


def build_model(timm_name: str, model_args: dict[str, Any], sd: dict[str, Any] | None,
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
    problem = mismatch_summary(skeleton, sd)
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


def weights_id_of_file(path: Path) -> str:
    """Identity of a weights file for the feature cache: path, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"



def infer_architecture(sd: dict[str, Any]) -> str | None:
    """'uni' / 'uni2-h' when the state dict matches that architecture exactly, else None."""
    import timm
    import torch

    for label, arch in ARCHITECTURES.items():
        with torch.device("meta"):
            m = timm.create_model(arch.timm_name, pretrained=False, **arch.model_args())
        if mismatch_summary(m, sd) is None:
            return label
    return None
