"""Steps every task shares.

Geometry, features, fitting, the per-gene blend, held-out splits and scoring, per-gene trust,
and the AnnData of predicted and virtual spots.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import geometry
from ..errors import TrihrgeInputError
from ..io.model_folder import NORMALISATION
from ..metrics import TRUST_COLUMNS, best_baseline, gene_trust, spot_scores
from ..neighbours import idw_interpolate, mean_of_nearest_others
from ..pp import prepare_expression
from ..pp.markers import marker_note
from ..progress import Progress
from ..threads import cpu_threads
from ._config import BASELINE_KS, RunConfig, model_preset


class _Timer:
    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.timings_s[name] = timer.timings_s.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


def sample_geometry(adata: AnnData) -> tuple[np.ndarray, float, float]:
    """Spot centres (row/col um), full-resolution um/px and spot diameter (um) of a sample."""
    meta = adata.uns.get("trihrge", {})
    if "um_per_px" not in meta:
        raise TrihrgeInputError(
            "the sample has no pixel size (uns['trihrge']['um_per_px'])",
            "read it with napari_trihrge.io.read(), which fits the pixel size on the spot "
            "lattice, or set adata.uns['trihrge'] = {'um_per_px': ..., 'spot_diameter_um': ...}",
        )
    um_per_px = geometry.validate_um_per_px(float(meta["um_per_px"]))
    rc_um = geometry.xy_px_to_rc_um(adata.obsm["spatial"], um_per_px)
    return rc_um, um_per_px, float(meta.get("spot_diameter_um",
                                            geometry.DEFAULT_SPOT_DIAMETER_UM))


def _create_encoder(cfg: RunConfig):
    from ..features import create_encoder

    extra = {"architecture": cfg.encoder_architecture} if cfg.encoder_architecture else {}
    return create_encoder(cfg.encoder, device=cfg.device, hf_token=cfg.hf_token, **extra)


def _lattice_kind(adata: AnnData) -> str | None:
    """Return the spot lattice ('hex', 'square') of the sample's platform, None when unknown."""
    platform = adata.uns.get("trihrge", {}).get("platform")
    return geometry.PLATFORMS.get(platform, {}).get("lattice")


def _encoder_and_image(adata: AnnData, cfg: RunConfig):
    from ..io import get_image

    return get_image(adata), _create_encoder(cfg)


