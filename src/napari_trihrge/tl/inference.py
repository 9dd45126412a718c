"""Train once, apply anywhere: ``tl.train`` and ``tl.predict`` (and the run folders of
``trihrge train`` / ``trihrge predict``).

:func:`train` fits one model on one or several sections: genes are highly variable over the
pooled sections among the genes they share (as :func:`~napari_trihrge.tl.transfer`), image
features come from the encoder's dense path with a local window (so the same model gives spot
predictions and dense maps), each section's features are standardised over its own spots, and the
sub-spot aggregation loss of ``enhance`` keeps a dense map consistent with the spots. A fraction of
each section's spots (``trust_fraction``) is held out of training and scored with the fair score
against inverse-distance kNN: these are the model's per-section and per-gene trust figures.

:func:`predict` applies a saved model to a sample with spots (its measured spots keep their
barcodes; the predictions there are scored against the measurement; a model with neighbour
input gets the target's own spots, leave-one-out at measured spots) or to a bare H&E image (an
image-only model; virtual spots on a lattice over the tissue mask and a dense map). It returns an
:class:`~napari_trihrge.tl.EnhanceResult`, written by :func:`run_predict` as the same run
folder as ``enhance``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import geometry
from ..errors import TrihrgeInputError
from ..io.model_folder import (
    DESCRIPTION_KIND,
    DESCRIPTION_VERSION,
    NORMALISATION,
    TRUST_COLUMNS,
    TrainedModel,
    check_description,
    check_encoder,
    load_model_folder,
    package_version,
)
from ..io.outputs import _jsonable
from ..metrics import gene_trust
from ..neighbours import idw_interpolate
from ..progress import Progress, ensure_progress
from ._config import BASELINE_KS, RunConfig
from ._enhance import EnhanceResult, _sub_spot_offsets
from ._maps import map_spot_consistency, predict_maps
from ._shared import (
    _create_encoder,
    _features,
    _fit,
    _lattice_kind,
    _predict,
    _score_with_knn,
    _standardise,
    _Timer,
    sample_geometry,
)
from ._transfer import transfer_genes

#: files a bare H&E image target may be (anything else is read as a sample)
IMAGE_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".ndpi", ".scn", ".qptiff", ".jpg", ".jpeg",
                  ".png")
#: map stride used for a bare image when none is given (um)
DEFAULT_IMAGE_STRIDE_UM = 16.0


# -------------------------------------------------------------------------------------------
# shared helpers
# -------------------------------------------------------------------------------------------
def _section_name(adata: AnnData, i: int) -> str:
    return str(adata.uns.get("trihrge", {}).get("sample", f"section{i}"))


def _section_names(adatas: Sequence[AnnData]) -> list[str]:
    """One distinct name per training section: its sample name, or where sections share one
    (two synthetic samples, two files of one slide), the file or folder each was read from,
    else the name with the section's number."""
    names = [_section_name(a, i) for i, a in enumerate(adatas)]
    out = []
    for i, (a, name) in enumerate(zip(adatas, names, strict=True)):
        if names.count(name) > 1:
            source = a.uns.get("trihrge", {}).get("source")
            name = Path(str(source)).name if source else f"{name} #{i + 1}"
        out.append(name)
    return [n if out.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(out)]


def _nonzero_spots(adata: AnnData) -> AnnData:
    from ..pp import check_counts

    check_counts(adata)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    return adata[totals > 0].copy() if (totals <= 0).any() else adata


