"""Tasks (``napari_trihrge.tl``): held-out spot recovery and enhancement.

These are the functions the CLI, the napari widgets and Python users all call. They take the
AnnData returned by :func:`napari_trihrge.io.read` (raw counts, ``obsm['spatial']`` in
full-resolution pixels) and return result objects holding AnnData.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import geometry
from ..errors import TrihrgeInputError
from ..io.sample import is_positive_number
from ..metrics import TRUST_COLUMNS, best_baseline, gene_trust, spot_scores
from ..neighbours import idw_interpolate
from ..pp import prepare_expression
from ..progress import Progress, ensure_progress
from ..threads import cpu_threads, parse_threads

#: k of the image-free inverse-distance kNN baselines scored next to every model; "the baseline"
#: is the better of them on the fair score (:func:`napari_trihrge.metrics.spot_scores`)
BASELINE_KS = (6, 12)

#: share of the spots an enhance run holds out (before training the final model on all spots)
#: to measure, per gene, whether the model beats interpolation
TRUST_HOLDOUT_FRACTION = 0.25

#: what the blend of recovery and enhance can combine (:mod:`napari_trihrge.model.stacking`)
STACKING_CANDIDATES = ("knn6", "knn12", "ridge", "network")

#: Network widths. 'paper' is TriHRGE's (1024 wide embedding MLP, 1024-2048-2048 decoder);
#: 'compact' keeps the architecture with narrower layers so a whole slide trains in about a minute
#: on a 2-core CPU. 'auto' picks 'paper' on a GPU and 'compact' on the CPU.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hidden_dim": 1024, "attention_dim": 256, "decoder_dims": (1024, 2048, 2048)},
    "compact": {"hidden_dim": 256, "attention_dim": 128, "decoder_dims": (256, 512, 512)},
}


@dataclass
class RunConfig:
    """Parameters of a run; every length in micrometres. The napari Train widget builds its form
    from these fields and takes its tooltips from this list.

    Parameters
    ----------
    encoder
        Image encoder: 'stain-texture' (built in), 'uni', 'uni2-h', 'hf-hub:...', a timm name
        or a local checkpoint.
    encoder_architecture
        For a local checkpoint: its architecture ('uni', 'uni2-h' or a timm name).
    hf_token
        Hugging Face token for gated encoders; used for this call only, never stored.
    windows_um
        Sizes of the image windows around each spot, in micrometres.
    local_window_um
        Size of the extra small window used for dense sub-spot maps, in micrometres.
    n_top_genes
        How many of the most variable genes the model learns (more = slower).
    extra_genes
        Genes to learn in any case. A gene you want to see as an enhanced map must be among
        the learned genes: add it here and run again.
    neighbour_input
        Give the model the interpolated expression of the measured neighbours as input.
    neighbour_skip
        Add a learned per-gene shortcut from that interpolated expression to the output.
    image_input
        Use the H&E image (off: neighbours only).
    n_neighbours
        Measured spots used for the neighbour input and the kNN baseline.
    stacking
        Recovery: candidates of the per-gene blend; () = the network alone.
    stacking_folds
        Recovery: folds of the out-of-fold predictions that weight the blend.
    ensemble
        Models trained with different seeds; their mean is the prediction and their spread
        shows where they disagree (less sure).
    model_preset
        Network size: 'compact' is fast on a laptop CPU, 'paper' uses the reference widths
        (better with a GPU), 'auto' picks compact on CPU and paper on GPU.
    seed
        Random seed: the same seed and settings give the same result.
    device
        'auto' (CUDA when present, else CPU), 'cuda' or 'cpu'.
    threads
        CPU threads for training and prediction (None: chosen from the free cores).
    cache_dir
        Folder for the image-feature cache (None: no cache).
    model
        Network settings that override the preset (ModelConfig fields).
    train
        Training settings (TrainConfig fields, e.g. max_epochs).
    """

    encoder: str = "stain-texture"
    encoder_architecture: str | None = None  # for a local checkpoint: 'uni', 'uni2-h', a timm name
    hf_token: str | None = field(default=None, repr=False)  # this call only; never stored
    windows_um: tuple[float, ...] = (112.0, 336.0)
    local_window_um: float = 24.0
    n_top_genes: int = 1000
    extra_genes: tuple[str, ...] = ()
    neighbour_input: bool = True
    # a learned per-gene shortcut from the interpolated neighbour expression to the output, for
    # genes that follow their neighbours more than the image (docs/benchmarks.md)
    neighbour_skip: bool = True
    image_input: bool = True
    n_neighbours: int = 12  # k=12 is the best image-free kNN on the shared sections
    # recovery and enhance (virtual spots, dense maps): the prediction is a per-gene non-negative
    # blend of these candidates (kNN k=6 and k=12 of the measured spots, a ridge head on image
    # features + neighbour-expression PCs, the network), weighted on out-of-fold predictions of the
    # training spots (napari_trihrge.model.stacking); the network is then the average of the fold
    # models. () = the network alone, trained on every training spot
    stacking: tuple[str, ...] = STACKING_CANDIDATES
    stacking_folds: int = 5
    ensemble: int = 1
    model_preset: str = "auto"  # 'auto' | 'paper' | 'compact' (see MODEL_PRESETS)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads for training and prediction (None: the free cores)
    cache_dir: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threads = parse_threads(self.threads, "threads")

    def public_dict(self) -> dict[str, Any]:
        """Parameters to record with outputs (the token is never included)."""
        d = asdict(self)
        d.pop("hf_token", None)
        d["windows_um"] = list(self.windows_um)
        d["extra_genes"] = list(self.extra_genes)
        d["stacking"] = list(self.stacking)
        for key in ("model", "train"):  # tuples (decoder_dims) cannot be stored in h5ad
            d[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in d[key].items()}
        return d


def validate_config(cfg: RunConfig) -> None:
    """Raise :class:`TrihrgeInputError` for run parameters that cannot work (checked before any
    heavy work by every task and by the CLI)."""
    from ..model.training import TrainConfig

    problems = []

    def whole(name: str, value: Any, flag: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            problems.append(f"{name} must be a whole number >= 1 ({flag}), got {value!r}")

    whole("the number of models in the ensemble", cfg.ensemble, "--ensemble")
    whole("the number of genes", cfg.n_top_genes, "--genes")
    whole("the number of neighbours", cfg.n_neighbours, "n_neighbours")
    windows = tuple(cfg.windows_um) if isinstance(cfg.windows_um, list | tuple) else ()
    if not windows or not all(is_positive_number(w) for w in windows):
        problems.append(f"the window sizes must be positive micrometres (--windows-um), got "
                        f"{cfg.windows_um!r}")
    if not is_positive_number(cfg.local_window_um):
        problems.append(f"the local window must be positive micrometres, got "
                        f"{cfg.local_window_um!r}")
    if problems:
        raise TrihrgeInputError("; ".join(problems), "fix the listed settings")
    _check_stacking(cfg)
    try:
        TrainConfig(**{"seed": cfg.seed, "device": cfg.device, **cfg.train}).validate()
    except TypeError as exc:
        raise TrihrgeInputError(f"unknown training setting: {exc}",
                                "see napari_trihrge.model.training.TrainConfig") from exc
    if cfg.cache_dir is not None:
        check_writable_folder(cfg.cache_dir, "the feature cache folder", "--cache-dir")


def check_writable_folder(path: Any, what: str, flag: str) -> None:
    """Raise unless ``path`` is (or can be made) a folder this process can write into."""
    import os
    from pathlib import Path

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise TrihrgeInputError(f"{what} {folder} is a file, not a folder",
                                f"pass a folder with {flag}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrihrgeInputError(f"{what} {folder} cannot be written (no write permission in "
                                f"{existing})", f"pass a folder you can write to with {flag}")


# -------------------------------------------------------------------------------------------
# shared steps
# -------------------------------------------------------------------------------------------
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
    """The spot lattice ('hex', 'square') of the sample's platform, None when unknown."""
    platform = adata.uns.get("trihrge", {}).get("platform")
    return geometry.PLATFORMS.get(platform, {}).get("lattice")