def _standardise(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score per section over the first axis: return z, mean, std (a std below 1e-6 taken as 1).

    Stain and scanner differ between sections.
    """
    mu = feats.mean(axis=0)
    sd = feats.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    return ((feats - mu) / sd).astype(np.float32), mu.astype(np.float32), sd.astype(np.float32)


def _features(image, encoder, rc_um: np.ndarray, windows_um: Sequence[float], cfg: RunConfig,
              progress: Progress, *, dense: bool = False, cache: bool = True,
              neighbour_images: NeighbourImages | None = None) -> np.ndarray:
    """Embed image bags (N, S, D).

    ``dense``: the first window is the local one and every window comes from the encoder's dense
    path (for ViTs, patch tokens from one forward pass per tile: the same features for spots,
    sub-locations, virtual spots and map pixels). ``neighbour_images`` (the run's
    :class:`NeighbourImages`, or None): its window is appended (N, S + 1, D).
    """
    from ..features import extract_features

    if not cfg.image_input:
        return np.zeros((len(rc_um), 0, 1), dtype=np.float32)
    cache_dir = cfg.cache_dir if cache else None
    if dense:
        feats = extract_features(image, rc_um, encoder, tuple(windows_um[1:]), dense=True,
                                 local_window_um=windows_um[0], cache_dir=cache_dir,
                                 progress=progress)
    else:
        feats = extract_features(image, rc_um, encoder, tuple(windows_um), cache_dir=cache_dir,
                                 progress=progress)
    return feats if neighbour_images is None else neighbour_images.append_to(feats, rc_um)


@dataclass
class NeighbourImages:
    """The neighbouring spots' images as one more window of the features (``neighbour_images``).

    The window at a location is the mean spot-window features (the smallest of the run's
    ``windows_um``; with ``neighbour_images_windows='all'`` every window, each one more
    window) of the ``k`` spots nearest it, its nearest spot left out
    (:func:`napari_trihrge.neighbours.mean_of_nearest_others`): at a spot the spot itself, at a
    sub-location, virtual spot or map pixel the spot whose cell holds it, so every location sees
    the ring of spots around its own, at the distances the training spots see. The spots are
    every measured-lattice spot (hidden ones too: their images are known), or the tissue
    lattice of a bare image. Computed here only; every path appends it through
    :func:`_features` or :meth:`append_to`, upstream of the ridge head, the networks and the
    map store.
    """

    spot_rc_um: np.ndarray
    spot_windows: np.ndarray  # (spots, W, D): the spots' features of the averaged windows
    k: int

    @classmethod
    def from_spots(cls, cfg: RunConfig, spot_feats: np.ndarray, spot_rc_um: np.ndarray,
                   windows_um: Sequence[float], *, dense: bool) -> NeighbourImages | None:
        """Return the window's sources from the spots' own features (N, S, D).

        None when ``cfg.neighbour_images`` is 0. ``windows_um`` / ``dense`` as given to
        :func:`_features` for ``spot_feats``.
        """
        if not cfg.neighbour_images or not cfg.image_input:
            return None
        if cfg.neighbour_images_windows == "all":
            chosen = list(range(spot_feats.shape[1]))
        else:
            first = int(dense)  # the dense path's first window is the local one
            chosen = [first + int(np.argmin([float(w) for w in windows_um[first:]]))]
        return cls(np.asarray(spot_rc_um, dtype=np.float64),
                   np.asarray(spot_feats[:, chosen], dtype=np.float32), int(cfg.neighbour_images))

    def append_to(self, feats: np.ndarray, rc_um: np.ndarray) -> np.ndarray:
        """Return ``feats`` (N, S, D) at ``rc_um`` with the windows appended (N, S + W, D)."""
        extra = mean_of_nearest_others(self.spot_rc_um, self.spot_windows, rc_um, self.k)
        return np.concatenate([np.asarray(feats, dtype=np.float32), extra], axis=1)


def _spot_features(image, encoder, rc_um: np.ndarray, windows_um: Sequence[float],
                   cfg: RunConfig, progress: Progress, *, dense: bool = False
                   ) -> tuple[np.ndarray, NeighbourImages | None]:
    """Embed the spots and make the run's :class:`NeighbourImages` from them.

    Returns the spots' features (with the neighbour-image windows when
    ``cfg.neighbour_images`` > 0) and the windows' sources for every other location.
    """
    feats = _features(image, encoder, rc_um, windows_um, cfg, progress, dense=dense)
    images = NeighbourImages.from_spots(cfg, feats, rc_um, windows_um, dense=dense)
    return (feats if images is None else images.append_to(feats, rc_um)), images


def _fit(cfg: RunConfig, features, targets, neighbour, progress, **sub) -> list:
    from ..model.training import TrainConfig, fit_ensemble

    train_cfg = TrainConfig(**{"seed": cfg.seed, "device": cfg.device, **cfg.train})
    seeds = [cfg.seed + i for i in range(max(1, int(cfg.ensemble)))]
    model_kw = {"neighbour_skip": cfg.neighbour_skip and neighbour is not None,
                **model_preset(cfg), **_lever_settings(cfg), **cfg.model}
    model_kw["neighbour_input"] = neighbour is not None
    with cpu_threads(cfg.threads):
        return fit_ensemble(features, targets, neighbour=neighbour, seeds=seeds,
                            train_config=train_cfg, progress=progress, **sub, **model_kw)


def _lever_settings(cfg: RunConfig) -> dict[str, Any]:
    """Return the ModelConfig fields of the run's levers (a count loss predicts via softplus)."""
    from ..model.network import COUNT_LOSSES

    out: dict[str, Any] = {"loss": cfg.loss, "output_rank": int(cfg.output_rank)}
    if cfg.loss in COUNT_LOSSES:
        out["output_activation"] = "softplus"
    return out


