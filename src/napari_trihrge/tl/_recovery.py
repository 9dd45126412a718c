"""Held-out spot recovery: hide spots, predict them, score against interpolation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import MIN_SECTION_SPOTS, check_adata, check_declared_pixel_size
from ..metrics import add_noise_ceiling
from ..neighbours import idw_interpolate
from ..progress import Progress, ensure_progress
from ._config import RunConfig, check_neighbour_images, validate_config
from ._reference import (
    check_all_references,
    check_reference_weight,
    feature_key,
    model_references,
    model_summary,
    models_on,
    reference_data,
    shared_genes,
)
from ._shared import (
    _annotation_labels,
    _count_targets,
    _encoder_and_image,
    _fit,
    _fit_stacked,
    _genes_stage,
    _heldout_scores,
    _holdout_split,
    _image_candidates,
    _joined,
    _predict,
    _prediction_adata,
    _spot_features,
    _stacked_predict,
    _subset_rows,
    _Timer,
    _training_targets,
    _trust_record,
    sample_geometry,
)
from ._store import store_result


@dataclass
class RecoveryResult:
    predictions: AnnData  # hidden spots; X predicted; layers 'measured', 'knn' (and 'std')
    metrics: dict[str, Any]
    per_gene: pd.DataFrame
    history: list[list[dict]]
    timings_s: dict[str, float]
    config: dict[str, Any]
    fits: list = field(default_factory=list, repr=False)


def recovery(adata: AnnData, *, holdout_fraction: float = 0.5, seed: int = 0, annotation=None,
             config: RunConfig | None = None, progress: Progress | None = None,
             key_added: str | None = None, reference=None,
             reference_weight: float | None = None) -> RecoveryResult:
    """Recover hidden spots: train on the rest and score them next to the image-free kNN baseline.

    ``holdout_fraction`` of the spots are hidden at random (``seed``); the model trains on the rest,
    predicts the hidden ones and scores them (hidden spots only), next to the noise ceiling of the
    hidden spots (:func:`napari_trihrge.metrics.noise_ceiling`: ``noise_ceiling_pcc_mean``,
    ``fraction_of_ceiling``; per gene ``noise_ceiling``).

    With ``config.stacking`` (the default) the prediction is the per-gene blend of the candidates
    (:mod:`napari_trihrge.model.stacking`), weighted on out-of-fold predictions of the training spots;
    each candidate is also scored, on the same genes and spots (``baseline_<name>_*``).

    The result is also recorded on ``adata`` under ``key_added`` (default ``trihrge_recovery``):
    the summary in ``uns``, the per-gene trust in ``var``, the hidden spots' predictions in
    ``obsm`` and ``obs`` (:func:`napari_trihrge.tl.store_result`).

    ``reference``: other sections of the study (AnnData, or a list of them) whose spots join the
    training of the network and the ridge head (:mod:`napari_trihrge.tl._reference`: the
    section's genes that every reference measures, features standardised per section); the kNN
    candidates and the blend weights use the section's own visible spots only.
    ``reference_weight``: the references count at most this many times the section's training
    spots (None: every reference spot). A trained model (a model folder's path, or
    ``tl.train(...).model``) among ``reference`` joins the blend as a candidate instead
    (``model``; scored as ``baseline_model_*``).
    """
    check_adata(adata, min_spots=MIN_SECTION_SPOTS)
    check_declared_pixel_size(adata)
    cfg = config or RunConfig()
    validate_config(cfg)
    _holdout_split(adata.n_obs, holdout_fraction, seed)  # refused before any work
    check_neighbour_images(cfg.neighbour_images, adata.n_obs)
    check_reference_weight(reference_weight)
    refs, loaded_models = check_all_references(adata, reference, cfg)
    progress = ensure_progress(progress)
    timer = _Timer()
    expr = _genes_stage(adata, cfg, timer, progress)
    if refs is not None:
        expr = expr[:, shared_genes(list(expr.var_names), refs)].copy()
    labels = _annotation_labels(expr, annotation)
    rc_um, _, _ = sample_geometry(expr)
    y = np.asarray(expr.X, dtype=np.float32)
    hidden, visible = _holdout_split(expr.n_obs, holdout_fraction, seed)

    with timer("features"):
        image, encoder = _encoder_and_image(adata, cfg) if cfg.image_input else (None, None)
        # every spot's image is known, hidden or not: all are neighbour-image sources
        feats, _ = _spot_features(image, encoder, rc_um, cfg.windows_um, cfg, progress)
        ref_data = None
        if refs is not None:
            ref_data = reference_data(refs, list(expr.var_names), cfg, encoder, cfg.windows_um,
                                      feats, progress, weight=reference_weight)
        models = model_references(loaded_models, adata[expr.obs_names], list(expr.var_names),
                                  cfg, progress)
    nb_train = nb_hidden = None
    if cfg.neighbour_input:
        nb_train = idw_interpolate(rc_um[visible], y[visible], rc_um[visible], cfg.n_neighbours,
                                   exclude_self=True)
        nb_hidden = idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], cfg.n_neighbours)
    stacked = None
    counts = _subset_rows(_count_targets(cfg, adata, expr), visible)  # {} unless a count loss
    with timer("training"):
        if cfg.stacking:
            stacked = _fit_stacked(cfg, feats[visible], y[visible], rc_um[visible], nb_train,
                                   progress, reference=ref_data,
                                   models=models_on(models, visible),
                                   feature_key=feature_key(cfg, encoder, cfg.windows_um, False),
                                   **counts)
            fits = stacked.fits
        else:
            x_fit, y_fit, nb_fit, fit_kw = _joined(
                ref_data, feats[visible], _training_targets(cfg, rc_um[visible], y[visible]),
                nb_train, counts, cfg.seed)
            fits = _fit(cfg, x_fit, y_fit, nb_fit, progress, **fit_kw)
    with timer("prediction"):
        # the candidates of the blend are scored on the same genes and spots as the model
        parts: dict[str, np.ndarray] = {}
        if stacked is not None:
            pred, std, parts = _stacked_predict(stacked, feats[hidden], nb_hidden,
                                                rc_um[hidden], cfg, progress)
        else:
            pred, std = _predict(fits, feats[hidden], nb_hidden, cfg, progress)

    from ..metrics import kmeans_ari

    genes = list(expr.var_names)
    others = _image_candidates(parts)
    scores, per_gene, baseline = _heldout_scores(pred, y, rc_um, hidden, visible, genes, others)
    # the best score the measurement noise allows on these spots and genes, beside the score
    add_noise_ceiling(scores, per_gene, adata, spots=expr.obs_names[hidden])
    metrics: dict[str, Any] = {
        "heldout_fraction": float(holdout_fraction), "seed": int(seed),
        "n_hidden": int(len(hidden)), "n_visible": int(len(visible)), **scores,
    }
    if ref_data is not None:
        metrics.update(ref_data.summary())
    metrics.update(model_summary(models))
    if stacked is not None:
        metrics.update(stacked.blend.summary())
        if stacked.ridge is not None:
            metrics["ridge_alpha"] = stacked.ridge.alpha
    if labels is not None:
        lab_hidden = labels.to_numpy()[hidden]
        metrics["ari"] = kmeans_ari(pred, lab_hidden, seed=0)
        metrics["ari_baseline_knn"] = kmeans_ari(baseline, lab_hidden, seed=0)
        metrics["ari_measured"] = kmeans_ari(y[hidden], lab_hidden, seed=0)
        metrics["n_labels"] = int(pd.Series(lab_hidden).dropna().nunique())

    members = "the ensemble mean" if len(fits) > 1 else "the model"
    out = _prediction_adata(expr[hidden], pred, y[hidden], std, per_gene, cfg,
                            baseline=("knn", baseline), uns_extra={
                                "task": "recovery",
                                "trust": _trust_record(metrics, f"{members} of this run")})
    store_result(adata, "recovery", metrics=metrics, config=cfg.public_dict(),
                 per_gene=per_gene, predictions=out, key_added=key_added)
    return RecoveryResult(predictions=out, metrics=metrics, per_gene=per_gene,
                          history=[f.history for f in fits], timings_s=timer.timings_s,
                          config=cfg.public_dict(), fits=fits)
