"""Hugging Face hub access for the encoders: one file of a repo, or its weights file.

Gated weights (UNI, UNI2-h) are fetched with ``huggingface_hub`` using ``hf_token`` (this call
only), else ``HF_TOKEN``, else the ``huggingface-cli login`` token; the token is never logged or
stored. Failures raise :class:`~napari_trihrge.errors.EncoderAccessError` saying what to do.
"""

from __future__ import annotations

import os

from ..errors import EncoderAccessError

#: weights file names of the hub layout, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def _access_hint(repo_id: str) -> str:
    return (f"request access at https://huggingface.co/{repo_id}, then set HF_TOKEN or run "
            "`huggingface-cli login` (or `hf auth login`), or pass a local checkpoint with "
            "--encoder /path/to/pytorch_model.bin")



def _hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import constants

        return env or bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - huggingface_hub missing or changed: the env decides
        return env


class _MissingRemoteFile(Exception):
    """The repo exists but has no such file."""


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


def hub_weights(repo_id: str, hf_token: str | None, first: str | None = None,
                arch_label: str | None = None) -> str:
    """The first weights file of :data:`WEIGHT_FILES` (``first`` tried before them) the repo has."""
    names = [first] if first else []
    names += [n for n in WEIGHT_FILES if n not in names]
    for name in names:
        try:
            return hub_download(repo_id, name, hf_token=hf_token, arch_label=arch_label)
        except _MissingRemoteFile:
            continue
    raise EncoderAccessError(f"the Hugging Face repo {repo_id} has no weights file "
                             f"({', '.join(names)}). Pass a local checkpoint instead")

