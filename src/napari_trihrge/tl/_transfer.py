"""Transfer: train on some sections, predict another one's spots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import MIN_SECTION_SPOTS, check_adata, check_adatas
from ..errors import TrihrgeInputError
from ..metrics import spot_scores
from ..progress import Progress, ensure_progress
from ._config import (
    RunConfig,
    check_levers_supported,
    check_neighbour_images,
    validate_config,
)
from ._recovery import RecoveryResult
from ._shared import (
    _encoder_and_image,
    _fit,
    _predict,
    _prediction_adata,
    _spot_features,
    _standardise,
    _Timer,
    sample_geometry,
)
from ._store import store_result


@dataclass
class TransferResult(RecoveryResult):
    """As :class:`RecoveryResult`, for the target section.

    ``predictions`` holds the target section's spots with layers 'measured', 'ridge' (and 'std').
    """


def transfer_genes(adatas: Sequence[AnnData], training: Sequence[AnnData], n_top_genes: int, *,
                   extra_genes: Sequence[str] = (), marker_panel: str | None = None) -> list[str]:
    """Select genes for a cross-section model.

    Highly variable (seurat_v3) over the pooled raw counts of the ``training`` sections, among the
    genes every section in ``adatas`` has, plus the ``marker_panel`` genes detected there.
    """
    import scipy.sparse as sp

    from ..pp import select_genes

    common = pd.Index(adatas[0].var_names)
    for a in adatas[1:]:
        common = common.intersection(pd.Index(a.var_names), sort=False)
    if len(common) == 0:
        raise TrihrgeInputError("the sections have no gene in common",
                                "use sections measured on the same panel / transcriptome")
    blocks = []
    for a in training:
        x = a[:, common].X
        blocks.append(sp.csr_matrix(x, dtype=np.float32))
    pooled = AnnData(X=sp.vstack(blocks).tocsr())
    pooled.var_names = common
    return select_genes(pooled, n_top_genes=n_top_genes,
                        extra_genes=[g for g in extra_genes if g in common],
                        marker_panel=marker_panel)


def _section_expression(adata: AnnData, genes: list[str]) -> np.ndarray:
    from ..pp import check_counts, normalize_log1p

    check_counts(adata)
    return normalize_log1p(adata, genes=genes)


def transfer(train_adatas: Sequence[AnnData], target: AnnData, *, config: RunConfig | None = None,
             progress: Progress | None = None,
             key_added: str | None = None) -> TransferResult:
    """Train on whole sections and predict every spot of another section from its image alone.

    The model trains on ``train_adatas`` and predicts ``target``; per-gene PCC / MSE are scored on
    the target's measured spots.

    The model is image-only (the target's spots are not used as input). Genes: highly variable
    over the pooled training sections among the genes all sections share. Image features are
    standardised per section (``config.train`` cannot change that): stain and scanner differ
    between sections, and a per-section z-score removes that shift before the network sees it.
    Baselines in ``metrics``: the mean training expression (MSE only; its PCC is undefined) and a
    ridge regression on the same features (``baseline_ridge_*``).

    The result is also recorded on ``target`` under ``key_added`` (default
    ``trihrge_transfer``): the summary in ``uns``, the per-gene trust in ``var``, the
    predictions in ``obsm`` and ``obs`` (:func:`napari_trihrge.tl.store_result`).
    """
    cfg = config or RunConfig()
    validate_config(cfg)
    check_levers_supported(cfg, "transfer")
    if not cfg.image_input:
        raise TrihrgeInputError("transfer predicts from the image alone; image_input=False "
                                "leaves it nothing to learn from", "use image_input=True")
    from dataclasses import replace

    cfg = replace(cfg, neighbour_input=False)
    train_adatas = check_adatas(train_adatas, what="train_adatas", min_spots=MIN_SECTION_SPOTS)
    check_adata(target, what="target")
    for what, a in [*((f"train_adatas[{i}]", a) for i, a in enumerate(train_adatas)),
                    ("the target", target)]:
        check_neighbour_images(cfg.neighbour_images, a.n_obs, what)
    progress = ensure_progress(progress)
    timer = _Timer()
    with timer("genes"):
        progress.stage("genes", 1)
        genes = transfer_genes([*train_adatas, target], train_adatas, cfg.n_top_genes,
                               extra_genes=cfg.extra_genes)
        ys = [_section_expression(a, genes) for a in [*train_adatas, target]]
        progress.advance()
    feats = []
    with timer("features"):
        for a in [*train_adatas, target]:
            rc_um, _, _ = sample_geometry(a)
            image, encoder = _encoder_and_image(a, cfg)
            feats.append(_standardise(_spot_features(image, encoder, rc_um, cfg.windows_um, cfg,
                                                     progress)[0])[0])
    x_train = np.concatenate(feats[:-1])
    y_train = np.concatenate(ys[:-1])
    y_target = ys[-1]
    with timer("training"):
        fits = _fit(cfg, x_train, y_train, None, progress)
    with timer("prediction"):
        pred, std = _predict(fits, feats[-1], None, cfg, progress)

    from sklearn.linear_model import RidgeCV

    with timer("baselines"):
        ridge = RidgeCV(alphas=np.logspace(0, 5, 11)).fit(
            x_train.reshape(len(x_train), -1), y_train)
        ridge_pred = np.maximum(ridge.predict(feats[-1].reshape(len(y_target), -1)), 0.0)
    mean_pred = np.broadcast_to(y_train.mean(axis=0), y_target.shape)
    summary, per_gene = spot_scores(pred, y_target, genes,
                                    baselines={"ridge": ridge_pred, "train_mean": mean_pred})
    per_gene["pcc_baseline"] = per_gene["pcc_ridge"]
    metrics: dict[str, Any] = {
        "n_train_sections": len(train_adatas), "n_train_spots": int(len(y_train)),
        "n_target_spots": int(len(y_target)), **summary,
        "baseline_ridge_alpha": float(ridge.alpha_),
    }
    out = _prediction_adata(target[:, genes], pred, y_target, std, per_gene, cfg,
                            baseline=("ridge", ridge_pred.astype(np.float32)),
                            uns_extra={"task": "transfer", "train_sections": [
                                str(a.uns.get("trihrge", {}).get("sample", i))
                                for i, a in enumerate(train_adatas)]})
    store_result(target, "transfer", metrics=metrics, config=cfg.public_dict(),
                 per_gene=per_gene, predictions=out, key_added=key_added)
    return TransferResult(predictions=out, metrics=metrics, per_gene=per_gene,
                          history=[f.history for f in fits], timings_s=timer.timings_s,
                          config=cfg.public_dict(), fits=fits)
