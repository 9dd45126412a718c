"""The self-describing model folder: what a trained model needs to be used again.

```
MODEL_DIR/
  model.pt, model.json    the network (model.save_model's format); model.json's ``extra`` is the
                          description below
  member_<k>/             further ensemble members, same format (k = 1, 2, ...)
  genes.csv               per gene: mean training expression and the held-out trust columns
                          (pcc, pcc_baseline_knn, pcc_gain, beats_interpolation)
  integrity.json          written last: the folder format version, the SHA-256 of every file
                          above, of the gene list and of each part of the description, and one
                          hash of them all together
```

The description (``model.json`` -> ``extra``) holds the encoder (name, architecture, the
encoder's ``config_key`` and embedding width), the window sizes in micrometres and how features
were taken (``feature_mode`` 'dense' or 'windows'), the gene list, the normalisation, the feature
standardisation ('per-section': every section's features are z-scored over its own spots, or over
a spot-spaced lattice inside the tissue for a bare image, so stain differences between slides do
not shift predictions; 'none': raw features), whether the neighbour input is used, the spot
lattice of the training sections, the training sections with their fair held-out scores where
known, and the package version. :func:`load_model_folder` refuses a folder whose encoder, windows
or version do not fit, naming the mismatch and the fix. The folder is written whole or not at all
(:func:`napari_trihrge._atomic.atomic_path`).

Integrity: :func:`load_model_folder` checks every file against ``integrity.json`` and refuses a
folder whose files, gene list or description differ from what was saved (an edited
``model.json``, reordered rows of ``genes.csv``, a missing member), naming what differs. Files
added later (``summary.json`` of ``trihrge train``) are not part of the record. A folder written
before the record existed (folder format 1) is read with a warning; saving it again
(``load_model_folder(old).save(new)``) adds the record.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._atomic import atomic_path
from ..errors import TrihrgeInputError

#: ``extra['kind']`` of a described model folder
DESCRIPTION_KIND = "napari-trihrge-trained-model"
#: version of the description schema this package reads and writes
DESCRIPTION_VERSION = 1
GENE_TABLE = "genes.csv"
#: the integrity record, written last into a model folder
INTEGRITY_RECORD = "integrity.json"
#: version of the folder layout: 2 = with the integrity record (1: without)
FOLDER_FORMAT_VERSION = 2
#: what a description must hold for this package to use it (key -> keys it must hold)
REQUIRED_DESCRIPTION = {"encoder": ("name",), "features": ("mode", "windows_um",
                                                            "bag_windows_um", "standardisation"),
                        "genes": (), "neighbour_input": ()}
NORMALISATION = {"method": "normalize_total + log1p", "target_sum": 1e4,
                 "over": "all genes of the section"}


def package_version() -> str:
    from .. import __version__

    return str(__version__)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in str(text).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def encoder_identity(config_key: str | None) -> str | None:
    """Return the part of :meth:`Encoder.config_key` that decides the embeddings' meaning.

    A ViT's inference precision (last field) may differ between a GPU and a CPU run.
    """
    if config_key is None:
        return None
    key = str(config_key)
    return key.rsplit("|", 1)[0] if key.startswith("timm|") else key


@dataclass
class TrainedModel:
    """A trained model with its description.

    ``nets`` (one per ensemble member, eval mode), ``description`` (the dict stored in
    ``model.json``) and ``gene_table`` (index = genes).
    """

    nets: list
    description: dict[str, Any]
    gene_table: pd.DataFrame
    path: Path | None = field(default=None, repr=False)

    @property
    def genes(self) -> list[str]:
        """The genes the model predicts, in its output order."""
        return list(self.description["genes"])

    @property
    def image_only(self) -> bool:
        """True when the model predicts from the image alone (no neighbour input)."""
        return not self.description.get("neighbour_input", False)

    @property
    def bag_windows_um(self) -> tuple[float, ...]:
        """Window sizes (um) in the order of the network's bag.

        The local window comes first in the dense mode.
        """
        return tuple(float(w) for w in self.description["features"]["bag_windows_um"])

    @property
    def dense(self) -> bool:
        """True when the features come from the encoder's dense path."""
        return self.description["features"]["mode"] == "dense"

    @property
    def per_section(self) -> bool:
        """True when the features are standardised per section."""
        return self.description["features"]["standardisation"] == "per-section"

    def for_section(self, feature_mean: np.ndarray | None, feature_std: np.ndarray | None
                    ) -> list:
        """Return copies of the nets that take one section's raw features.

        The section's mean and std (S, D) are folded into each net's input standardisation, so raw
        features z-scored per section then standardised by the net become one affine step inside the
        net.
        """
        if feature_mean is None or not self.per_section:
            return list(self.nets)
        import torch

        mu = torch.as_tensor(np.asarray(feature_mean, dtype=np.float32))
        sd = torch.as_tensor(np.asarray(feature_std, dtype=np.float32))
        out = []
        for net in self.nets:
            if tuple(net.feature_mean.shape) != tuple(mu.shape):
                raise TrihrgeInputError(
                    f"the section's features have shape {tuple(mu.shape)}, the model expects "
                    f"{tuple(net.feature_mean.shape)}",
                    "use the encoder and windows the model was trained with")
            adapted = copy.deepcopy(net)
            with torch.no_grad():
                adapted.feature_mean.copy_(mu + sd * net.feature_mean.cpu())
                adapted.feature_std.copy_(sd * net.feature_std.cpu())
            adapted.eval()
            out.append(adapted)
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write this model as a model folder (see :func:`save_model_folder`)."""
        return save_model_folder(path, self.nets, self.description, self.gene_table,
                                 overwrite=overwrite)


def save_model_folder(path: str | os.PathLike, nets: list, description: dict[str, Any],
                      gene_table: pd.DataFrame | None = None, *, overwrite: bool = False
                      ) -> Path:
    """Write a model folder (see the module docstring) atomically.

    An existing folder is refused unless ``overwrite``.
    """
    from ..model.network import save_model

    path = Path(path)
    if not nets:
        raise TrihrgeInputError("no trained network to save", "train a model first")
    if path.exists() and not path.is_dir():
        raise TrihrgeInputError(f"{path} is a file, not a folder", "choose a folder for the model")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise TrihrgeInputError(f"the model folder {path} already has files in it",
                                "choose another folder or pass --overwrite to replace it")
    desc = {**description, "kind": DESCRIPTION_KIND, "description_version": DESCRIPTION_VERSION,
            "package_version": description.get("package_version") or package_version(),
            "ensemble": len(nets), "members": [f"member_{k}" for k in range(1, len(nets))]}
    with atomic_path(path, overwrite=True) as tmp:
        save_model(tmp, nets[0], None, desc)
        for k, net in enumerate(nets[1:], start=1):
            save_model(tmp / f"member_{k}", net, None, {**desc, "ensemble_member": k})
        if gene_table is not None:
            gene_table.to_csv(tmp / GENE_TABLE, index_label="gene")
        write_integrity_record(tmp)
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True,
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _integrity(path: Path, desc: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Return the integrity record of ``files`` (relative to ``path``) and ``desc``.

    It holds per-file, gene-list and per-key description hashes, and one hash of them all
    together.
    """
    record = {"files": {f: _sha256_file(path / f) for f in files},
              "genes": _sha256_json(list(desc.get("genes") or [])),
              "description": {str(k): _sha256_json(v) for k, v in desc.items()}}
    return {"folder_format_version": FOLDER_FORMAT_VERSION, "algorithm": "sha256", **record,
            "all": _sha256_json(record)}