def _count_targets(cfg: RunConfig, adata: AnnData, expr: AnnData) -> dict[str, Any]:
    """Return fit's count-loss inputs for a count loss, else {}.

    The raw counts of ``expr``'s genes and each spot's library size over every gene of ``adata``
    (fit's ``counts``, ``library_size``, ``target_sum``).
    """
    from ..model.network import COUNT_LOSSES

    if cfg.loss not in COUNT_LOSSES:
        return {}
    rows = adata.obs_names.get_indexer(expr.obs_names)
    library = np.asarray(adata.X[rows].sum(axis=1), dtype=np.float64).ravel()
    target_sum = float(expr.uns.get("trihrge_preprocessing", {}).get("target_sum", 1e4))
    return {"counts": np.asarray(expr.layers["counts"], dtype=np.float32),
            "library_size": library.astype(np.float32), "target_sum": target_sum}


def _subset_rows(arrays: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """Return the per-spot arrays of fit's keyword inputs at ``rows`` (scalars kept)."""
    return {k: v[rows] if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def _training_targets(cfg: RunConfig, rc_um: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the targets the models are fitted to.

    ``y``, denoised by the neighbours when ``cfg.target_smoothing`` > 0
    (:func:`napari_trihrge.model.targets.denoise_by_neighbours`).
    """
    if not cfg.target_smoothing:
        return y
    from ..model.targets import denoise_by_neighbours

    return denoise_by_neighbours(rc_um, y, weight=float(cfg.target_smoothing),
                                 n_neighbours=int(cfg.target_smoothing_k))


def _predict(fits: list, features, neighbour, cfg: RunConfig, progress: Progress | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    from ..model.predict import predict_ensemble

    with cpu_threads(cfg.threads):
        mean, std = predict_ensemble([f.model for f in fits], features, neighbour,
                                     device=cfg.device, progress=progress)
    return mean, (std if len(fits) > 1 else None)


@dataclass
class StackedModel:
    """What :func:`_fit_stacked` learns.

    The network of every fold (averaged when predicting), the ridge head on all training spots,
    the trained models given as references (``_reference.ModelReference``, on the training
    spots) and the per-gene blend of the candidates. ``feature_key``: what the run's features
    are (``_reference.feature_key``), so a model reference with the same features reuses them.
    With the detail transfer (enhance's ``map_method='residual'``), the blend is
    :meth:`stacking.DetailTransfer.as_blend` and its kNN candidates interpolate
    ``spots_level`` instead of ``src_y``.
    """

    fits: list
    ridge: Any  # stacking.RidgeHead or None
    blend: Any  # stacking.GeneBlend
    src_rc_um: np.ndarray  # training spots (interpolation sources)
    src_y: np.ndarray
    models: list = field(default_factory=list)
    feature_key: tuple | None = None
    spots_level: np.ndarray | None = None  # what the kNN candidates interpolate (None: src_y)
    out_of_fold: dict | None = None  # name -> (spots, G): what the weights were fitted on

    @property
    def factorisable(self) -> bool:
        """Whether the maps can be kept factorised (``io.map_store``: no model reference)."""
        return not self.models


def _fit_stacked(cfg: RunConfig, feats: np.ndarray, y: np.ndarray, rc_um: np.ndarray,
                 nb: np.ndarray | None, progress: Progress, *, reference=None,
                 models: Sequence[Any] = (), feature_key: tuple | None = None,
                 detail: bool = False, **sub) -> StackedModel:
    """Fit the stacked model: out-of-fold candidates, the per-gene blend and the ridge head.

    Out-of-fold predictions of every candidate on the training spots (``cfg.stacking_folds`` folds;
    kNN leave-one-out over all training spots, as dense as for the hidden spots), the per-gene blend
    fitted on them, and the ridge head refitted on every training spot. ``sub``: the sub-spot arrays
    of the aggregation loss (enhance with a dense map), one row per training spot; each fold's
    network gets the rows of its training spots. ``reference`` (a ``_reference.ReferenceData``
    of other sections): its spots join every fit of the network and the ridge head
    (``reference.join``); the kNN candidates and the blend weights see the section's spots only.
    ``models``: trained models as further candidates (``_reference.ModelReference`` on these
    training spots; they never saw the section, so their prediction is out of fold as it is).
    ``detail``: the detail-transfer form instead of the blend (:func:`_with_detail_transfer`).
    """
    from ..model.stacking import (
        RidgeHead,
        detail_base,
        fit_detail_transfer,
        fit_gene_blend,
        fold_indices,
    )

    # at least 5 spots per fold on small samples (the holdout split leaves at least 10)
    folds = fold_indices(len(y), max(2, min(cfg.stacking_folds, len(y) // 5)), cfg.seed)
    img = feats if cfg.image_input else None
    oof: dict[str, np.ndarray] = {}
    for name in cfg.stacking:
        if name.startswith("knn"):
            oof[name] = idw_interpolate(rc_um, y, rc_um, int(name[3:]), exclude_self=True)
        else:
            oof[name] = np.zeros_like(y)
    # the detail transfer: each image candidate's held-out detail (fold model minus its
    # interpolation from the same model's predictions at the other spots, as a map computes them)
    base = detail_base(list(oof)) if detail else None
    details = {n: np.zeros_like(y) for n in oof if base is not None and not n.startswith("knn")}
    # the neighbour input at the spots as at a map location (the spot not left out)
    nb_map = (idw_interpolate(rc_um, y, rc_um, cfg.n_neighbours)
              if base is not None and nb is not None else None)

    def held_out_detail(name: str, test: np.ndarray, at_spots: np.ndarray) -> None:
        details[name][test] = oof[name][test] - idw_interpolate(
            rc_um, at_spots, rc_um[test], int(base[3:]), exclude_index=test)

    fits: list = []
    for i, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        nb_tr, nb_te = (nb[train], nb[test]) if nb is not None else (None, None)
        # denoised within the fold's training spots only (the test spots stay unseen)
        y_fit = _training_targets(cfg, rc_um[train], y[train])
        x_tr, y_tr, nb_tr, sub_tr = _joined(reference, feats[train], y_fit, nb_tr,
                                            _subset_rows(sub, train), cfg.seed + 100 * i)
        if "ridge" in oof:
            head = RidgeHead.fit(x_tr if img is not None else None, nb_tr, y_tr)
            oof["ridge"][test] = head.predict(img[test] if img is not None else None, nb_te)
            if "ridge" in details:
                held_out_detail("ridge", test, head.predict(img, nb_map))
        if "network" in oof:
            progress.message(f"stacking fold {i + 1}/{len(folds)}")
            fold_fits = _fit(replace(cfg, seed=cfg.seed + 100 * i), x_tr, y_tr, nb_tr,
                             progress, **sub_tr)
            oof["network"][test] = _predict(fold_fits, feats[test], nb_te, cfg)[0]
            if "network" in details:
                held_out_detail("network", test, _predict(fold_fits, feats, nb_map, cfg)[0])
            fits += fold_fits
    for model in models:
        progress.message(f"the reference {model.name} at the training spots")
        oof[model.name] = model.predict_sources()
        if base is not None:  # never trained on the section: every spot is held out already
            details[model.name] = oof[model.name] - idw_interpolate(
                rc_um, oof[model.name], rc_um, int(base[3:]), exclude_self=True)
    # the blend is weighted against the measured (not denoised) expression
    ridge = None
    if "ridge" in oof:
        x_all, y_all, nb_all, _ = _joined(reference, feats, _training_targets(cfg, rc_um, y), nb,
                                          {}, cfg.seed)
        ridge = RidgeHead.fit(x_all if img is not None else None, nb_all, y_all)
    model = StackedModel(fits=fits, ridge=ridge, blend=fit_gene_blend(oof, y), src_rc_um=rc_um,
                         src_y=y, models=list(models), feature_key=feature_key, out_of_fold=oof)
    if base is None:
        return model
    transfer = fit_detail_transfer(details, y, oof[base], base)
    return _with_detail_transfer(model, cfg, feats, nb_map, transfer, progress)


def _with_detail_transfer(model: StackedModel, cfg: RunConfig, feats: np.ndarray,
                          nb_map: np.ndarray | None, transfer, progress: Progress
                          ) -> StackedModel:
    """Return ``model`` predicting the detail-transfer form (regression kriging).

    prediction = kNN of the spots + per gene, each image candidate minus its interpolation from
    its own values at the spots (``transfer``: a
    :class:`napari_trihrge.model.stacking.DetailTransfer`). Those values are the fitted
    candidates at the spots computed as a map location's (the neighbour input not leaving the
    spot out: ``nb_map``), so at a measured spot the prediction is its measurement.
    """
    at_spots, _ = _stacked_candidates(model, feats, nb_map, model.src_rc_um, cfg, progress)
    return replace(model, blend=transfer.as_blend(model.blend.names),
                   spots_level=transfer.spots_level(model.src_y, at_spots))


def _joined(reference, feats: np.ndarray, y: np.ndarray, nb: np.ndarray | None, sub: dict,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Return the training spots and, with a reference, its spots (``reference.join``)."""
    if reference is None:
        return feats, y, nb, sub
    return reference.join(feats, y, nb, sub, seed)


def _stacked_candidates(model: StackedModel, feats: np.ndarray, nb: np.ndarray | None,
                        rc_um: np.ndarray, cfg: RunConfig,
                        progress: Progress | None = None) -> tuple[dict, np.ndarray | None]:
    """Every candidate's prediction at ``rc_um`` (name -> (M, G)) and the networks' spread."""
    out, std = {}, None
    references = {m.name: m for m in model.models}
    for name in model.blend.names:
        if name in references:
            out[name] = references[name].predict(rc_um, feats, model.feature_key)
        elif name.startswith("knn"):
            level = model.src_y if model.spots_level is None else model.spots_level
            out[name] = idw_interpolate(model.src_rc_um, level, rc_um, int(name[3:]))
        elif name == "ridge":
            out[name] = model.ridge.predict(feats if cfg.image_input else None, nb)
        else:
            out[name], std = _predict(model.fits, feats, nb, cfg, progress)
    return out, std


def _image_candidates(parts: dict) -> dict:
    """Return the blend's candidates other than interpolation, scored beside the blend.

    The ridge head, the network and trained models given as references.
    """
    return {n: v for n, v in parts.items() if not n.startswith("knn")}


def _stacked_predict(model: StackedModel, feats: np.ndarray, nb: np.ndarray | None,
                     rc_um: np.ndarray, cfg: RunConfig, progress: Progress | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Return the blend's prediction at ``rc_um``, its spread and every candidate's prediction.

    The prediction is clipped at 0, as the network's output; the spread over the fold networks is
    the networks' spread times each gene's network weight (the blend is linear in the network; None
    without a network or with one); candidates are name -> (M, G).
    """
    parts, std = _stacked_candidates(model, feats, nb, rc_um, cfg, progress)
    pred = np.maximum(model.blend.predict(parts), 0.0)
    if std is not None:
        w_net = model.blend.weights[:, model.blend.names.index("network")]
        std = (std * w_net[None, :]).astype(np.float32)
    return pred, std, parts


def _genes_stage(adata: AnnData, cfg: RunConfig, timer: _Timer, progress: Progress, *,
                 marker_panel: str | None = None) -> AnnData:
    """Run the 'genes' stage: select genes and log-normalise (``X`` of the returned AnnData).

    ``marker_panel`` (enhance: ``cfg.marker_panel``) adds a panel's detected genes; which were
    added and which skipped goes to the progress messages (the CLI and panel show it).
    """
    with timer("genes"):
        progress.stage("genes", 1)
        expr = prepare_expression(adata, n_top_genes=cfg.n_top_genes, extra_genes=cfg.extra_genes,
                                  marker_panel=marker_panel)
        if marker_panel is not None:
            record = expr.uns["trihrge_preprocessing"]
            progress.note(marker_note(marker_panel, list(record["marker_genes"]),
                                      list(record["marker_genes_skipped"])))
        progress.advance()
    return expr


#: a held-out split must leave at least this many spots to train on
MIN_TRAINING_SPOTS = 10


def _holdout_split(n_spots: int, fraction: float, seed: int, how_to_fix: str | None = None, *,
                   optional: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``round(fraction * n_spots)`` spots chosen at random (``seed``).

    Returns ``(hidden, visible)``, both sorted.

    The one edge rule: a split hides at least one spot and leaves :data:`MIN_TRAINING_SPOTS` to
    train on. Where it cannot, it raises :class:`TrihrgeInputError` (recovery, enhance's trust
    estimate); with ``optional`` (train's per-section trust hold-out, where ``fraction`` 0 means
    none) nothing is hidden instead and every spot trains.
    """
    everything = (np.zeros(0, dtype=np.int64), np.arange(n_spots))
    if optional and fraction == 0:
        return everything
    if not 0.0 < fraction < 1.0:
        raise TrihrgeInputError(f"the held-out fraction must be between 0 and 1, got {fraction}",
                                how_to_fix or "use for example --holdout 0.5")
    n_hidden = int(round(n_spots * fraction))
    if n_hidden < 1 or n_spots - n_hidden < MIN_TRAINING_SPOTS:
        if optional:
            return everything
        raise TrihrgeInputError(
            f"hiding {fraction:.0%} of {n_spots} spots leaves too few to train on or to score",
            how_to_fix or "use a sample with more spots or a held-out fraction nearer 0.5")
    perm = np.random.default_rng(seed).permutation(n_spots)
    return np.sort(perm[:n_hidden]), np.sort(perm[n_hidden:])


def _annotation_labels(adata: AnnData, annotation) -> pd.Series | None:
    """Return labels per spot, aligned to ``adata.obs_names``.

    From an obs column name, a Series or a file (tab/comma separated: barcode, label).
    """
    if annotation is None:
        return None
    if isinstance(annotation, str) and annotation in adata.obs.columns:
        return adata.obs[annotation].astype(object)
    if isinstance(annotation, pd.Series):
        labels = annotation
    else:
        from pathlib import Path

        path = Path(annotation)
        if not path.exists():
            raise TrihrgeInputError(f"annotation file not found: {path}",
                                    "pass a tab- or comma-separated file of barcode and label")
        table = pd.read_csv(path, sep=None, engine="python", header=None, dtype=str)
        if table.shape[1] < 2:
            raise TrihrgeInputError(f"{path.name} must have two columns: barcode and label",
                                    "one spot per line, barcode then label")
        if table.iloc[0, 0] not in set(adata.obs_names) and table.shape[0] > 1:
            table = table.iloc[1:]  # header line
        labels = pd.Series(table.iloc[:, 1].to_numpy(), index=table.iloc[:, 0].to_numpy())
    labels = labels[~labels.index.duplicated()]
    aligned = labels.reindex(adata.obs_names)
    if aligned.notna().sum() == 0:
        raise TrihrgeInputError("no barcode of the annotation matches the sample's spots",
                                "check that the annotation belongs to this sample")
    return aligned.astype(object)


def _prediction_adata(spots: AnnData, pred: np.ndarray, measured: np.ndarray,
                      std: np.ndarray | None, per_gene: pd.DataFrame, cfg: RunConfig, *,
                      baseline: tuple[str, np.ndarray], uns_extra: dict[str, Any]) -> AnnData:
    """Return predictions for scored spots as AnnData.

    X predicted, layers 'measured', the baseline's name and 'std' (ensemble spread), per-gene PCC in
    ``var``, spatial metadata carried over.
    """
    name, values = baseline
    out = AnnData(X=pred.astype(np.float32), obs=spots.obs.copy(),
                  var=pd.DataFrame(index=pd.Index(spots.var_names)))
    out.obsm["spatial"] = np.asarray(spots.obsm["spatial"])
    out.layers["measured"] = np.asarray(measured, dtype=np.float32)
    out.layers[name] = np.asarray(values, dtype=np.float32)
    if std is not None:
        out.layers["std"] = std
    for col in ("pcc", "pcc_baseline", "mean_measured", *TRUST_COLUMNS):
        if col in per_gene:
            out.var[col if col != "pcc_baseline" else f"pcc_baseline_{name}"] = (
                per_gene[col].reindex(out.var_names).to_numpy())
    out.uns["trihrge"] = {**dict(spots.uns.get("trihrge", {})), **uns_extra,
                          "config": cfg.public_dict()}
    if "spatial" in spots.uns:
        out.uns["spatial"] = spots.uns["spatial"]
    return out


def _virtual_spots(points_rc_um: np.ndarray, parent: np.ndarray, pred: np.ndarray,
                   std: np.ndarray | None, genes: Sequence[str], um_per_px: float, *,
                   spot_names: Sequence[str] | None, keep_barcodes: bool = False,
                   spatial_uns: Any = None) -> AnnData:
    """Build the AnnData of virtual spots (enhance, predict).

    From :func:`~napari_trihrge.geometry.virtual_spot_grid`'s points and parents: X the prediction,
    ``layers['std']`` its spread, ``obs`` parent (the measured spot's name), offset and is_measured
    (offset 0 of a measured spot), ``obsm['spatial']`` in full-resolution pixels.

    ``spot_names``: the measured spots' names (None on a bare image: no parent, nothing
    measured); ``keep_barcodes``: the measured spots keep their names instead of ``v0000001``.
    """
    n_offsets = len(points_rc_um) // (int(parent.max()) + 1) if len(parent) else 1
    offset = np.tile(np.arange(n_offsets), len(points_rc_um) // n_offsets)
    is_measured = (offset == 0) & (spot_names is not None)
    names = np.array([f"v{i:07d}" for i in range(len(points_rc_um))], dtype=object)
    if spot_names is None:
        parent_names = np.full(len(points_rc_um), "", dtype=object)
    else:
        parent_names = np.asarray(spot_names, dtype=object)[parent]
        if keep_barcodes:
            names[is_measured] = np.asarray(spot_names, dtype=object)
    obs = pd.DataFrame({"parent": parent_names, "offset": offset, "is_measured": is_measured},
                       index=pd.Index(names.astype(str)))
    virtual = AnnData(X=pred.astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=pd.Index(list(genes))))
    virtual.obsm["spatial"] = geometry.rc_um_to_xy_px(points_rc_um, um_per_px)
    if std is not None:
        virtual.layers["std"] = std
    if spatial_uns is not None:
        virtual.uns["spatial"] = spatial_uns
    return virtual


def _section_name(adata: AnnData, i: int) -> str:
    return str(adata.uns.get("trihrge", {}).get("sample", f"section{i}"))


def _nonzero_spots(adata: AnnData) -> AnnData:
    from ..pp import check_counts

    check_counts(adata)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    return adata[totals > 0].copy() if (totals <= 0).any() else adata


def _log_expression(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Return the log-normalised expression of ``genes``; genes the section lacks are NaN columns.

    Normalised over all of the section's genes.
    """
    from ..pp import normalize_log1p

    logn = normalize_log1p(adata, target_sum=NORMALISATION["target_sum"])
    idx = adata.var_names.get_indexer(list(genes))
    out = np.full((adata.n_obs, len(idx)), np.nan, dtype=np.float32)
    out[:, idx >= 0] = logn[:, idx[idx >= 0]]
    return out


def _knn_baselines(rc_src: np.ndarray, y_src: np.ndarray, rc_dst: np.ndarray, *,
                   exclude_self: bool = False) -> dict[str, np.ndarray]:
    return {f"knn{k}": idw_interpolate(rc_src, y_src, rc_dst, k, exclude_self=exclude_self)
            for k in BASELINE_KS}


def _trust_columns(per_gene: pd.DataFrame, genes: Sequence[str]) -> pd.DataFrame:
    """Return the per-gene trust contract for ``genes``.

    See :func:`~napari_trihrge.metrics.gene_trust`; a gene that was not scored does not beat
    interpolation.
    """
    t = gene_trust(per_gene).reindex(pd.Index(list(genes), name="gene"))
    beats = t["beats_interpolation"]
    t["beats_interpolation"] = beats.where(beats.notna(), False).astype(bool)
    return t


def _score_with_knn(pred: np.ndarray, truth: np.ndarray, genes: list[str],
                    baselines: dict[str, np.ndarray]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score with :func:`~napari_trihrge.metrics.spot_scores` and every baseline.

    The better of the ``knn<k>`` baselines is "the baseline" (``baseline_knn_*``) with its
    ``baseline_knn_k``.
    """
    summary, per_gene = spot_scores(pred, truth, genes, baselines=baselines)
    knn = [name for name in baselines if name.startswith("knn")]
    summary.update(best_baseline(summary, per_gene, knn, "knn"))
    summary["baseline_knn_k"] = int(summary["baseline_knn_method"].removeprefix("knn"))
    return summary, per_gene


def _score_sections(parts: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
                    genes: list[str]) -> tuple[dict[str, Any], pd.DataFrame, list[dict]]:
    """Compute the held-out scores of several sections.

    ``parts`` holds the predictions, measurements and baselines of each section. Every section
    is scored on its own (:func:`_score_with_knn`), then the per-gene scores and the summary
    figures are averaged over the sections. Scores pooled over the sections would count the
    differences between sections (their mean levels) as skill. Returns the averaged summary
    (``n_sections``, ``pooling``), the averaged per-gene table and each section's summary.
    """
    summaries, tables = [], []
    for pred, truth, baselines in parts:
        summary, table = _score_with_knn(pred, truth, genes, baselines)
        summaries.append(summary)
        tables.append(table)
    if len(tables) == 1:
        return {**summaries[0], "n_sections": 1}, tables[0], summaries
    numeric = [c for c in tables[0].columns if pd.api.types.is_numeric_dtype(tables[0][c])
               and not pd.api.types.is_bool_dtype(tables[0][c])]
    per_gene = pd.concat([t[numeric] for t in tables]).groupby(level=0, sort=False).mean()
    per_gene = per_gene.reindex(tables[0].index)
    summary: dict[str, Any] = {}
    for key in summaries[0]:
        values = [s.get(key) for s in summaries]
        if all(v == values[0] for v in values):  # the same in every section (k, method)
            summary[key] = values[0]
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                 for v in values):
            summary[key] = float(np.nanmean(np.asarray(values, dtype=float)))
        else:
            summary[key] = "differs between sections"
    summary.update(n_sections=len(parts), pooling="mean over sections of the scores within "
                   "each section")
    return summary, per_gene, summaries


def _heldout_scores(pred: np.ndarray, y: np.ndarray, rc_um: np.ndarray, hidden: np.ndarray,
                    visible: np.ndarray, genes: list[str],
                    others: dict[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """Score predictions of the ``hidden`` spots next to kNN of the ``visible`` spots.

    The fair score, next to inverse-distance kNN of the ``visible`` spots (k in
    :data:`BASELINE_KS`, the better k as the baseline) and any ``others`` (name -> prediction,
    scored on the same genes and spots). Returns the metrics, the per-gene table (with the trust
    columns) and the better kNN's prediction.
    """
    knn = {f"knn{k}": idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], k)
           for k in BASELINE_KS}
    metrics, per_gene = _score_with_knn(pred, y[hidden], genes, {**knn, **(others or {})})
    trust = gene_trust(per_gene)
    for col in TRUST_COLUMNS[1:]:
        per_gene[col] = trust[col]
    metrics["n_genes_beating_interpolation"] = int(trust["beats_interpolation"].sum())
    return metrics, per_gene, knn[metrics["baseline_knn_method"]]


def trust_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return the short per-gene trust summary of a run (``summary.json['trust']``).

    From held-out metrics (:func:`recovery`'s, or an enhance run's internal split).
    """
    keys = ("heldout_fraction", "n_hidden", "n_visible", "n_genes_scored",
            "n_genes_beating_interpolation", "n_genes_constant_prediction", "pcc_mean",
            "baseline_knn_pcc_mean", "baseline_knn_k", "noise_ceiling_pcc_mean",
            "fraction_of_ceiling")
    return {k: metrics[k] for k in keys if k in metrics}


def _trust_record(metrics: dict[str, Any], model: str) -> dict[str, Any]:
    """``uns['trihrge']['trust']``: how the per-gene trust columns were measured."""
    return {**trust_summary(metrics), "model": model,
            "score": "per-gene PCC on the held-out spots, a constant prediction counting as 0",
            "baseline": (f"inverse-distance kNN of the training spots, k={metrics['baseline_knn_k']}"
                         f" (the better of k={'/'.join(str(k) for k in BASELINE_KS)})")}
