"""A model's description and its model folder from a run.

What :func:`describe` records with a model (:mod:`napari_trihrge.io.model_folder` writes and
reads the folder), the folder of a recovery or enhance run (:func:`save_run_model`), and a saved
model made ready to predict (:func:`ready_model`, :func:`prediction_config`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import geometry
from ..io.model_folder import (
    DESCRIPTION_KIND,
    DESCRIPTION_VERSION,
    NORMALISATION,
    TrainedModel,
    check_description,
    load_model_folder,
    package_version,
)
from ..io.outputs import _jsonable
from ..metrics import TRUST_COLUMNS
from ._config import RunConfig
from ._shared import _lattice_kind, _section_name, _trust_columns, sample_geometry


def describe(cfg: RunConfig, *, task: str, encoder=None, genes: Sequence[str],
             feature_mode: str, local_window_um: float | None, standardisation: str,
             lattice: geometry.Lattice | None = None, spot_diameter_um: float | None = None,
             training_sections: list[dict[str, Any]] | None = None,
             trust: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the description stored with a model folder.

    See :mod:`napari_trihrge.io.model_folder`. ``encoder`` (the instance used) adds its
    ``config_key`` and width.
    """
    windows = [float(w) for w in cfg.windows_um]
    bag = ([float(local_window_um)] if feature_mode == "dense" and local_window_um is not None
           else []) + windows
    return {
        "kind": DESCRIPTION_KIND, "description_version": DESCRIPTION_VERSION,
        "package_version": package_version(),
        "task": task,
        "encoder": {"name": str(cfg.encoder), "architecture": cfg.encoder_architecture,
                    "config_key": encoder.config_key() if encoder is not None else None,
                    "embed_dim": int(encoder.embed_dim) if encoder is not None else None},
        "features": {"mode": feature_mode, "windows_um": windows,
                     "local_window_um": float(local_window_um) if feature_mode == "dense"
                     and local_window_um is not None else None,
                     "bag_windows_um": bag, "standardisation": standardisation},
        "genes": list(genes),
        "normalisation": dict(NORMALISATION),
        "image_input": bool(cfg.image_input),
        "neighbour_input": bool(cfg.neighbour_input),
        "n_neighbours": int(cfg.n_neighbours),
        # the neighbouring spots' images as one more window (0: none); predict adds it too
        "neighbour_images": int(cfg.neighbour_images),
        "neighbour_images_windows": str(cfg.neighbour_images_windows),
        "lattice": None if lattice is None else {
            "kind": lattice.kind, "spacing_um": float(lattice.spacing_um),
            "basis_rc_um": np.asarray(lattice.basis_rc_um).tolist(),
            "spot_diameter_um": spot_diameter_um},
        "training_sections": _jsonable(training_sections or []),
        "trust": trust,
        "run_config": cfg.public_dict(),
    }


def save_run_model(path: str | Path, result, cfg: RunConfig, task: str, *,
                   overwrite: bool = True) -> Path:
    """Write the model of a recovery or enhance run as a described model folder.

    Raw features ('none' standardisation; whole windows, or the dense path with the local window
    when the enhance run made maps), the run's held-out scores where it has them.
    """
    spots = result.predictions if task == "recovery" else result.spots
    rc_um, _, diameter_um = sample_geometry(spots)
    lattice = geometry.detect_lattice(rc_um, kind=_lattice_kind(spots))
    dense = task == "enhance" and getattr(result, "maps", None) is not None
    name = _section_name(spots, 0)
    section: dict[str, Any] = {"name": name, "scores": None}
    trust = None
    table = pd.DataFrame(index=pd.Index(list(spots.var_names), name="gene"))
    if task == "recovery":
        m = result.metrics
        section.update(n_train_spots=m.get("n_visible"), n_heldout_spots=m.get("n_hidden"),
                       scores=m)
        trust = {"source": "the recovery run's hidden spots",
                 "heldout_fraction": m.get("heldout_fraction"), "n_spots": m.get("n_hidden"),
                 "baseline": "inverse-distance kNN from the visible spots, better of k=6/12"}
        table = table.join(_trust_columns(result.per_gene, list(spots.var_names)))
    else:
        var = result.virtual.var
        for col in TRUST_COLUMNS:
            if col in var:
                table[col] = var[col].reindex(table.index).to_numpy()
        known = result.virtual.uns.get("trihrge", {}).get("trust")
        trust = dict(known) if isinstance(known, dict) else None
        section["n_spots"] = int(spots.n_obs)
    desc = describe(cfg, task=task, genes=list(spots.var_names),
                    feature_mode="dense" if dense else "windows",
                    local_window_um=cfg.local_window_um if dense else None,
                    standardisation="none", lattice=lattice, spot_diameter_um=diameter_um,
                    training_sections=[section], trust=trust)
    nets = [f.model for f in result.fits]
    desc["encoder"]["embed_dim"] = int(nets[0].config.in_dim) if cfg.image_input else None
    from ..io.model_folder import save_model_folder

    return save_model_folder(path, nets, desc, table, overwrite=overwrite)


def ready_model(model: TrainedModel | str | Path, *, encoder: str | None = None,
                windows_um: Sequence[float] | None = None) -> TrainedModel:
    """Return ``model`` loaded from its folder (or taken as it is), checked.

    It is checked against the ``encoder`` and ``windows_um`` the caller expects (None: not
    checked). Anything but a model or a path is a ``TypeError`` (an AnnData there is most likely
    the target given first).
    """
    if not isinstance(model, (TrainedModel, str, os.PathLike)):
        swapped = (": did you swap model and target? predict(model, target)"
                   if type(model).__name__ == "AnnData" else "")
        raise TypeError("model must be a trained model (tl.train(...).model) or the path of a "
                        f"model folder; got {type(model).__name__}{swapped}")
    windows = tuple(windows_um) if windows_um else None
    if not isinstance(model, TrainedModel):
        return load_model_folder(model, encoder=encoder, windows_um=windows)
    check_description(model.description, encoder=encoder, windows_um=windows)
    return model


def prediction_config(model: TrainedModel, *, device: str, cache_dir: str | None,
                      hf_token: str | None) -> RunConfig:
    """Return the :class:`RunConfig` that reproduces ``model``'s features and inputs.

    Older descriptions without a field get RunConfig's default.
    """
    d = model.description
    feats = d["features"]
    return RunConfig(encoder=d["encoder"]["name"],
                     encoder_architecture=d["encoder"].get("architecture"), hf_token=hf_token,
                     windows_um=tuple(feats["windows_um"]),
                     local_window_um=float(feats.get("local_window_um") or RunConfig.local_window_um),
                     neighbour_input=bool(d["neighbour_input"]),
                     image_input=bool(d.get("image_input", True)),
                     n_neighbours=int(d.get("n_neighbours", RunConfig.n_neighbours)),
                     neighbour_images=int(d.get("neighbour_images", 0)),
                     neighbour_images_windows=str(d.get("neighbour_images_windows", "spot")),
                     ensemble=len(model.nets),
                     device=device, cache_dir=cache_dir)
