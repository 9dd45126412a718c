"""Where the encoder and the network run: the one device resolver of the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TrihrgeInputError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> CUDA when a GPU is visible, else the CPU; an explicit device is
    checked to exist, with an error that says what to use instead."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise TrihrgeInputError(f"unknown device {device!r}",
                                "use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrihrgeInputError("device 'cuda' was asked for but no CUDA GPU is available",
                                "use --device auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise TrihrgeInputError("device 'mps' was asked for but is not available",
                                "use --device auto or cpu")
    return dev