def _encoder_and_image(adata: AnnData, cfg: RunConfig):
    from ..io import get_image

    return get_image(adata), _create_encoder(cfg)


def _standardise(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-section z-score over the first axis (stain and scanner differ between sections):
    z, mean, std (a std below 1e-6 taken as 1)."""
    mu = feats.mean(axis=0)
    sd = feats.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    return ((feats - mu) / sd).astype(np.float32), mu.astype(np.float32), sd.astype(np.float32)


def _features(image, encoder, rc_um: np.ndarray, windows_um: Sequence[float], cfg: RunConfig,
              progress: Progress, *, dense: bool = False, cache: bool = True) -> np.ndarray:
    """Image bags (N, S, D). ``dense``: the first window is the local one and every window comes
    from the encoder's dense path (for ViTs, patch tokens from one forward pass per tile: the
    same features for spots, sub-locations, virtual spots and map pixels)."""
    from ..features import extract_features

    if not cfg.image_input:
        return np.zeros((len(rc_um), 0, 1), dtype=np.float32)
    cache_dir = cfg.cache_dir if cache else None
    if dense:
        return extract_features(image, rc_um, encoder, tuple(windows_um[1:]), dense=True,
                                local_window_um=windows_um[0], cache_dir=cache_dir,
                                progress=progress)
    return extract_features(image, rc_um, encoder, tuple(windows_um), cache_dir=cache_dir,
                            progress=progress)


def model_preset(cfg: RunConfig) -> dict[str, Any]:
    """The network widths for this run (``cfg.model`` entries override them)."""
    name = cfg.model_preset
    if name == "auto":
        from ..device import resolve_device

        name = "paper" if resolve_device(cfg.device).type == "cuda" else "compact"
    if name not in MODEL_PRESETS:
        raise TrihrgeInputError(f"unknown model preset {name!r}",
                                f"use one of: auto, {', '.join(MODEL_PRESETS)}")
    return dict(MODEL_PRESETS[name])


def _fit(cfg: RunConfig, features, targets, neighbour, progress, **sub) -> list:
    from ..model.training import TrainConfig, fit_ensemble

    train_cfg = TrainConfig(**{"seed": cfg.seed, "device": cfg.device, **cfg.train})
    seeds = [cfg.seed + i for i in range(max(1, int(cfg.ensemble)))]
    model_kw = {"neighbour_skip": cfg.neighbour_skip and neighbour is not None,
                **model_preset(cfg), **cfg.model}
    model_kw["neighbour_input"] = neighbour is not None
    with cpu_threads(cfg.threads):
        return fit_ensemble(features, targets, neighbour=neighbour, seeds=seeds,
                            train_config=train_cfg, progress=progress, **sub, **model_kw)


def _predict(fits: list, features, neighbour, cfg: RunConfig, progress: Progress | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    from ..model.predict import predict_ensemble

    with cpu_threads(cfg.threads):
        mean, std = predict_ensemble([f.model for f in fits], features, neighbour,
                                     device=cfg.device, progress=progress)
    return mean, (std if len(fits) > 1 else None)


@dataclass
class StackedModel:
    """What :func:`_fit_stacked` learns: the network of every fold (averaged when predicting),
    the ridge head on all training spots and the per-gene blend of the candidates."""

    fits: list
    ridge: Any  # stacking.RidgeHead or None
    blend: Any  # stacking.GeneBlend
    src_rc_um: np.ndarray  # training spots (interpolation sources)
    src_y: np.ndarray


def _check_stacking(cfg: RunConfig) -> None:
    unknown = sorted(set(cfg.stacking) - set(STACKING_CANDIDATES))
    if unknown:
        raise TrihrgeInputError(f"unknown stacking candidates {unknown}",
                                f"use any of {', '.join(STACKING_CANDIDATES)}, or () for the "
                                "network alone")
    if cfg.stacking and cfg.stacking_folds < 2:
        raise TrihrgeInputError(f"stacking_folds must be at least 2 (got {cfg.stacking_folds})",
                                "use for example 5, or stacking=() for the network alone")


def _fit_stacked(cfg: RunConfig, feats: np.ndarray, y: np.ndarray, rc_um: np.ndarray,
                 nb: np.ndarray | None, progress: Progress, **sub) -> StackedModel:
    """Out-of-fold predictions of every candidate on the training spots (``cfg.stacking_folds``
    folds; kNN leave-one-out over all training spots, as dense as for the hidden spots), the
    per-gene blend fitted on them, and the ridge head refitted on every training spot.
    ``sub``: the sub-spot arrays of the aggregation loss (enhance with a dense map), one row per
    training spot; each fold's network gets the rows of its training spots."""
    from ..model.stacking import RidgeHead, fit_gene_blend, fold_indices

    # at least 5 spots per fold on small samples (the holdout split leaves at least 10)
    folds = fold_indices(len(y), max(2, min(cfg.stacking_folds, len(y) // 5)), cfg.seed)
    img = feats if cfg.image_input else None
    oof: dict[str, np.ndarray] = {}
    for name in cfg.stacking:
        if name.startswith("knn"):
            oof[name] = idw_interpolate(rc_um, y, rc_um, int(name[3:]), exclude_self=True)
        else:
            oof[name] = np.zeros_like(y)
    fits: list = []
    for i, test in enumerate(folds):
        train = np.setdiff1d(np.arange(len(y)), test)
        nb_tr, nb_te = (nb[train], nb[test]) if nb is not None else (None, None)
        if "ridge" in oof:
            head = RidgeHead.fit(img[train] if img is not None else None, nb_tr, y[train])
            oof["ridge"][test] = head.predict(img[test] if img is not None else None, nb_te)
        if "network" in oof:
            progress.message(f"stacking fold {i + 1}/{len(folds)}")
            fold_fits = _fit(replace(cfg, seed=cfg.seed + 100 * i), feats[train], y[train],
                             nb_tr, progress, **{k: v[train] for k, v in sub.items()})
            oof["network"][test] = _predict(fold_fits, feats[test], nb_te, cfg)[0]
            fits += fold_fits
    ridge = RidgeHead.fit(img, nb, y) if "ridge" in oof else None
    return StackedModel(fits=fits, ridge=ridge, blend=fit_gene_blend(oof, y), src_rc_um=rc_um,
                        src_y=y)


def _stacked_candidates(model: StackedModel, feats: np.ndarray, nb: np.ndarray | None,
                        rc_um: np.ndarray, cfg: RunConfig,
                        progress: Progress | None = None) -> tuple[dict, np.ndarray | None]:
    """Every candidate's prediction at ``rc_um`` (name -> (M, G)) and the networks' spread."""
    out, std = {}, None
    for name in model.blend.names:
        if name.startswith("knn"):
            out[name] = idw_interpolate(model.src_rc_um, model.src_y, rc_um, int(name[3:]))
        elif name == "ridge":
            out[name] = model.ridge.predict(feats if cfg.image_input else None, nb)
        else:
            out[name], std = _predict(model.fits, feats, nb, cfg, progress)
    return out, std


def _stacked_predict(model: StackedModel, feats: np.ndarray, nb: np.ndarray | None,
                     rc_um: np.ndarray, cfg: RunConfig, progress: Progress | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The blend's prediction at ``rc_um`` (clipped at 0, as the network's output), its spread
    over the fold networks (the networks' spread times each gene's network weight: the blend is
    linear in the network; None without a network or with one), and every candidate's
    prediction (name -> (M, G))."""
    parts, std = _stacked_candidates(model, feats, nb, rc_um, cfg, progress)
    pred = np.maximum(model.blend.predict(parts), 0.0)
    if std is not None:
        w_net = model.blend.weights[:, model.blend.names.index("network")]
        std = (std * w_net[None, :]).astype(np.float32)
    return pred, std, parts


def _genes_stage(adata: AnnData, cfg: RunConfig, timer: _Timer, progress: Progress) -> AnnData:
    """The 'genes' stage: select genes and log-normalise (``X`` of the returned AnnData)."""
    with timer("genes"):
        progress.stage("genes", 1)
        expr = prepare_expression(adata, cfg.n_top_genes, cfg.extra_genes)
        progress.advance()
    return expr


def _holdout_split(n_spots: int, fraction: float, seed: int,
                   how_to_fix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < fraction < 1.0:
        raise TrihrgeInputError(f"the held-out fraction must be between 0 and 1, got {fraction}",
                                how_to_fix or "use for example --holdout 0.5")
    n_hidden = int(round(n_spots * fraction))
    if n_hidden < 1 or n_spots - n_hidden < 10:
        raise TrihrgeInputError(
            f"hiding {fraction:.0%} of {n_spots} spots leaves too few to train on or to score",
            how_to_fix or "use a sample with more spots or a held-out fraction nearer 0.5")
    perm = np.random.default_rng(seed).permutation(n_spots)
    return np.sort(perm[:n_hidden]), np.sort(perm[n_hidden:])


def _annotation_labels(adata: AnnData, annotation) -> pd.Series | None:
    """Labels per spot (aligned to ``adata.obs_names``) from an obs column name, a Series or a
    file (tab/comma separated: barcode, label)."""
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
    """Predictions for scored spots as AnnData: X predicted, layers 'measured', the baseline's
    name and 'std' (ensemble spread), per-gene PCC in ``var``, spatial metadata carried over."""
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


def _score_with_knn(pred: np.ndarray, truth: np.ndarray, genes: list[str],
                    baselines: dict[str, np.ndarray]) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`~napari_trihrge.metrics.spot_scores` with every baseline, the better of the
    ``knn<k>`` baselines as "the baseline" (``baseline_knn_*``) and its ``baseline_knn_k``."""
    summary, per_gene = spot_scores(pred, truth, genes, baselines=baselines)
    knn = [name for name in baselines if name.startswith("knn")]
    summary.update(best_baseline(summary, per_gene, knn, "knn"))
    summary["baseline_knn_k"] = int(summary["baseline_knn_method"].removeprefix("knn"))
    return summary, per_gene


def _heldout_scores(pred: np.ndarray, y: np.ndarray, rc_um: np.ndarray, hidden: np.ndarray,
                    visible: np.ndarray, genes: list[str],
                    others: dict[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """Score predictions of the ``hidden`` spots with the fair score next to inverse-distance kNN
    of the ``visible`` spots (k in :data:`BASELINE_KS`, the better k as the baseline) and any
    ``others`` (name -> prediction, scored on the same genes and spots). Returns the metrics, the
    per-gene table (with the trust columns) and the better kNN's prediction."""
    knn = {f"knn{k}": idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], k)
           for k in BASELINE_KS}
    metrics, per_gene = _score_with_knn(pred, y[hidden], genes, {**knn, **(others or {})})
    trust = gene_trust(per_gene)
    for col in TRUST_COLUMNS[1:]:
        per_gene[col] = trust[col]
    metrics["n_genes_beating_interpolation"] = int(trust["beats_interpolation"].sum())
    return metrics, per_gene, knn[metrics["baseline_knn_method"]]


def trust_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The short per-gene trust summary of a run (``summary.json['trust']``) from held-out
    metrics (:func:`recovery`'s, or an enhance run's internal split)."""
    keys = ("heldout_fraction", "n_hidden", "n_visible", "n_genes_scored",
            "n_genes_beating_interpolation", "n_genes_constant_prediction", "pcc_mean",
            "baseline_knn_pcc_mean", "baseline_knn_k")
    return {k: metrics[k] for k in keys if k in metrics}


def _trust_record(metrics: dict[str, Any], model: str) -> dict[str, Any]:
    """``uns['trihrge']['trust']``: how the per-gene trust columns were measured."""
    return {**trust_summary(metrics), "model": model,
            "score": "per-gene PCC on the held-out spots, a constant prediction counting as 0",
            "baseline": (f"inverse-distance kNN of the training spots, k={metrics['baseline_knn_k']}"
                         f" (the better of k={'/'.join(str(k) for k in BASELINE_KS)})")}


# -------------------------------------------------------------------------------------------
# recovery
# -------------------------------------------------------------------------------------------
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
             config: RunConfig | None = None, progress: Progress | None = None) -> RecoveryResult:
    """Hide ``holdout_fraction`` of the spots at random (``seed``), train on the rest, predict the
    hidden ones and score them (hidden spots only) next to the image-free kNN baseline.

    With ``config.stacking`` (the default) the prediction is the per-gene blend of the candidates
    (:mod:`napari_trihrge.model.stacking`), weighted on out-of-fold predictions of the training spots;
    each candidate is also scored, on the same genes and spots (``baseline_<name>_*``)."""
    cfg = config or RunConfig()
    validate_config(cfg)
    _holdout_split(adata.n_obs, holdout_fraction, seed)  # refused before any work
    progress = ensure_progress(progress)
    timer = _Timer()
    expr = _genes_stage(adata, cfg, timer, progress)
    labels = _annotation_labels(expr, annotation)
    rc_um, _, _ = sample_geometry(expr)
    y = np.asarray(expr.X, dtype=np.float32)
    hidden, visible = _holdout_split(expr.n_obs, holdout_fraction, seed)

    with timer("features"):
        image, encoder = _encoder_and_image(adata, cfg) if cfg.image_input else (None, None)
        feats = _features(image, encoder, rc_um, cfg.windows_um, cfg, progress)
    nb_train = nb_hidden = None
    if cfg.neighbour_input:
        nb_train = idw_interpolate(rc_um[visible], y[visible], rc_um[visible], cfg.n_neighbours,
                                   exclude_self=True)
        nb_hidden = idw_interpolate(rc_um[visible], y[visible], rc_um[hidden], cfg.n_neighbours)
    stacked = None
    with timer("training"):
        if cfg.stacking:
            stacked = _fit_stacked(cfg, feats[visible], y[visible], rc_um[visible], nb_train,
                                   progress)
            fits = stacked.fits
        else:
            fits = _fit(cfg, feats[visible], y[visible], nb_train, progress)
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
    others = {n: v for n, v in parts.items() if n in ("ridge", "network")}
    scores, per_gene, baseline = _heldout_scores(pred, y, rc_um, hidden, visible, genes, others)
    metrics: dict[str, Any] = {
        "heldout_fraction": float(holdout_fraction), "seed": int(seed),
        "n_hidden": int(len(hidden)), "n_visible": int(len(visible)), **scores,
    }
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
    return RecoveryResult(predictions=out, metrics=metrics, per_gene=per_gene,
                          history=[f.history for f in fits], timings_s=timer.timings_s,
                          config=cfg.public_dict(), fits=fits)


# -------------------------------------------------------------------------------------------
# transfer: a whole section from its image alone
# -------------------------------------------------------------------------------------------
@dataclass
class TransferResult(RecoveryResult):
    """As :class:`RecoveryResult`; ``predictions`` holds the target section's spots with
    layers 'measured', 'ridge' (and 'std')."""


def transfer_genes(adatas: Sequence[AnnData], training: Sequence[AnnData], n_top_genes: int,
                   extra_genes: Sequence[str] = ()) -> list[str]:
    """Genes for a cross-section model: highly variable (seurat_v3) over the pooled raw counts
    of the ``training`` sections, among the genes every section in ``adatas`` has."""
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
    return select_genes(pooled, n_top_genes, [g for g in extra_genes if g in common])


def _section_expression(adata: AnnData, genes: list[str]) -> np.ndarray:
    from ..pp import check_counts, normalize_log1p

    check_counts(adata)
    return normalize_log1p(adata, genes=genes)


def transfer(train_adatas: Sequence[AnnData], target: AnnData, *, config: RunConfig | None = None,
             progress: Progress | None = None) -> TransferResult:
    """Train on whole sections (``train_adatas``) and predict every spot of another section
    (``target``) from its image alone; score per-gene PCC / MSE on the target's measured spots.

    The model is image-only (the target's spots are not used as input). Genes: highly variable
    over the pooled training sections among the genes all sections share. Image features are
    standardised per section (``config.train`` cannot change that): stain and scanner differ
    between sections, and a per-section z-score removes that shift before the network sees it.
    Baselines in ``metrics``: the mean training expression (MSE only; its PCC is undefined) and a
    ridge regression on the same features (``baseline_ridge_*``).
    """
    cfg = config or RunConfig()
    validate_config(cfg)
    if not cfg.image_input:
        raise TrihrgeInputError("transfer predicts from the image alone; image_input=False "
                                "leaves it nothing to learn from", "use image_input=True")
    from dataclasses import replace

    cfg = replace(cfg, neighbour_input=False)
    train_adatas = list(train_adatas)
    if not train_adatas:
        raise TrihrgeInputError("no training section given", "pass at least one section")
    progress = ensure_progress(progress)
    timer = _Timer()
    with timer("genes"):
        progress.stage("genes", 1)
        genes = transfer_genes([*train_adatas, target], train_adatas, cfg.n_top_genes,
                               cfg.extra_genes)
        ys = [_section_expression(a, genes) for a in [*train_adatas, target]]
        progress.advance()
    feats = []
    with timer("features"):
        for a in [*train_adatas, target]:
            rc_um, _, _ = sample_geometry(a)
            image, encoder = _encoder_and_image(a, cfg)
            feats.append(_standardise(_features(image, encoder, rc_um, cfg.windows_um, cfg,
                                                progress))[0])
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
    return TransferResult(predictions=out, metrics=metrics, per_gene=per_gene,
                          history=[f.history for f in fits], timings_s=timer.timings_s,
                          config=cfg.public_dict(), fits=fits)


# -------------------------------------------------------------------------------------------
# enhance
# -------------------------------------------------------------------------------------------
@dataclass
class DenseMaps:
    """Per-gene maps on a regular grid: ``values[g, i, j]`` is gene ``g`` at the map pixel centred
    at ``origin_rc_um + (i, j) * stride_um``; NaN outside ``mask`` (no tissue)."""

    values: Any  # (genes, rows, cols) numpy or zarr array
    stride_um: float
    origin_rc_um: np.ndarray
    gene_names: list[str]
    mask: np.ndarray
    std: Any = None  # ensemble spread, same shape, or None

    def gene(self, name: str) -> np.ndarray:
        return np.asarray(self.values[self.gene_names.index(name)])


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


def _sub_spot_offsets(spot_diameter_um: float, max_points: int = 7) -> np.ndarray:
    """Sub-locations of a spot disk for the aggregation loss (row/col um offsets): the centre and
    rings of 6 (at half the radius) and 12 (at 0.85 radius) points, roughly equal areas each."""
    radius_um = spot_diameter_um / 2.0
    pts = [np.zeros(2)]
    for n, frac in ((6, 0.5), (12, 0.85)):
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + (np.pi / n if n == 12 else 0.0)
        pts += list(frac * radius_um * np.stack([np.sin(ang), np.cos(ang)], axis=1))
    return np.asarray(pts[:max_points])


def _enhance_trust(cfg: RunConfig, feats: np.ndarray, y: np.ndarray, rc_um: np.ndarray,
                   nb_input: bool, sub: dict[str, Any], sub_offsets_um: np.ndarray | None,
                   split: tuple[np.ndarray, np.ndarray], genes: list[str], progress: Progress
                   ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Per-gene trust for an enhance run: one model trained like the final one (same inputs,
    same losses; the per-gene blend when ``cfg.stacking``) on the spots of ``split[1]`` only,
    scored on the held-out ``split[0]`` (the blend's candidates too, on the same genes)."""
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
    progress.message(f"per-gene trust: training on {len(visible)} spots, scoring the "
                     f"{len(hidden)} held out")
    from dataclasses import replace

    one = replace(cfg, ensemble=1)
    others: dict[str, np.ndarray] = {}
    if cfg.stacking:
        stacked = _fit_stacked(one, feats[visible], y[visible], rc_um[visible], nb_train,
                               progress, **sub_train)
        pred, _, parts = _stacked_predict(stacked, feats[hidden], nb_hidden, rc_um[hidden], one)
        others = {n: v for n, v in parts.items() if n in ("ridge", "network")}
    else:
        fits = _fit(one, feats[visible], y[visible], nb_train, progress, **sub_train)
        pred, _ = _predict(fits, feats[hidden], nb_hidden, cfg)
    metrics, per_gene, _ = _heldout_scores(pred, y, rc_um, hidden, visible, genes, others)
    metrics = {"heldout_fraction": float(len(hidden) / len(y)), "n_hidden": int(len(hidden)),
               "n_visible": int(len(visible)), **metrics}
    return metrics, per_gene


def _blend_weight_columns(blend, genes: list[str]) -> pd.DataFrame:
    """Each gene's blend weight per candidate (``blend_weight_<name>``), for ``var``."""
    return pd.DataFrame({f"blend_weight_{n}": blend.weights[:, c].astype(np.float32)
                         for c, n in enumerate(blend.names)}, index=pd.Index(genes))


def enhance(adata: AnnData, *, factor: int = 4, stride_um: float | None = None,
            config: RunConfig | None = None, progress: Progress | None = None,
            map_path: str | None = None, map_margin_um: float | None = None,
            trust: bool = True, trust_holdout_fraction: float = TRUST_HOLDOUT_FRACTION
            ) -> EnhanceResult:
    """Predict expression on a ``factor``x denser lattice of virtual spots and, with
    ``stride_um``, as dense sub-spot maps over the tissue (streamed to ``map_path`` as OME-Zarr
    when given, else kept in memory).

    With a dense map the model gets a third, local window (``config.local_window_um``) and is
    trained with the aggregation constraint: the map averaged over each measured spot's disk
    must reproduce that spot (as in iStar), besides the spot-level TriHRGE loss.

    With ``config.stacking`` (the default) every virtual spot and map pixel gets the per-gene
    blend recovery uses (:mod:`napari_trihrge.model.stacking`): inverse-distance kNN of the
    measured spots (k=6 / k=12), the ridge head on the location's image features (and its
    interpolated neighbour expression) and the networks (one per fold), weighted per gene on
    out-of-fold predictions of the measured spots; ``virtual.var`` holds each gene's weights
    (``blend_weight_<candidate>``). At a measured spot kNN returns the measurement itself.
    ``stacking=()``: the network alone.

    Per-gene trust (``trust=True``): before the final model is trained on all spots, one model
    (the blend, with its own out-of-fold weights) is trained the same way on the spots left
    after holding out ``trust_holdout_fraction`` of them (seed ``config.seed``) and scored on
    the held-out spots next to kNN interpolation. The
    result is in ``virtual.var`` (:data:`napari_trihrge.metrics.TRUST_COLUMNS`),
    ``virtual.uns['trihrge']['trust']``, ``metrics['trust']`` and ``trust`` (per-gene table).
    It costs one more training; ``trust=False`` skips it and the outputs then say nothing about
    which genes to trust.
    """
    cfg = config or RunConfig()
    validate_config(cfg)
    if factor < 1 or int(factor) & (int(factor) - 1):
        raise TrihrgeInputError(f"the density factor must be a power of two, got {factor}",
                                "use --factor 2, 4 or 8")
    if stride_um is not None:
        # networks whose spread is mapped next to the values: with the blend, one per fold
        n_networks = cfg.ensemble * (cfg.stacking_folds if "network" in cfg.stacking else 1)
        check_map_size(adata, stride_um, n_genes=min(cfg.n_top_genes, adata.n_vars)
                       + len(cfg.extra_genes), ensemble=n_networks, in_memory=map_path is None)
    progress = ensure_progress(progress)
    timer = _Timer()
    expr = _genes_stage(adata, cfg, timer, progress)
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
            if not grid.mask.any():
                h_um, w_um = grid_image.shape_rc_um
                raise TrihrgeInputError(
                    f"a map with a {stride_um:g} um stride has no pixel inside the tissue near "
                    f"the spots (image {h_um:.0f} x {w_um:.0f} um)",
                    "use a smaller --stride-um (for example 8 or 16)")
        feats = _features(image, encoder, rc_um, windows, cfg, progress,
                          dense=stride_um is not None)
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
                                  dense=stride_um is not None)
        sub["sub_features"] = sub_feats.reshape(len(rc_um), len(offs), *sub_feats.shape[1:])
        sub["sub_mask"] = np.ones((len(rc_um), len(offs)), dtype=bool)
        if cfg.neighbour_input:
            # the spot a sub-location belongs to is left out, as for the spot-level loss;
            # otherwise the aggregation loss is met by copying the spot's own measurement
            sub_nb = idw_interpolate(rc_um, y, sub_rc, cfg.n_neighbours,
                                     exclude_index=np.repeat(np.arange(len(rc_um)), len(offs)))
            sub["sub_neighbour"] = sub_nb.reshape(len(rc_um), len(offs), -1)

    genes = list(expr.var_names)
    trust_metrics = trust_table = None
    if split is not None:
        with timer("trust"):
            trust_metrics, trust_table = _enhance_trust(cfg, feats, y, rc_um, nb is not None, sub,
                                                        offs, split, genes, progress)
    stacked = None
    with timer("training"):
        if cfg.stacking:
            stacked = _fit_stacked(cfg, feats, y, rc_um, nb, progress, **sub)
            fits = stacked.fits
        else:
            fits = _fit(cfg, feats, y, nb, progress, **sub)
    del sub

    # virtual spots (measured spots included: there kNN returns the measurement itself)
    with timer("prediction"):
        pts_rc, parent = geometry.virtual_spot_grid(rc_um, factor, lattice)
        v_feats = _features(image, encoder, pts_rc, windows, cfg, progress,
                            dense=stride_um is not None)
        v_nb = idw_interpolate(rc_um, y, pts_rc, cfg.n_neighbours) if cfg.neighbour_input else None
        if stacked is not None:
            v_pred, v_std, _ = _stacked_predict(stacked, v_feats, v_nb, pts_rc, cfg, progress)
        else:
            v_pred, v_std = _predict(fits, v_feats, v_nb, cfg, progress)
    n_offsets = len(pts_rc) // len(rc_um)
    obs = pd.DataFrame({
        "parent": expr.obs_names[parent].to_numpy(),
        "offset": np.tile(np.arange(n_offsets), len(rc_um)),
        "is_measured": np.tile(np.arange(n_offsets) == 0, len(rc_um)),
    }, index=pd.Index([f"v{i:07d}" for i in range(len(pts_rc))]))
    virtual = AnnData(X=v_pred.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    virtual.obsm["spatial"] = geometry.rc_um_to_xy_px(pts_rc, um_per_px)
    if v_std is not None:
        virtual.layers["std"] = v_std
    virtual.uns["trihrge"] = {**expr.uns.get("trihrge", {}), "task": "enhance",
                              "factor": int(factor), "lattice": lattice.kind,
                              "lattice_spacing_um": lattice.spacing_um,
                              "config": cfg.public_dict()}
    if "spatial" in adata.uns:
        virtual.uns["spatial"] = adata.uns["spatial"]

    metrics: dict[str, Any] = {"n_virtual_spots": int(len(pts_rc)), "factor": int(factor),
                               "lattice": lattice.kind, "lattice_spacing_um": lattice.spacing_um}
    if stacked is not None:
        metrics.update(stacked.blend.summary())
        virtual.var = virtual.var.join(_blend_weight_columns(stacked.blend, genes))
    if trust_table is not None:
        for col in TRUST_COLUMNS:
            virtual.var[col] = trust_table[col].reindex(virtual.var_names).to_numpy()
        if stacked is not None:
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
                                map_path=map_path, genes=genes, grid=grid)
        with timer("consistency"):
            metrics["consistency"] = map_spot_consistency(maps, rc_um, y, spot_diameter_um)
    return EnhanceResult(spots=expr, virtual=virtual, maps=maps, metrics=metrics,
                         history=[f.history for f in fits], timings_s=timer.timings_s,
                         config=cfg.public_dict(), fits=fits, trust=trust_table)


#: bytes of working memory per map-grid pixel (mask, centre coordinates, nearest-spot query)
GRID_BYTES_PER_PX = 40


def check_map_size(adata: AnnData, stride_um: Any, *, n_genes: int, ensemble: int = 1,
                   in_memory: bool = False) -> None:
    """Refuse a dense-map stride that cannot work, before any heavy work: not a positive number,
    finer than the full-resolution pixel, or a grid whose working memory (plus the maps
    themselves when kept in memory) exceeds the memory available, with the size it would need."""
    from ..io.sample import image_extent_px

    if not is_positive_number(stride_um):
        raise TrihrgeInputError(f"the map stride must be a positive number of micrometres, got "
                                f"{stride_um!r}", "pass --stride-um, for example 8 or 16")
    stride_um = float(stride_um)
    um_per_px = float(adata.uns.get("trihrge", {}).get("um_per_px", 0) or 0)
    if um_per_px and stride_um < um_per_px:
        raise TrihrgeInputError(
            f"the map stride {stride_um:g} um is finer than the image's pixel "
            f"({um_per_px:.3g} um)", f"use --stride-um {max(1, int(np.ceil(um_per_px)))} or more")
    extent = image_extent_px(adata)
    if extent is None or not um_per_px:
        return
    (h_px, w_px), _, _ = extent
    n_px = float(np.ceil(h_px * um_per_px / stride_um)) * float(np.ceil(w_px * um_per_px
                                                                        / stride_um))
    need = n_px * GRID_BYTES_PER_PX
    if in_memory:
        need += n_px * n_genes * 4 * (2 if ensemble > 1 else 1)
    available = _available_memory_bytes()
    if available is not None and need > available:
        raise TrihrgeInputError(
            f"a {stride_um:g} um map over the {h_px * um_per_px / 1000:.1f} x "
            f"{w_px * um_per_px / 1000:.1f} mm image has {n_px:.3g} pixels and would need "
            f"{_bytes(need)} of memory ({_bytes(available)} available)",
            "use a larger --stride-um (for example 8 or 16)")


def _available_memory_bytes() -> float | None:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing: ask the OS
        import os

        try:
            return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024.0
    return f"{n:.3g} PiB"


def map_grid(image, rc_um: np.ndarray, stride_um: float, margin_um: float,
             mask_um_per_px: float = 8.0) -> geometry.DenseGrid:
    """The dense-map grid: tissue (from the image) within ``margin_um`` of a measured spot."""
    from scipy.spatial import cKDTree

    from ..tissue import tissue_mask_for

    height_um, width_um = image.shape_rc_um
    mask, mask_um = tissue_mask_for(image, mask_um_per_px=max(mask_um_per_px, image.um_per_px))
    grid = geometry.dense_grid((height_um, width_um), stride_um, mask, mask_um)
    pts = grid.points_rc_um()
    near = cKDTree(rc_um).query(pts, k=1)[0] <= margin_um
    m = grid.mask.copy()
    m[grid.mask] = near
    return geometry.DenseGrid(grid.origin_rc_um, grid.stride_um, m)


def predict_maps(fits: list | StackedModel, image, encoder, rc_um: np.ndarray, y: np.ndarray,
                 windows_um: Sequence[float], stride_um: float, cfg: RunConfig, *,
                 genes: list[str], progress: Progress | None = None, map_path: str | None = None,
                 margin_um: float | None = None, band_rows: int = 32,
                 grid: geometry.DenseGrid | None = None) -> DenseMaps:
    """Dense maps, streamed band of map rows by band: each band's locations are embedded and
    predicted for all genes, then written into a (genes, rows, cols) array chunked by genes, so
    memory holds one band at a time, never genes x all map pixels. ``fits``: the network fits,
    or a :class:`StackedModel` (every map pixel then gets the per-gene blend of kNN of the
    measured spots ``rc_um``/``y``, the ridge head and the networks, as recovery's hidden spots
    do). ``grid``: the map grid when the caller already has it (:func:`map_grid`), else it is
    made here."""
    progress = ensure_progress(progress)
    if grid is None:
        margin_um = margin_um if margin_um is not None else geometry.spot_spacing_um(rc_um)
        grid = map_grid(image, rc_um, stride_um, margin_um)
    n_rows, n_cols = grid.shape
    n_genes = len(genes)
    gene_chunk = min(32, n_genes)
    if isinstance(fits, StackedModel):
        with_std = len(fits.fits) > 1 and "network" in fits.blend.names
    else:
        with_std = len(fits) > 1
    if map_path is not None:
        from ..io.writers import open_ome_zarr_map

        zarr_kw = dict(chunks=(gene_chunk, band_rows, n_cols), um_per_px=stride_um,
                       gene_names=genes, origin_rc_um=grid.origin_rc_um, fill_value=np.nan)
        values = open_ome_zarr_map(map_path, (n_genes, n_rows, n_cols), **zarr_kw)
        std = (open_ome_zarr_map(str(map_path).replace(".ome.zarr", "") + "_std.ome.zarr",
                                 (n_genes, n_rows, n_cols), **zarr_kw) if with_std else None)
    else:
        values = np.full((n_genes, n_rows, n_cols), np.nan, dtype=np.float32)
        std = np.full_like(values, np.nan) if with_std else None
    n_bands = int(np.ceil(n_rows / band_rows))
    progress.stage("maps", total=n_bands)
    try:
        _predict_map_bands(fits, image, encoder, rc_um, y, windows_um, grid, cfg, values, std,
                           band_rows, progress)
    except BaseException:
        for store in (values, std):
            if hasattr(store, "abort"):
                store.abort()
        raise
    for store in (values, std):
        if hasattr(store, "finalize"):
            store.finalize()
    return DenseMaps(values=values, stride_um=float(stride_um), origin_rc_um=grid.origin_rc_um,
                     gene_names=list(genes), mask=grid.mask, std=std)


#: map locations embedded in one pass: the encoder's per-call cost (e.g. filtering the image for
#: the default encoder) is paid once per this many locations, not once per band of 32 rows
FEATURE_BLOCK_LOCATIONS = 250_000
#: map locations whose blend candidates (kNN k=6/12, ridge, networks; each locations x genes) are
#: held at once
BLEND_BLOCK_LOCATIONS = 4096


def _predict_map_bands(fits, image, encoder, rc_um, y, windows_um, grid, cfg, values, std,
                       band_rows, progress) -> None:
    """Embed blocks of many map rows at once, then predict and write them 32 rows at a time
    (all genes), so features cost one encoder pass per block and predictions stay bounded
    (a blend: :data:`BLEND_BLOCK_LOCATIONS` locations at a time)."""
    from ..model.predict import predict_ensemble

    n_genes = values.shape[0]
    n_rows, n_cols = grid.shape
    with_std = std is not None
    rows_per_block = band_rows * max(1, FEATURE_BLOCK_LOCATIONS // max(1, band_rows * n_cols))
    for b0 in range(0, n_rows, rows_per_block):
        b1 = min(n_rows, b0 + rows_per_block)
        ii, jj = np.nonzero(grid.mask[b0:b1])
        ii += b0
        pts = grid.origin_rc_um + np.stack([ii, jj], axis=1) * grid.stride_um
        feats = (_features(image, encoder, pts, windows_um, cfg, Progress(), dense=True,
                           cache=False) if len(pts) else None)
        for r0 in range(b0, b1, band_rows):
            r1 = min(b1, r0 + band_rows)
            band_vals = np.full((n_genes, r1 - r0, n_cols), np.nan, dtype=np.float32)
            band_std = np.full_like(band_vals, np.nan) if with_std else None
            sel = np.flatnonzero((ii >= r0) & (ii < r1))
            if len(sel):
                nb = (idw_interpolate(rc_um, y, pts[sel], cfg.n_neighbours)
                      if cfg.neighbour_input else None)
                if isinstance(fits, StackedModel):
                    for c0 in range(0, len(sel), BLEND_BLOCK_LOCATIONS):
                        part = sel[c0:c0 + BLEND_BLOCK_LOCATIONS]
                        mean, sd, _ = _stacked_predict(
                            fits, feats[part], None if nb is None else nb[c0:c0 + len(part)],
                            pts[part], cfg)
                        band_vals[:, ii[part] - r0, jj[part]] = mean.T
                        if with_std:
                            band_std[:, ii[part] - r0, jj[part]] = sd.T
                else:
                    with cpu_threads(cfg.threads):
                        mean, sd = predict_ensemble([f.model for f in fits], feats[sel], nb,
                                                    device=cfg.device)
                    band_vals[:, ii[sel] - r0, jj[sel]] = mean.T
                    if with_std:
                        band_std[:, ii[sel] - r0, jj[sel]] = sd.T
            values[:, r0:r1, :] = band_vals
            if with_std:
                std[:, r0:r1, :] = band_std
            progress.advance()


def map_spot_consistency(maps: DenseMaps, rc_um: np.ndarray, y: np.ndarray,
                         spot_diameter_um: float) -> dict[str, float]:
    """How well the dense map, averaged over each measured spot's disk, reproduces the measured
    spots: mean per-gene PCC (and MSE) between the two, over the spots the map covers."""
    from ..metrics import per_gene_pcc

    offs = geometry.disk_offsets_um(spot_diameter_um, maps.stride_um)
    idx = np.rint((rc_um[:, None, :] + offs[None] - maps.origin_rc_um) / maps.stride_um).astype(int)
    n_rows, n_cols = maps.mask.shape
    inside = ((idx[..., 0] >= 0) & (idx[..., 0] < n_rows) & (idx[..., 1] >= 0)
              & (idx[..., 1] < n_cols))
    idx = np.clip(idx, 0, [n_rows - 1, n_cols - 1])
    valid = inside & maps.mask[idx[..., 0], idx[..., 1]]
    covered = valid.mean(axis=1) >= 0.5
    if covered.sum() < 3:
        return {"pcc_mean": float("nan"), "mse": float("nan"), "n_spots": int(covered.sum())}
    agg = np.zeros((int(covered.sum()), len(maps.gene_names)), dtype=np.float64)
    rows, cols, ok = idx[covered, :, 0], idx[covered, :, 1], valid[covered]
    for g0 in range(0, len(maps.gene_names), 64):
        block = np.asarray(maps.values[g0:g0 + 64])  # (g, rows, cols)
        vals = block[:, rows, cols]  # (g, spots, k)
        vals = np.where(ok[None], vals, 0.0)
        agg[:, g0:g0 + 64] = (vals.sum(axis=2) / ok.sum(axis=1)[None]).T
    pcc = per_gene_pcc(agg, y[covered])
    return {"pcc_mean": float(np.nanmean(pcc)), "mse": float(((agg - y[covered]) ** 2).mean()),
            "n_spots": int(covered.sum())}


def __getattr__(name: str):
    # tl.train / tl.predict live in inference.py (which imports this module)
    if name in ("train", "predict"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RunConfig",
    "MODEL_PRESETS",
    "BASELINE_KS",
    "TRUST_HOLDOUT_FRACTION",
    "StackedModel",
    "STACKING_CANDIDATES",
    "validate_config",
    "check_map_size",
    "trust_summary",
    "RecoveryResult",
    "TransferResult",
    "EnhanceResult",
    "DenseMaps",
    "recovery",
    "transfer",
    "enhance",
    "train",  # noqa: F822 (lazy, see __getattr__)
    "predict",  # noqa: F822
    "transfer_genes",
    "sample_geometry",
    "model_preset",
    "map_grid",
    "predict_maps",
    "map_spot_consistency",
    "check_writable_folder",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
