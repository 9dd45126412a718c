"""Enhancement: a denser grid of virtual spots, sub-spot points and dense maps."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import geometry
from .._checks import MIN_SECTION_SPOTS, check_adata, check_declared_pixel_size
from ..metrics import TRUST_COLUMNS, add_noise_ceiling
from ..neighbours import idw_interpolate
from ..progress import Progress, ensure_progress
from ._config import (
    TRUST_HOLDOUT_FRACTION,
    RunConfig,
    check_neighbour_images,
    validate_config,
)
from ._maps import (
    DenseMaps,
    check_map_grid,
    check_map_size,
    map_grid,
    map_spot_consistency,
    predict_maps,
)
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
    _count_targets,
    _encoder_and_image,
    _features,
    _fit,
    _fit_stacked,
    _genes_stage,
    _heldout_scores,
    _holdout_split,
    _image_candidates,
    _joined,
    _lattice_kind,
    _predict,
    _spot_features,
    _stacked_predict,
    _subset_rows,
    _Timer,
    _training_targets,
    _trust_record,
    _virtual_spots,
    sample_geometry,
    trust_summary,
)
from ._store import store_result


@dataclass
class EnhanceResult:
    spots: AnnData  # measured spots, X log-normalised (the genes used)
    virtual: AnnData  # virtual spots on the denser lattice, X predicted
    maps: DenseMaps | None
    metrics: dict[str, Any]
    history: list[list[dict]]
    timings_s: dict[str, float]
    config: dict[str, Any]
    fits: list = field(default_factory=list, repr=False)
    #: per-gene held-out scores of the internal split (trust columns included); None with
    #: ``trust=False``
    trust: pd.DataFrame | None = None
    #: the blend the maps were predicted with (a StackedModel), None for the networks alone
    model: Any = field(default=None, repr=False)


def _sub_spot_offsets(spot_diameter_um: float, max_points: int = 7) -> np.ndarray:
    """Return the sub-locations of a spot disk for the aggregation loss (row/col um offsets).

    The centre and rings of 6 (at half the radius) and 12 (at 0.85 radius) points, roughly equal
    areas each.
    """
    radius_um = spot_diameter_um / 2.0
    pts = [np.zeros(2)]
    for n, frac in ((6, 0.5), (12, 0.85)):
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + (np.pi / n if n == 12 else 0.0)
        pts += list(frac * radius_um * np.stack([np.sin(ang), np.cos(ang)], axis=1))
    return np.asarray(pts[:max_points])


def _enhance_trust(cfg: RunConfig, feats: np.ndarray, y: np.ndarray, rc_um: np.ndarray,
                   nb_input: bool, sub: dict[str, Any], sub_offsets_um: np.ndarray | None,
                   split: tuple[np.ndarray, np.ndarray], genes: list[str], progress: Progress,
                   counts: dict[str, Any], reference=None, models=(), feature_key=None
                   ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Measure the per-gene trust of an enhance run on held-out spots.

    One model trained like the final one (same inputs, same losses; the per-gene blend when
    ``cfg.stacking``) on the spots of ``split[1]`` only, scored on the held-out ``split[0]`` (the
    blend's candidates too, on the same genes). ``counts``: the count loss's inputs, one row
    per spot ({} for MSE); ``reference``: the other sections' spots, which join the training
    as in the final model; ``models``: the trained models of the blend (``_reference``).
    """
    hidden, visible = split
    nb_train = nb_hidden = None
    if nb_input:
        nb_train = idw_interpolate(rc_um[visible], y[visible], rc_um[visible], cfg.n_neighbours,
                                   exclude_self=True)
        nb_hidden = idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], cfg.n_neighbours)
    sub_train: dict[str, Any] = {}
    if sub:
        sub_train = {"sub_features": sub["sub_features"][visible],
                     "sub_mask": sub["sub_mask"][visible]}
        if "sub_neighbour" in sub:
            n_offsets = len(sub_offsets_um)
            sub_rc = (rc_um[visible][:, None, :] + sub_offsets_um[None]).reshape(-1, 2)
            sub_nb = idw_interpolate(rc_um[visible], y[visible], sub_rc, cfg.n_neighbours,
                                     exclude_index=np.repeat(np.arange(len(visible)), n_offsets))
            sub_train["sub_neighbour"] = sub_nb.reshape(len(visible), n_offsets, -1)
    sub_train.update(_subset_rows(counts, visible))
    progress.message(f"per-gene trust: training on {len(visible)} spots, scoring the "
                     f"{len(hidden)} held out")
    from dataclasses import replace

    one = replace(cfg, ensemble=1)
    others: dict[str, np.ndarray] = {}
    if cfg.stacking:
        stacked = _fit_stacked(one, feats[visible], y[visible], rc_um[visible], nb_train,
                               progress, reference=reference,
                               models=models_on(models, visible), feature_key=feature_key,
                               detail=cfg.map_method == "residual", **sub_train)
        pred, _, parts = _stacked_predict(stacked, feats[hidden], nb_hidden, rc_um[hidden], one)
        others = _image_candidates(parts)
    else:
        x_fit, y_fit, nb_fit, sub_fit = _joined(
            reference, feats[visible], _training_targets(one, rc_um[visible], y[visible]),
            nb_train, sub_train, one.seed)
        fits = _fit(one, x_fit, y_fit, nb_fit, progress, **sub_fit)
        pred, _ = _predict(fits, feats[hidden], nb_hidden, cfg)
    metrics, per_gene, _ = _heldout_scores(pred, y, rc_um, hidden, visible, genes, others)
    metrics = {"heldout_fraction": float(len(hidden) / len(y)), "n_hidden": int(len(hidden)),
               "n_visible": int(len(visible)), **metrics}
    return metrics, per_gene