def write_integrity_record(path: str | os.PathLike) -> Path:
    """Write ``integrity.json`` for the model folder ``path``.

    It covers every file now in the folder and the description its ``model.json`` holds (call
    it last, on the temporary folder before it is moved into place).
    """
    path = Path(path)
    desc = json.loads((path / "model.json").read_text(encoding="utf-8")).get("extra") or {}
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and p.name != INTEGRITY_RECORD)
    out = path / INTEGRITY_RECORD
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(_integrity(path, desc, files), indent=1) + "\n")
    return out


def _damaged(path: Path, what: str) -> TrihrgeInputError:
    return TrihrgeInputError(
        f"the model folder {path} was changed after it was saved: {what}",
        "restore the folder from a copy, or retrain the model (trihrge train); a model "
        "folder must not be edited by hand")


def check_integrity(path: str | os.PathLike, desc: dict[str, Any]) -> bool:
    """Check the model folder ``path`` against its integrity record.

    ``desc`` is what its ``model.json`` holds. Returns False (with a warning) for a folder
    written before the record existed; raises :class:`TrihrgeInputError` naming what differs.
    """
    path = Path(path)
    record_path = path / INTEGRITY_RECORD
    if not record_path.is_file():
        warnings.warn(
            f"the model folder {path} has no integrity record (written by napari-trihrge "
            "before folder format 2): its files cannot be checked. Re-save it to add one: "
            "napari_trihrge.io.model_folder.load_model_folder(old).save(new)", UserWarning,
            stacklevel=3)
        return False
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files, keys = dict(record["files"]), dict(record["description"])
        version = int(record.get("folder_format_version", 0))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise _damaged(path, f"{INTEGRITY_RECORD} is not readable ({type(err).__name__})"
                       ) from err
    if version > FOLDER_FORMAT_VERSION:
        raise TrihrgeInputError(
            f"the model folder {path} has folder format {version}; this napari-trihrge reads "
            f"up to {FOLDER_FORMAT_VERSION}", "update napari-trihrge (pip install -U "
            "napari-trihrge)")
    missing = sorted(f for f in files if not (path / f).is_file())
    if missing:
        raise _damaged(path, f"{', '.join(missing)} missing")
    changed = sorted(f for f, digest in files.items() if _sha256_file(path / f) != digest)
    if changed:
        what = [f"{f} differs from what was saved" for f in changed]
        if "model.json" in changed:
            keys_now = {str(k): _sha256_json(v) for k, v in desc.items()}
            parts = sorted(k for k in set(keys) | set(keys_now) if keys.get(k) != keys_now.get(k))
            if parts:
                what.append(f"model.json's {', '.join(repr(p) for p in parts)} changed")
        if GENE_TABLE in changed:
            what.append(f"{GENE_TABLE}: its rows are edited or reordered")
        raise _damaged(path, "; ".join(what))
    if record.get("genes") != _sha256_json(list(desc.get("genes") or [])):
        raise _damaged(path, "the gene list differs from the record")
    body = {k: record[k] for k in ("files", "genes", "description")}
    if record.get("all") != _sha256_json(body):
        raise _damaged(path, f"{INTEGRITY_RECORD} itself was edited")
    return True