def _log_expression(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Log-normalised expression (normalised over all of the section's genes) of ``genes``;
    genes the section lacks are NaN columns."""
    from ..pp import normalize_log1p

    logn = normalize_log1p(adata, NORMALISATION["target_sum"])
    idx = adata.var_names.get_indexer(list(genes))
    out = np.full((adata.n_obs, len(idx)), np.nan, dtype=np.float32)
    out[:, idx >= 0] = logn[:, idx[idx >= 0]]
    return out


def _knn_baselines(rc_src: np.ndarray, y_src: np.ndarray, rc_dst: np.ndarray, *,
                   exclude_self: bool = False) -> dict[str, np.ndarray]:
    return {f"knn{k}": idw_interpolate(rc_src, y_src, rc_dst, k, exclude_self=exclude_self)
            for k in BASELINE_KS}


def _trust_columns(per_gene: pd.DataFrame, genes: Sequence[str]) -> pd.DataFrame:
    """The per-gene trust contract (:func:`~napari_trihrge.metrics.gene_trust`) for ``genes``;
    a gene that was not scored does not beat interpolation."""
    t = gene_trust(per_gene).reindex(pd.Index(list(genes), name="gene"))
    beats = t["beats_interpolation"]
    t["beats_interpolation"] = beats.where(beats.notna(), False).astype(bool)
    return t


# -------------------------------------------------------------------------------------------
# train
# -------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """``model`` (a :class:`TrainedModel`, ``model.save(path)``), per-section held-out scores in
    ``metrics['sections']``, the per-gene trust table, the training record."""

    model: TrainedModel
    metrics: dict[str, Any]
    per_gene: pd.DataFrame
    history: list[list[dict]]
    timings_s: dict[str, float]
    config: dict[str, Any]
    fits: list = field(default_factory=list, repr=False)


def _trust_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_hidden = int(round(n * fraction)) if fraction > 0 else 0
    if n_hidden and n - n_hidden < 10:
        n_hidden = 0
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_hidden]), np.sort(perm[n_hidden:])


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
    if image_only:
        cfg = dataclasses.replace(cfg, neighbour_input=False)
    if not cfg.image_input:
        raise TrihrgeInputError("a trained model for other sections needs the image "
                                "(image_input=False leaves only the neighbour input)",
                                "leave the image input on (drop --no-image)")
    if not 0.0 <= trust_fraction < 0.9:
        raise TrihrgeInputError(f"trust_fraction must be in [0, 0.9), got {trust_fraction}",
                                "use for example 0.1")
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    if not adatas:
        raise TrihrgeInputError("no training section given", "pass at least one section")
    for a in adatas:
        sample_geometry(a)  # pixel size present: fail before any heavy work
    progress = ensure_progress(progress)
    timer = _Timer()
    sections = [_nonzero_spots(a) for a in adatas]
    names = _section_names(sections)
    with timer("genes"):
        progress.stage("genes", 1)
        genes = transfer_genes(sections, sections, cfg.n_top_genes, cfg.extra_genes)
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
        hidden, visible = _trust_split(len(y), trust_fraction, cfg.seed + i)
        if lattice is None:
            lattice = geometry.detect_lattice(rc_um, kind=_lattice_kind(a))
            lattice_diameter_um = diameter_um
        with timer("features"):
            image = get_image(a)
            z, mu, sd = _standardise(_features(image, encoder, rc_um, windows, cfg, progress,
                                               dense=True))
            offs = _sub_spot_offsets(diameter_um)
            # every spot's sub-locations (one cache entry per section, whatever the split)
            sub_all = (rc_um[:, None, :] + offs[None]).reshape(-1, 2)
            sub = _features(image, encoder, sub_all, windows, cfg, progress, dense=True)
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

    # held-out trust: per section and pooled per gene
    sections_out: list[dict[str, Any]] = []
    pooled: dict[str, list] = {"pred": [], "y": [], "knn6": [], "knn12": []}
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
                summary, _ = _score_with_knn(pred, y[hid], genes, base)
                entry["scores"] = summary
                pooled["pred"].append(pred)
                pooled["y"].append(y[hid])
                for k in BASELINE_KS:
                    pooled[f"knn{k}"].append(base[f"knn{k}"])
            sections_out.append(entry)
    gene_table = pd.DataFrame({"train_mean": train_mean}, index=pd.Index(genes, name="gene"))
    metrics: dict[str, Any] = {"sections": sections_out, "n_train_spots": int(len(y_train)),
                               "trust_fraction": float(trust_fraction)}
    per_gene = pd.DataFrame(index=pd.Index(genes, name="gene"))
    if pooled["pred"]:
        base = {f"knn{k}": np.concatenate(pooled[f"knn{k}"]) for k in BASELINE_KS}
        summary, per_gene = _score_with_knn(np.concatenate(pooled["pred"]),
                                        np.concatenate(pooled["y"]), genes, base)
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
                           "k=6/12"} if pooled["pred"] else None)
    model = TrainedModel(nets=[f.model for f in fits], description=description,
                         gene_table=gene_table)
    return TrainResult(model=model, metrics=metrics, per_gene=per_gene,
                       history=[f.history for f in fits], timings_s=timer.timings_s,
                       config=cfg.public_dict(), fits=fits)


def describe(cfg: RunConfig, *, task: str, encoder=None, genes: Sequence[str],
             feature_mode: str, local_window_um: float | None, standardisation: str,
             lattice: geometry.Lattice | None = None, spot_diameter_um: float | None = None,
             training_sections: list[dict[str, Any]] | None = None,
             trust: dict[str, Any] | None = None) -> dict[str, Any]:
    """The description stored with a model folder (see :mod:`napari_trihrge.io.model_folder`).
    ``encoder`` (the instance used) adds its ``config_key`` and width."""
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
    """Write the model of a recovery or enhance run as a described model folder: raw features
    ('none' standardisation; whole windows, or the dense path with the local window when the
    enhance run made maps), the run's held-out scores where it has them."""
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


# -------------------------------------------------------------------------------------------
# predict
# -------------------------------------------------------------------------------------------
def is_image_path(path: Any) -> bool:
    """Whether ``path`` names a bare image file (by its suffix)."""
    return isinstance(path, (str, Path)) and str(path).lower().endswith(IMAGE_SUFFIXES) and \
        not Path(path).is_dir()


def image_target(path: str | Path, um_per_px: float | None = None) -> AnnData:
    """A bare H&E image as a sample without spots (``n_obs == 0``), so that the readers'
    contract (``uns['trihrge']``, :func:`napari_trihrge.io.get_image`) holds. The pixel size comes
    from ``um_per_px`` or the file's OME/TIFF/SVS metadata."""
    from ..io.image import image_size_px, pixel_size_from_metadata

    path = Path(path)
    image_size_px(path)  # exists and readable
    if um_per_px is None:
        um_per_px = pixel_size_from_metadata(path)
        if um_per_px is None:
            raise TrihrgeInputError(f"the pixel size of {path.name} is not in the file",
                                    "pass it with --um-per-px (micrometres per pixel; about "
                                    "0.25 at 40x, 0.5 at 20x)")
    um_per_px = geometry.validate_um_per_px(float(um_per_px), what=f"of {path.name}")
    ad = AnnData(X=np.zeros((0, 0), dtype=np.float32))
    ad.obsm["spatial"] = np.zeros((0, 2))
    ad.uns["trihrge"] = {"sample": path.name.split(".")[0], "platform": "image",
                         "um_per_px": um_per_px, "source": str(path),
                         "fullres_image_path": str(path.resolve())}
    return ad


def _tissue_lattice(image, lattice: dict[str, Any]) -> np.ndarray:
    """Points of the training lattice (spacing and orientation) inside the tissue mask of
    ``image``: where a spot would be if the slide had been sequenced."""
    from ..tissue import tissue_mask_for

    basis = np.asarray(lattice["basis_rc_um"], dtype=np.float64)
    spacing = float(lattice["spacing_um"])
    h_um, w_um = image.shape_rc_um
    mask, mask_um = tissue_mask_for(image, mask_um_per_px=max(8.0, image.um_per_px))
    reach = int(np.ceil(2.0 * max(h_um, w_um) / spacing)) + 2
    ij = np.arange(-reach, reach + 1)
    ii, jj = np.meshgrid(ij, ij, indexing="ij")
    origin = np.array([h_um / 2.0, w_um / 2.0])
    pts = origin + ii.reshape(-1, 1) * basis[0] + jj.reshape(-1, 1) * basis[1]
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < h_um) & (pts[:, 1] >= 0) & (pts[:, 1] < w_um)
    pts = pts[inside]
    px = np.clip((pts / mask_um).astype(int), 0, np.array(mask.shape) - 1)
    pts = pts[mask[px[:, 0], px[:, 1]]]
    if len(pts) < 2:
        raise TrihrgeInputError("no tissue found in the image (the tissue mask is empty)",
                                "check that the file is an H&E image and its pixel size")
    return pts[np.lexsort((pts[:, 1], pts[:, 0]))]


def _predict_config(model: TrainedModel, *, device: str, cache_dir: str | None,
                    hf_token: str | None) -> RunConfig:
    d = model.description
    feats = d["features"]
    return RunConfig(encoder=d["encoder"]["name"],
                     encoder_architecture=d["encoder"].get("architecture"), hf_token=hf_token,
                     windows_um=tuple(feats["windows_um"]),
                     local_window_um=float(feats.get("local_window_um") or 24.0),
                     neighbour_input=bool(d["neighbour_input"]),
                     image_input=bool(d.get("image_input", True)),
                     n_neighbours=int(d.get("n_neighbours", 12)), ensemble=len(model.nets),
                     device=device, cache_dir=cache_dir)


@dataclass
class PredictResult(EnhanceResult):
    """As :class:`~napari_trihrge.tl.EnhanceResult`; ``per_gene``: the fair per-gene scores at
    the target's measured spots (None for a bare image)."""

    per_gene: pd.DataFrame | None = None


def _as_target(target: AnnData | str | Path, um_per_px: float | None) -> AnnData:
    """A prediction target as AnnData: a sample as is, a bare H&E image as a sample without
    spots (:func:`image_target`), a path of any supported layout read with ``io.read``."""
    if isinstance(target, AnnData):
        return target
    if is_image_path(target):
        return image_target(target, um_per_px)
    from ..io import read

    return read(target, **({"um_per_px": um_per_px} if um_per_px else {}))


def predict(model: TrainedModel | str | Path, target: AnnData | str | Path, *,
            factor: int = geometry.DEFAULT_DENSITY_FACTOR,
            stride_um: float | None = None, um_per_px: float | None = None,
            encoder: str | None = None, windows_um: Sequence[float] | None = None,
            device: str = "auto", cache_dir: str | None = None, hf_token: str | None = None,
            progress: Progress | None = None, map_path: str | None = None,
            reference: str = "auto") -> PredictResult:
    """Apply a trained model to ``target``: a sample (AnnData or any path :func:`io.read`
    takes) or a bare H&E image file (``um_per_px`` or read from the file's metadata).

    Returns an :class:`~napari_trihrge.tl.EnhanceResult`: ``virtual`` holds the
    ``factor``-x denser virtual spots (with spots: measured spots keep their barcodes as
    ``obs_names``, ``obs['parent']`` and ``obs['is_measured']`` as in enhance; without spots: a
    lattice over the tissue), ``maps`` the dense map at ``stride_um`` (a bare image always gets
    one, 16 um unless given), ``metrics['spots']`` the fair score at the measured spots next to
    the kNN (leave-one-out) and training-mean baselines. ``encoder`` / ``windows_um`` only check
    that the model fits them. ``reference`` chooses the locations a section's feature
    statistics come from: 'auto' (the measured spots, or a spot-spaced lattice inside the tissue
    for a bare image) or 'tissue' (the lattice even when there are spots, as for a bare slide).
    """
    factor = geometry.validate_density_factor(factor)  # before loading anything
    progress = ensure_progress(progress)
    timer = _Timer()
    if not isinstance(model, TrainedModel):
        model = load_model_folder(model, encoder=encoder,
                                  windows_um=tuple(windows_um) if windows_um else None)
    else:
        check_description(model.description, encoder=encoder,
                          windows_um=tuple(windows_um) if windows_um else None)
    adata = _as_target(target, um_per_px)
    bare = adata.n_obs == 0
    if bare and not model.image_only:
        raise TrihrgeInputError(
            "this model uses the expression of measured spots as input, and the target has no "
            "spots", "train an image-only model (trihrge train --image-only) for H&E slides "
            "without spatial transcriptomics")
    if bare and stride_um is None:
        stride_um = DEFAULT_IMAGE_STRIDE_UM
    if stride_um is not None and not model.dense:
        raise TrihrgeInputError(
            "this model was trained on whole-window features, not the dense path a map needs "
            "(a recovery run, or enhance without --stride-um)",
            "leave --stride-um out, or use a model from `trihrge train` or enhance --stride-um")
    if reference not in ("auto", "tissue"):
        raise TrihrgeInputError(f"unknown reference {reference!r}", "use 'auto' or 'tissue'")
    genes = model.genes
    cfg = _predict_config(model, device=device, cache_dir=cache_dir, hf_token=hf_token)

    rc_um = y = None
    if not bare:
        adata = _nonzero_spots(adata)
        rc_um, _, diameter_um = sample_geometry(adata)
        y = _log_expression(adata, genes)
        present = ~np.isnan(y).any(axis=0)
        if not present.any():
            raise TrihrgeInputError("the target measures none of the model's genes",
                                    "check that the model was trained on the same kind of "
                                    "tissue and gene panel")
        if model.description["neighbour_input"] and not present.all():
            missing = [g for g, p in zip(genes, present, strict=True) if not p]
            raise TrihrgeInputError(
                f"the target lacks {len(missing)} of the model's {len(genes)} genes (e.g. "
                f"{', '.join(missing[:5])}), which the neighbour input needs",
                "use an image-only model (trihrge train --image-only) or a target measured on "
                "the same gene panel")
    um_per_px = float(adata.uns["trihrge"]["um_per_px"])
    with timer("features"):
        from ..io import get_image

        image = get_image(adata)
        enc = _create_encoder(cfg)
        check_encoder(model.description, enc)
    windows = model.bag_windows_um
    dense = model.dense

    # the section's feature statistics, then the nets adapted to them
    with timer("features"):
        if bare:
            ref_rc = _tissue_lattice(image, model.description["lattice"])
            lattice = geometry.Lattice(kind=model.description["lattice"]["kind"],
                                       spacing_um=float(model.description["lattice"]["spacing_um"]),
                                       basis_rc_um=np.asarray(
                                           model.description["lattice"]["basis_rc_um"]))
        else:
            ref_rc = rc_um
            lattice = geometry.detect_lattice(rc_um, kind=_lattice_kind(adata))
        pts_rc, parent = geometry.virtual_spot_grid(ref_rc, factor, lattice)
        v_feats = _features(image, enc, pts_rc, windows, cfg, progress, dense=dense)
        n_off = len(pts_rc) // len(ref_rc)
        ref_feats = v_feats[::n_off]  # offset 0 of every cell: the spots / the tissue lattice
        mu = sd = None
        if model.per_section:
            if reference == "tissue" and not bare:
                ref_feats = _features(image, enc,
                                      _tissue_lattice(image, model.description["lattice"]),
                                      windows, cfg,
                                      progress, dense=dense)
            _, mu, sd = _standardise(ref_feats)
    nets = model.for_section(mu, sd)
    fits = [SimpleNamespace(model=n) for n in nets]

    with timer("prediction"):
        v_nb = None
        if cfg.neighbour_input:
            v_nb = idw_interpolate(rc_um, y, pts_rc, cfg.n_neighbours)
            # at a measured spot the spot's own measurement is left out (leave-one-out), so the
            # score there says what the model adds to the other spots
            v_nb[::n_off] = idw_interpolate(rc_um, y, rc_um, cfg.n_neighbours, exclude_self=True)
        v_pred, v_std = _predict(fits, v_feats, v_nb, cfg, progress)
    offset = np.tile(np.arange(n_off), len(ref_rc))
    is_measured = (offset == 0) & (not bare)
    names = np.array([f"v{i:07d}" for i in range(len(pts_rc))], dtype=object)
    if bare:
        parent_names = np.full(len(pts_rc), "", dtype=object)
    else:
        parent_names = adata.obs_names.to_numpy()[parent]
        names[is_measured] = adata.obs_names.to_numpy()
    obs = pd.DataFrame({"parent": parent_names, "offset": offset, "is_measured": is_measured},
                       index=pd.Index(names.astype(str)))
    virtual = AnnData(X=v_pred.astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=pd.Index(genes)))
    virtual.obsm["spatial"] = geometry.rc_um_to_xy_px(pts_rc, um_per_px)
    if v_std is not None:
        virtual.layers["std"] = v_std
    if "spatial" in adata.uns:
        virtual.uns["spatial"] = adata.uns["spatial"]

    metrics: dict[str, Any] = {"n_virtual_spots": int(len(pts_rc)), "factor": int(factor),
                               "lattice": lattice.kind, "lattice_spacing_um": lattice.spacing_um,
                               "target": "image" if bare else "spots",
                               "standardisation_locations": (
                                   "none" if not model.per_section else
                                   "tissue lattice" if bare or reference == "tissue"
                                   else "measured spots")}
    trust_table = model.gene_table.reindex(genes)
    per_gene = None
    trust_source = "model: spots held out of training in the training sections"
    if not bare:
        present = ~np.isnan(y).any(axis=0)
        scored = [g for g, p in zip(genes, present, strict=True) if p]
        y_s = y[:, present]
        pred_s = v_pred[::n_off][:, present]
        base = _knn_baselines(rc_um, y_s, rc_um, exclude_self=True)
        if "train_mean" in model.gene_table:
            tm = model.gene_table["train_mean"].reindex(scored).to_numpy(dtype=np.float32)
            base["train_mean"] = np.broadcast_to(tm, pred_s.shape)
        summary, per_gene = _score_with_knn(pred_s, y_s, scored, base)
        summary["n_spots"] = int(len(y_s))
        summary["n_model_genes_missing_in_target"] = int((~present).sum())
        metrics["spots"] = summary
        trust_table = _trust_columns(per_gene, genes)
        trust_source = "target: its measured spots, leave-one-out kNN as the baseline"
    for col in TRUST_COLUMNS:
        if col in trust_table:
            virtual.var[col] = trust_table[col].to_numpy()
    if "beats_interpolation" in virtual.var:
        virtual.var["beats_interpolation"] = virtual.var["beats_interpolation"].fillna(
            False).astype(bool)
    meta = dict(adata.uns.get("trihrge", {}))
    virtual.uns["trihrge"] = {
        **meta, "task": "predict", "factor": int(factor), "lattice": lattice.kind,
        "lattice_spacing_um": lattice.spacing_um, "config": cfg.public_dict(),
        "model": {"path": str(model.path) if model.path else None,
                  "training_sections": [s.get("name") for s in
                                        model.description.get("training_sections", [])],
                  "image_only": model.image_only},
        "trust": ({"source": trust_source, "heldout_fraction": 1.0,
                   "n_spots": int(metrics["spots"]["n_spots"]),
                   "baseline": "inverse-distance kNN of the other measured spots "
                               "(leave-one-out), better of k=6/12",
                   "model_trust": model.description.get("trust")} if "spots" in metrics else
                  {"source": trust_source, **(model.description.get("trust") or {})})}

    maps = None
    if stride_um is not None:
        with timer("maps"):
            maps = predict_maps(fits, image, enc, ref_rc, y, windows, float(stride_um), cfg,
                                genes=genes, progress=progress, map_path=map_path,
                                margin_um=float("inf") if bare else None)
        if not bare and not np.isnan(y).any():
            with timer("consistency"):
                metrics["consistency"] = map_spot_consistency(maps, rc_um, y, diameter_um)
    spots = _spots_adata(adata, genes, y)
    return PredictResult(spots=spots, virtual=virtual, maps=maps, metrics=metrics, history=[],
                         timings_s=timer.timings_s, config=cfg.public_dict(), fits=[],
                         per_gene=per_gene)


def _spots_adata(adata: AnnData, genes: list[str], y: np.ndarray | None) -> AnnData:
    """The target's measured spots (X log-normalised, the model's genes; NaN for genes it lacks)
    or an empty AnnData for a bare image, with the spatial metadata."""
    n = adata.n_obs
    out = AnnData(X=(y if y is not None else np.zeros((0, len(genes)), np.float32)),
                  obs=adata.obs.copy() if n else None, var=pd.DataFrame(index=pd.Index(genes)))
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64).reshape(n, 2)
    out.uns["trihrge"] = dict(adata.uns.get("trihrge", {}))
    if "spatial" in adata.uns:
        out.uns["spatial"] = adata.uns["spatial"]
    return out


# -------------------------------------------------------------------------------------------
# run folders (CLI, viewer)
# -------------------------------------------------------------------------------------------


__all__ = ["train", "predict", "TrainResult", "TrainedModel",
           "PredictResult", "describe", "image_target", "is_image_path"]