def _blend_weight_columns(blend, genes: list[str]) -> pd.DataFrame:
    """Each gene's blend weight per candidate (``blend_weight_<name>``), for ``var``."""
    return pd.DataFrame({f"blend_weight_{n}": blend.weights[:, c].astype(np.float32)
                         for c, n in enumerate(blend.names)}, index=pd.Index(genes))


def enhance(adata: AnnData, *, factor: int = geometry.DEFAULT_DENSITY_FACTOR,
            stride_um: float | None = None,
            config: RunConfig | None = None, progress: Progress | None = None,
            key_added: str | None = None,
            map_path: str | None = None, map_margin_um: float | None = None,
            trust: bool = True, trust_holdout_fraction: float = TRUST_HOLDOUT_FRACTION,
            map_store: bool | str = False, reference=None,
            reference_weight: float | None = None) -> EnhanceResult:
    """Predict expression on a ``factor``x denser lattice of virtual spots, and dense maps.

    With ``stride_um`` the maps are dense sub-spot maps over the tissue (streamed to ``map_path`` as
    OME-Zarr when given, else kept in memory).

    With a dense map the model gets a third, local window (``config.local_window_um``) and is
    trained with the aggregation constraint: the map averaged over each measured spot's disk
    must reproduce that spot (as in iStar), besides the spot-level TriHRGE loss.

    With ``config.stacking`` (the default) every virtual spot and map pixel combines the
    candidates of :mod:`napari_trihrge.model.stacking`: inverse-distance kNN of the measured
    spots (k=6 / k=12), the ridge head on the location's image features (and its interpolated
    neighbour expression) and the networks (one per fold). ``config.map_method='residual'``
    : kNN (k=6) of the measured spots plus, per gene, a weight times each image
    candidate's detail (the candidate minus its own interpolation from its values at the
    spots), the weights fitted on held-out spots; ``'blend'`` (the default): the per-gene blend
    recovery uses, weighted on out-of-fold predictions of the measured spots. ``virtual.var`` holds
    each gene's weights (``blend_weight_<candidate>``; with the residual form, 1 on the kNN
    base). At a measured spot both return the measurement itself. ``stacking=()``: the network
    alone.

    Per-gene trust (``trust=True``): before the final model is trained on all spots, one model
    (the blend, with its own out-of-fold weights) is trained the same way on the spots left
    after holding out ``trust_holdout_fraction`` of them (seed ``config.seed``) and scored on
    the held-out spots next to kNN interpolation. The
    result is in ``virtual.var`` (:data:`napari_trihrge.metrics.TRUST_COLUMNS`),
    ``virtual.uns['trihrge']['trust']``, ``metrics['trust']`` and ``trust`` (per-gene table).
    It costs one more training; ``trust=False`` skips it and the outputs then say nothing about
    which genes to trust.

    ``map_store``: keep the maps factorised (:mod:`napari_trihrge.io.map_store`): ``maps`` is
    then a :class:`~napari_trihrge.io.map_store.FactorMaps` that computes any gene's map (and
    spread) on demand, exactly; a path writes the store there (with ``map_path`` too, every
    gene is also materialised there).

    ``reference`` / ``reference_weight``: other sections of the study as extra training data
    of the network and the ridge head, as in :func:`recovery` (their spots join the spot-level
    loss; the aggregation loss and the kNN candidates use the section's own spots only). A
    trained model among ``reference`` joins the blend as a candidate (as in :func:`recovery`);
    its maps are then materialised, not factorised (a warning says so when ``map_store`` asked
    for the store).

    The result is also recorded on ``adata`` under ``key_added`` (default ``trihrge_enhance``):
    the summary in ``uns``, the per-gene trust in ``var``
    (:func:`napari_trihrge.tl.store_result`).
    """
    check_adata(adata, min_spots=MIN_SECTION_SPOTS)
    check_declared_pixel_size(adata)
    cfg = config or RunConfig()
    validate_config(cfg)
    factor = geometry.validate_density_factor(factor)
    check_neighbour_images(cfg.neighbour_images, adata.n_obs)
    check_reference_weight(reference_weight)
    refs, loaded_models = check_all_references(adata, reference, cfg)
    if loaded_models and map_store:
        warnings.warn("with a trained model as a reference the maps are materialised (every "
                      "gene's map computed now), not kept as a factorised map store",
                      UserWarning, stacklevel=2)
        map_store = False
    if stride_um is not None:
        # networks whose spread is mapped next to the values: with the blend, one per fold
        n_networks = cfg.ensemble * (cfg.stacking_folds if "network" in cfg.stacking else 1)
        check_map_size(adata, stride_um, n_genes=cfg.most_genes(adata.n_vars), ensemble=n_networks,
                       in_memory=map_path is None and not map_store)
    progress = ensure_progress(progress)
    timer = _Timer()
    expr = _genes_stage(adata, cfg, timer, progress, marker_panel=cfg.marker_panel)
    if refs is not None:
        expr = expr[:, shared_genes(list(expr.var_names), refs)].copy()
    rc_um, um_per_px, spot_diameter_um = sample_geometry(expr)
    split = None
    if trust:
        split = _holdout_split(expr.n_obs, trust_holdout_fraction, cfg.seed, how_to_fix=(
            "use a held-out fraction for the trust estimate between 0.1 and 0.5 on a sample of "
            "at least 20 spots, or skip the estimate (--no-trust, trust=False)"))
    y = np.asarray(expr.X, dtype=np.float32)
    lattice = geometry.detect_lattice(rc_um, kind=_lattice_kind(expr))
    windows = tuple(cfg.windows_um)
    if stride_um is not None:
        windows = (float(cfg.local_window_um), *windows)

    with timer("features"):
        image, encoder = _encoder_and_image(adata, cfg) if cfg.image_input else (None, None)
        if stride_um is not None:  # an empty map is refused before training
            from ..io import get_image

            grid_image = image if image is not None else get_image(adata)
            margin = map_margin_um if map_margin_um is not None else \
                geometry.spot_spacing_um(rc_um)
            grid = map_grid(grid_image, rc_um, stride_um, margin)  # used again for the maps
            check_map_grid(grid, grid_image, stride_um)
        feats, images = _spot_features(image, encoder, rc_um, windows, cfg, progress,
                                       dense=stride_um is not None)
        ref_data = None
        if refs is not None:
            ref_data = reference_data(refs, list(expr.var_names), cfg, encoder, windows, feats,
                                      progress, dense=stride_um is not None,
                                      weight=reference_weight)
        models = model_references(loaded_models, adata[expr.obs_names], list(expr.var_names),
                                  cfg, progress)
        run_key = feature_key(cfg, encoder, windows, stride_um is not None)
    nb = None
    if cfg.neighbour_input:
        nb = idw_interpolate(rc_um, y, rc_um, cfg.n_neighbours, exclude_self=True)

    sub: dict[str, Any] = {}
    offs = None
    if stride_um is not None:
        offs = _sub_spot_offsets(spot_diameter_um)
        sub_rc = (rc_um[:, None, :] + offs[None]).reshape(-1, 2)
        with timer("features"):
            sub_feats = _features(image, encoder, sub_rc, windows, cfg, progress,
                                  dense=stride_um is not None, neighbour_images=images)
        sub["sub_features"] = sub_feats.reshape(len(rc_um), len(offs), *sub_feats.shape[1:])
        sub["sub_mask"] = np.ones((len(rc_um), len(offs)), dtype=bool)
        if cfg.neighbour_input:
            # the spot a sub-location belongs to is left out, as for the spot-level loss;
            # otherwise the aggregation loss is met by copying the spot's own measurement
            sub_nb = idw_interpolate(rc_um, y, sub_rc, cfg.n_neighbours,
                                     exclude_index=np.repeat(np.arange(len(rc_um)), len(offs)))
            sub["sub_neighbour"] = sub_nb.reshape(len(rc_um), len(offs), -1)

    genes = list(expr.var_names)
    counts = _count_targets(cfg, adata, expr)  # {} unless a count loss
    trust_metrics = trust_table = None
    if split is not None:
        with timer("trust"):
            trust_metrics, trust_table = _enhance_trust(cfg, feats, y, rc_um, nb is not None, sub,
                                                        offs, split, genes, progress, counts,
                                                        reference=ref_data, models=models,
                                                        feature_key=run_key)
            add_noise_ceiling(trust_metrics, trust_table, adata, spots=expr.obs_names[split[0]])
    stacked = None
    with timer("training"):
        if cfg.stacking:
            stacked = _fit_stacked(cfg, feats, y, rc_um, nb, progress, reference=ref_data,
                                   models=models_on(models, np.arange(len(y))),
                                   feature_key=run_key, detail=cfg.map_method == "residual",
                                   **sub, **counts)
            fits = stacked.fits
        else:
            x_fit, y_fit, nb_fit, sub_fit = _joined(ref_data, feats,
                                                    _training_targets(cfg, rc_um, y), nb,
                                                    {**sub, **counts}, cfg.seed)
            fits = _fit(cfg, x_fit, y_fit, nb_fit, progress, **sub_fit)
            del sub_fit
    del sub

    # virtual spots (measured spots included: there kNN returns the measurement itself)
    with timer("prediction"):
        pts_rc, parent = geometry.virtual_spot_grid(rc_um, factor, lattice)
        v_feats = _features(image, encoder, pts_rc, windows, cfg, progress,
                            dense=stride_um is not None, neighbour_images=images)
        v_nb = idw_interpolate(rc_um, y, pts_rc, cfg.n_neighbours) if cfg.neighbour_input else None
        if stacked is not None:
            v_pred, v_std, _ = _stacked_predict(stacked, v_feats, v_nb, pts_rc, cfg, progress)
        else:
            v_pred, v_std = _predict(fits, v_feats, v_nb, cfg, progress)
    virtual = _virtual_spots(pts_rc, parent, v_pred, v_std, genes, um_per_px,
                             spot_names=expr.obs_names, spatial_uns=adata.uns.get("spatial"))
    virtual.uns["trihrge"] = {**expr.uns.get("trihrge", {}), "task": "enhance",
                              "factor": int(factor), "lattice": lattice.kind,
                              "lattice_spacing_um": lattice.spacing_um,
                              "config": cfg.public_dict()}

    metrics: dict[str, Any] = {"n_virtual_spots": int(len(pts_rc)), "factor": int(factor),
                               "lattice": lattice.kind, "lattice_spacing_um": lattice.spacing_um}
    if ref_data is not None:
        metrics.update(ref_data.summary())
    metrics.update(model_summary(models))
    if stacked is not None:
        metrics.update(stacked.blend.summary())
        virtual.var = virtual.var.join(_blend_weight_columns(stacked.blend, genes))
    if trust_table is not None:
        for col in TRUST_COLUMNS:
            virtual.var[col] = trust_table[col].reindex(virtual.var_names).to_numpy()
        if stacked is not None and stacked.spots_level is not None:
            image_models = [n for n in stacked.blend.names if not n.startswith("knn")]
            model = (f"interpolation of the spots plus the per-gene weighted detail of "
                     f"{', '.join(image_models) or 'no image candidate'} (seed {cfg.seed}) "
                     "fitted like the final one on the other spots")
        elif stacked is not None:
            model = (f"the per-gene blend of {', '.join(stacked.blend.names)} (seed {cfg.seed}) "
                     "fitted like the final one on the other spots")
        else:
            model = (f"one model (seed {cfg.seed}) trained like the final "
                     + (f"ensemble of {len(fits)}" if len(fits) > 1 else "model")
                     + " on the other spots")
        virtual.uns["trihrge"]["trust"] = _trust_record(trust_metrics, model)
        metrics["trust"] = trust_summary(trust_metrics)
    else:
        virtual.uns["trihrge"]["trust"] = {"measured": False,
                                           "why": "skipped (trust=False, --no-trust)"}
    maps = None
    if stride_um is not None:
        with timer("maps"):
            maps = predict_maps(stacked if stacked is not None else fits, image, encoder,
                                rc_um, y, windows, stride_um, cfg, progress=progress,
                                map_path=map_path, genes=genes, grid=grid,
                                factorised=bool(map_store) and (
                                    stacked is None or stacked.factorisable),
                                store_path=map_store if isinstance(map_store, str) else None,
                                neighbour_images=images)
        with timer("consistency"):
            metrics["consistency"] = map_spot_consistency(maps, rc_um, y, spot_diameter_um)
    store_result(adata, "enhance", metrics=metrics, config=cfg.public_dict(),
                 per_gene=trust_table, key_added=key_added)
    return EnhanceResult(spots=expr, virtual=virtual, maps=maps, metrics=metrics,
                         history=[f.history for f in fits], timings_s=timer.timings_s,
                         config=cfg.public_dict(), fits=fits, trust=trust_table,
                         model=stacked)