def check_required(desc: dict[str, Any], where: str) -> None:
    """Raise when the description lacks a part this package needs (a damaged model.json)."""
    for key, inner in REQUIRED_DESCRIPTION.items():
        if key not in desc or desc[key] is None:
            raise TrihrgeInputError(f"{where} lacks {key!r} in model.json",
                                    "the folder is damaged; restore it or retrain the model")
        if inner and not isinstance(desc[key], dict):
            raise TrihrgeInputError(f"{where}: model.json's {key!r} is not a mapping",
                                    "the folder is damaged; restore it or retrain the model")
        lacking = [k for k in inner if k not in desc[key]]
        if lacking:
            raise TrihrgeInputError(f"{where} lacks {key}.{lacking[0]} in model.json",
                                    "the folder is damaged; restore it or retrain the model")
    genes = desc["genes"]
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        raise TrihrgeInputError(f"{where}: model.json's gene list is empty or not a list of "
                                "names", "the folder is damaged; restore it or retrain the model")
    if len(set(genes)) != len(genes):
        raise TrihrgeInputError(f"{where}: model.json lists a gene twice",
                                "the folder is damaged; restore it or retrain the model")


def _mismatch(what: str, model_value: Any, asked: Any, fix: str) -> TrihrgeInputError:
    return TrihrgeInputError(f"{what} mismatch: the model was trained with {model_value!r}, "
                             f"this run asks for {asked!r}", fix)


def check_version(desc: dict[str, Any], where: str = "the model") -> None:
    """Raise when the description is not one this package reads.

    That is none at all (an older folder), or one written by a newer napari-trihrge.
    """
    if desc.get("kind") != DESCRIPTION_KIND:
        raise TrihrgeInputError(
            f"{where} has no model description (written by an older napari-trihrge, before "
            "model folders described their encoder, windows and genes)",
            "retrain it with `trihrge train` (or rerun the enhance/recovery run) with this "
            "version")
    version = int(desc.get("description_version", 0))
    if version > DESCRIPTION_VERSION:
        raise TrihrgeInputError(
            f"{where} was written by a newer napari-trihrge ({desc.get('package_version')}, "
            f"model description version {version}; this is {package_version()}, version "
            f"{DESCRIPTION_VERSION})", "update napari-trihrge (pip install -U napari-trihrge)")
    if _version_tuple(desc.get("package_version", "0"))[:2] > _version_tuple(package_version())[:2]:
        raise TrihrgeInputError(
            f"{where} was written by napari-trihrge {desc.get('package_version')}, newer than "
            f"this {package_version()}", "update napari-trihrge (pip install -U napari-trihrge)")


