"""``tl.train``: one model from one or several sections (``trihrge train``).

:func:`train` fits one model on one or several sections: genes are highly variable over the
pooled sections among the genes they share (as :func:`~napari_trihrge.tl.transfer`), image
features come from the encoder's dense path with a local window (so the same model gives spot
predictions and dense maps), each section's features are standardised over its own spots, and the
sub-spot aggregation loss of ``enhance`` keeps a dense map consistent with the spots. A fraction of
each section's spots (``trust_fraction``) is held out of training and scored with the fair score
against inverse-distance kNN: these are the model's per-section and per-gene trust figures
(with several sections, scored within each section and then averaged, never pooled).
The model is written and read by :mod:`napari_trihrge.io.model_folder` and described by
:func:`._model_io.describe`; :func:`napari_trihrge.tl.predict` (:mod:`._predict`) applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import geometry
from .._checks import (
    MIN_SECTION_SPOTS,
    check_adatas,
    check_declared_pixel_size,
    check_training_sections,
)
from ..errors import TrihrgeInputError
from ..io.model_folder import TrainedModel
from ..neighbours import idw_interpolate
from ..progress import Progress, ensure_progress
from ._config import RunConfig, check_levers_supported, check_neighbour_images
from ._enhance import _sub_spot_offsets
from ._model_io import describe
from ._shared import (
    _create_encoder,
    _features,
    _fit,
    _holdout_split,
    _knn_baselines,
    _lattice_kind,
    _log_expression,
    _nonzero_spots,
    _predict,
    _score_sections,
    _section_name,
    _spot_features,
    _standardise,
    _Timer,
    _trust_columns,
    sample_geometry,
)
from ._transfer import transfer_genes


def _section_names(adatas: Sequence[AnnData]) -> list[str]:
    """Return one distinct name per training section.

    Its sample name, or where sections share one (two synthetic samples, two files of one slide),
    the file or folder each was read from, else the name with the section's number.
    """
    names = [_section_name(a, i) for i, a in enumerate(adatas)]
    out = []
    for i, (a, name) in enumerate(zip(adatas, names, strict=True)):
        if names.count(name) > 1:
            source = a.uns.get("trihrge", {}).get("source")
            name = Path(str(source)).name if source else f"{name} #{i + 1}"
        out.append(name)
    return [n if out.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(out)]


@dataclass
class TrainResult:
    """The result of :func:`train`.

    ``model`` (a :class:`TrainedModel`, ``model.save(path)``), per-section held-out scores in
    ``metrics['sections']``, the per-gene trust table, the training record.
    """

    model: TrainedModel
    metrics: dict[str, Any]
    per_gene: pd.DataFrame
    history: list[list[dict]]
    timings_s: dict[str, float]
    config: dict[str, Any]
    fits: list = field(default_factory=list, repr=False)


def train(adatas: AnnData | Sequence[AnnData], *, image_only: bool = False,
          config: RunConfig | None = None, trust_fraction: float = 0.1,
          progress: Progress | None = None) -> TrainResult:
    """Train one model on one or several sections (see the module docstring).

    ``image_only``: no neighbour input, so the model needs no spots at prediction time (bare
    H&E slides). ``trust_fraction`` of each section's spots (seeded by ``config.seed``) is kept
    out of training and scored (fair score, against kNN k=6/12); 0 trains on every spot and
    leaves the trust figures unknown.
    """
    cfg = config or RunConfig()
    check_levers_supported(cfg, "train")
    if image_only:
        cfg = dataclasses.replace(cfg, neighbour_input=False)
    if not cfg.image_input:
        raise TrihrgeInputError("a trained model for other sections needs the image "
                                "(image_input=False leaves only the neighbour input)",
                                "leave the image input on (drop --no-image)")
    if not 0.0 <= trust_fraction < 0.9:
        raise TrihrgeInputError(f"trust_fraction must be in [0, 0.9), got {trust_fraction}",
                                "use for example 0.1")
    adatas = check_adatas(adatas, what="adatas", min_spots=MIN_SECTION_SPOTS)
    for i, a in enumerate(adatas):
        sample_geometry(a)  # pixel size present: fail before any heavy work
        check_declared_pixel_size(a)
        check_neighbour_images(cfg.neighbour_images, a.n_obs, f"adatas[{i}]")
    progress = ensure_progress(progress)
    timer = _Timer()
    sections = [_nonzero_spots(a) for a in adatas]
    names = _section_names(sections)
    check_training_sections(sections, names)
    with timer("genes"):
        progress.stage("genes", 1)
        genes = transfer_genes(sections, sections, cfg.n_top_genes, extra_genes=cfg.extra_genes,
                               marker_panel=cfg.marker_panel)
        ys = [_log_expression(a, genes) for a in sections]
        progress.advance()
    windows = (float(cfg.local_window_um), *(float(w) for w in cfg.windows_um))
    with timer("features"):
        encoder = _create_encoder(cfg)
    from ..io import get_image

    parts: dict[str, list] = {k: [] for k in ("x", "y", "nb", "sx", "snb", "smask")}
    held: list[dict[str, Any]] = []
    lattice = None
    for i, (a, y) in enumerate(zip(sections, ys, strict=True)):
        rc_um, _, diameter_um = sample_geometry(a)
        hidden, visible = _holdout_split(len(y), trust_fraction, cfg.seed + i, optional=True)
        if lattice is None:
            lattice = geometry.detect_lattice(rc_um, kind=_lattice_kind(a))
            lattice_diameter_um = diameter_um
        with timer("features"):
            image = get_image(a)
            spot_feats, images = _spot_features(image, encoder, rc_um, windows, cfg, progress,
                                                dense=True)
            z, mu, sd = _standardise(spot_feats)
            offs = _sub_spot_offsets(diameter_um)
            # every spot's sub-locations (one cache entry per section, whatever the split)
            sub_all = (rc_um[:, None, :] + offs[None]).reshape(-1, 2)
            sub = _features(image, encoder, sub_all, windows, cfg, progress, dense=True,
                            neighbour_images=images)
            sub = ((sub.reshape(len(rc_um), len(offs), *sub.shape[1:])[visible] - mu) / sd
                   ).astype(np.float32)
            sub_rc = (rc_um[visible, None, :] + offs[None]).reshape(-1, 2)
        parts["x"].append(z[visible])
        parts["y"].append(y[visible])
        parts["sx"].append(sub)
        parts["smask"].append(np.ones((len(visible), len(offs)), dtype=bool))
        if cfg.neighbour_input:
            parts["nb"].append(idw_interpolate(rc_um[visible], y[visible], rc_um[visible],
                                               cfg.n_neighbours, exclude_self=True))
            snb = idw_interpolate(rc_um[visible], y[visible], sub_rc, cfg.n_neighbours,
                                  exclude_index=np.repeat(np.arange(len(visible)), len(offs)))
            parts["snb"].append(snb.reshape(len(visible), len(offs), -1))
        held.append({"name": names[i], "rc_um": rc_um, "y": y, "hidden": hidden,
                     "visible": visible, "x": z})
    n_sub = max(s.shape[1] for s in parts["sx"])
    if any(s.shape[1] != n_sub for s in parts["sx"]):  # spot diameters differ between sections
        for key in ("sx", "smask", "snb"):
            parts[key] = [np.concatenate([s, np.zeros((s.shape[0], n_sub - s.shape[1],
                                                       *s.shape[2:]), s.dtype)], axis=1)
                          for s in parts[key]]
    x_train, y_train = np.concatenate(parts["x"]), np.concatenate(parts["y"])
    sub = {"sub_features": np.concatenate(parts["sx"]), "sub_mask": np.concatenate(parts["smask"])}
    nb_train = None
    if cfg.neighbour_input:
        nb_train = np.concatenate(parts["nb"])
        sub["sub_neighbour"] = np.concatenate(parts["snb"])
    del parts
    with timer("training"):
        fits = _fit(cfg, x_train, y_train, nb_train, progress, **sub)
    del sub
    train_mean = y_train.mean(axis=0)

    # held-out trust: scored within each section, then averaged over the sections
    sections_out: list[dict[str, Any]] = []
    scored: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
    with timer("prediction"):
        for h in held:
            entry: dict[str, Any] = {"name": h["name"], "n_spots": int(len(h["y"])),
                                     "n_train_spots": int(len(h["visible"])),
                                     "n_heldout_spots": int(len(h["hidden"])), "scores": None}
            if len(h["hidden"]):
                rc, y, vis, hid = h["rc_um"], h["y"], h["visible"], h["hidden"]
                nb = (idw_interpolate(rc[vis], y[vis], rc[hid], cfg.n_neighbours)
                      if cfg.neighbour_input else None)
                pred, _ = _predict(fits, h["x"][hid], nb, cfg)
                base = _knn_baselines(rc[vis], y[vis], rc[hid])
                base["train_mean"] = np.broadcast_to(train_mean, pred.shape)
                scored.append((pred, y[hid], base))
                entry["scores"] = len(scored) - 1
            sections_out.append(entry)
    gene_table = pd.DataFrame({"train_mean": train_mean}, index=pd.Index(genes, name="gene"))
    metrics: dict[str, Any] = {"sections": sections_out, "n_train_spots": int(len(y_train)),
                               "trust_fraction": float(trust_fraction)}
    per_gene = pd.DataFrame(index=pd.Index(genes, name="gene"))
    if scored:
        summary, per_gene, by_section = _score_sections(scored, genes)
        for entry in sections_out:
            if entry["scores"] is not None:
                entry["scores"] = by_section[entry["scores"]]
        metrics["heldout"] = summary
        gene_table = gene_table.join(_trust_columns(per_gene, genes))
    description = describe(
        cfg, task="train", encoder=encoder, genes=genes, feature_mode="dense",
        local_window_um=cfg.local_window_um, standardisation="per-section",
        lattice=lattice, spot_diameter_um=lattice_diameter_um,
        training_sections=sections_out,
        trust={"source": "spots held out of training in every section",
               "heldout_fraction": float(trust_fraction),
               "n_spots": int(sum(e["n_heldout_spots"] for e in sections_out)),
               "baseline": "inverse-distance kNN from the section's training spots, better of "
                           "k=6/12",
               "pooling": "per-gene scores within each section, averaged over the sections"}
        if scored else None)
    model = TrainedModel(nets=[f.model for f in fits], description=description,
                         gene_table=gene_table)
    return TrainResult(model=model, metrics=metrics, per_gene=per_gene,
                       history=[f.history for f in fits], timings_s=timer.timings_s,
                       config=cfg.public_dict(), fits=fits)