def check_description(desc: dict[str, Any], where: str = "the model", *,
                      encoder: str | None = None, windows_um: tuple[float, ...] | None = None,
                      local_window_um: float | None = None) -> None:
    """Raise when the description cannot be used by this package or does not fit.

    It must fit the requested encoder / windows (None = take the model's).
    """
    check_version(desc, where)
    check_required(desc, where)
    enc = desc["encoder"]["name"]
    if encoder is not None and str(encoder) != str(enc):
        raise _mismatch("encoder", enc, encoder,
                        f"predict with the model's encoder (--encoder {enc}, or leave --encoder "
                        "out), or train a model with the encoder you want")
    feats = desc["features"]
    if windows_um is not None and tuple(float(w) for w in windows_um) != tuple(
            float(w) for w in feats["windows_um"]):
        raise _mismatch("window sizes (um)", feats["windows_um"], list(windows_um),
                        "leave --windows-um out (the model's windows are used) or retrain with "
                        "the windows you want")
    if local_window_um is not None and feats.get("local_window_um") is not None and float(
            local_window_um) != float(feats["local_window_um"]):
        raise _mismatch("local window (um)", feats["local_window_um"], local_window_um,
                        "use the model's local window or retrain")


def check_encoder(desc: dict[str, Any], encoder) -> None:
    """Raise when ``encoder`` would give embeddings other than the model's.

    ``encoder`` is created from the description's name; other weights or another feature definition
    give other embeddings than the ones the model was trained on.
    """
    want = desc["encoder"]
    dim = want.get("embed_dim")
    if dim is not None and int(encoder.embed_dim) != int(dim):
        raise _mismatch("encoder embedding width", f"{want['name']} ({dim})",
                        f"{encoder.name} ({encoder.embed_dim})",
                        "use the same encoder weights as for training, or retrain the model")
    stored, now = encoder_identity(want.get("config_key")), encoder_identity(encoder.config_key())
    if stored is not None and stored != now:
        raise _mismatch(
            "encoder version", want.get("config_key"), encoder.config_key(),
            f"the encoder '{want['name']}' now computes different features than when the model "
            f"was trained (napari-trihrge {desc.get('package_version')}): install that version "
            "or the same encoder weights, or retrain the model with this version")


def load_model_folder(path: str | os.PathLike, *, encoder: str | None = None,
                      windows_um: tuple[float, ...] | None = None,
                      local_window_um: float | None = None,
                      map_location: str = "cpu") -> TrainedModel:
    """Read a model folder and check that it fits this package and the requested encoder / windows.

    All ensemble members are read, weights with ``weights_only=True``; encoder / windows None take
    the model's own.
    """
    from ..model.network import load_model

    path = Path(path)
    if not path.is_dir():
        raise TrihrgeInputError(f"model folder not found: {path}",
                                "pass the folder written by `trihrge train --out` (or the model/ "
                                "folder of a run)")
    net, _, desc = load_model(path, map_location=map_location)
    check_version(desc, f"the model in {path}")  # a newer version may write another record
    check_integrity(path, desc)
    check_description(desc, f"the model in {path}", encoder=encoder, windows_um=windows_um,
                      local_window_um=local_window_um)
    nets = [net]
    for member in desc.get("members", []):
        nets.append(load_model(path / member, map_location=map_location)[0])
    genes = list(desc["genes"])
    if net.config.n_genes != len(genes):
        raise TrihrgeInputError(f"{path}: the network predicts {net.config.n_genes} genes, the "
                                f"description lists {len(genes)}",
                                "the folder is damaged; retrain or restore it")
    table_path = path / GENE_TABLE
    if table_path.is_file():
        try:
            table = pd.read_csv(table_path, index_col=0)
        except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
            raise TrihrgeInputError(f"{table_path} is not a readable gene table "
                                    f"({type(err).__name__})",
                                    "the folder is damaged; restore it or retrain the model"
                                    ) from err
        table.index = table.index.astype(str)
        if set(table.index) != set(genes) or not table.index.is_unique:
            raise TrihrgeInputError(
                f"{table_path} does not list the model's {len(genes)} genes once each",
                "the folder is damaged; restore it or retrain the model")
        table = table.reindex(genes)
    else:
        table = pd.DataFrame(index=pd.Index(genes, name="gene"))
    return TrainedModel(nets=nets, description=desc, gene_table=table, path=path)


__all__ = ["TrainedModel", "save_model_folder", "load_model_folder", "check_description",
           "check_encoder", "check_integrity", "check_version", "write_integrity_record",
           "encoder_identity", "DESCRIPTION_VERSION", "FOLDER_FORMAT_VERSION", "NORMALISATION"]
