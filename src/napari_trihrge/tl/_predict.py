"""``tl.predict``: a saved model applied to a sample or a bare H&E image (``trihrge predict``).

:func:`predict` applies a saved model to a sample with spots (its measured spots keep their
barcodes; the predictions there are scored against the measurement; a model with neighbour
input gets the target's own spots, leave-one-out at measured spots) or to a bare H&E image (an
image-only model; virtual spots on a lattice over the tissue mask and a dense map). It returns a
:class:`PredictResult` (an :class:`~napari_trihrge.tl.EnhanceResult` with the per-gene scores),
written by :func:`napari_trihrge.workflows.runs.run_predict` as the same run folder as
``enhance``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import geometry
from .._checks import check_adata, check_declared_pixel_size
from ..errors import TrihrgeInputError
from ..io.model_folder import TrainedModel, check_encoder
from ..metrics import TRUST_COLUMNS
from ..neighbours import idw_interpolate
from ..progress import Progress, ensure_progress
from ._config import check_neighbour_images
from ._enhance import EnhanceResult
from ._maps import check_map_grid, check_map_size, map_grid, map_spot_consistency, predict_maps
from ._model_io import prediction_config, ready_model
from ._shared import (
    NeighbourImages,
    _create_encoder,
    _features,
    _knn_baselines,
    _lattice_kind,
    _log_expression,
    _nonzero_spots,
    _predict,
    _score_with_knn,
    _standardise,
    _Timer,
    _trust_columns,
    _virtual_spots,
    sample_geometry,
)

#: files a bare H&E image target may be (anything else is read as a sample)
IMAGE_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".ndpi", ".scn", ".qptiff", ".jpg", ".jpeg",
                  ".png")
#: map stride used for a bare image when none is given (um)
DEFAULT_IMAGE_STRIDE_UM = 16.0


def is_image_path(path: Any) -> bool:
    """Whether ``path`` names a bare image file (by its suffix)."""
    return isinstance(path, (str, Path)) and str(path).lower().endswith(IMAGE_SUFFIXES) and \
        not Path(path).is_dir()


def image_target(path: str | Path, um_per_px: float | None = None) -> AnnData:
    """Read a bare H&E image as a sample without spots (``n_obs == 0``).

    The readers' contract (``uns['trihrge']``, :func:`napari_trihrge.io.get_image`) holds. The pixel
    size comes from ``um_per_px`` or the file's OME/TIFF/SVS metadata.
    """
    from ..io.image import image_size_px, pixel_size_from_metadata

    path = Path(path)
    image_size_px(path)  # exists and readable
    from_metadata = pixel_size_from_metadata(path)
    source = "given" if um_per_px is not None else "metadata"
    if um_per_px is None:
        um_per_px = from_metadata
        if um_per_px is None:
            raise TrihrgeInputError(f"the pixel size of {path.name} is not in the file",
                                    "pass it with --um-per-px (micrometres per pixel; about "
                                    "0.25 at 40x, 0.5 at 20x)")
    um_per_px = geometry.validate_um_per_px(float(um_per_px), what=f"of {path.name}")
    ad = AnnData(X=np.zeros((0, 0), dtype=np.float32))
    ad.obsm["spatial"] = np.zeros((0, 2))
    ad.uns["trihrge"] = {"sample": path.name.split(".")[0], "platform": "image",
                         "um_per_px": um_per_px, "source": str(path),
                         "fullres_image_path": str(path.resolve()), "um_per_px_source": source,
                         "um_per_px_estimates": {} if from_metadata is None else
                         {"metadata": float(from_metadata)}}
    return ad


def _tissue_lattice(image, lattice: dict[str, Any]) -> np.ndarray:
    """Return the points of the training lattice inside the tissue mask of ``image``.

    The lattice has the training spacing and orientation: where a spot would be if the slide had
    been sequenced.
    """
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


@dataclass
class PredictResult(EnhanceResult):
    """As :class:`~napari_trihrge.tl.EnhanceResult`, for a trained model applied to a target.

    ``per_gene``: the fair per-gene scores at the target's measured spots (None for a bare image).
    """

    per_gene: pd.DataFrame | None = None


def _warn_about_bins(adata: AnnData, model: TrainedModel) -> None:
    """Warn when the target is Visium HD bins.

    Each bin is taken as a spot of the bin's size, much smaller than the spots the model was
    trained on.
    """
    bin_um = (adata.uns.get("trihrge", {}) or {}).get("bin_size_um")
    if not bin_um:
        return
    trained_um = (model.description.get("lattice") or {}).get("spot_diameter_um")
    warnings.warn(
        f"the target is Visium HD bins of {float(bin_um):g} um: each bin is predicted as a spot "
        f"of that size" + (f" (the model was trained on {float(trained_um):g} um spots)"
                           if trained_um else "") + "; the scores at the bins measure few "
        "transcripts each. For spot-sized scores read coarser bins (bin_size_um=16 or "
        "more) or use `trihrge validate-hd`", UserWarning, stacklevel=3)


def _as_target(target: AnnData | str | Path, um_per_px: float | None) -> AnnData:
    """Return a prediction target as AnnData.

    A sample as is, a bare H&E image as a sample without spots (:func:`image_target`), a path of any
    supported layout read with ``io.read``.
    """
    if isinstance(target, AnnData):
        return target
    if not isinstance(target, (str, Path)):
        check_adata(target, what="target")  # raises the TypeError
    if is_image_path(target):
        return image_target(target, um_per_px)
    from ..io import read

    return read(target, **({"um_per_px": um_per_px} if um_per_px else {}))


def prediction_inputs(model: TrainedModel | str | Path, target: AnnData | str | Path, *,
                      stride_um: float | None = None, um_per_px: float | None = None,
                      encoder: str | None = None, windows_um: Sequence[float] | None = None
                      ) -> tuple[TrainedModel, AnnData, float | None]:
    """Return what :func:`predict` works on: the model ready, the target and the map stride.

    The model is loaded and checked (:func:`._model_io.ready_model`), the target is an AnnData, and
    a bare image always gets a map (:data:`DEFAULT_IMAGE_STRIDE_UM` unless given).
    """
    model = ready_model(model, encoder=encoder, windows_um=windows_um)
    adata = _as_target(target, um_per_px)
    check_declared_pixel_size(adata, "the target")
    if adata.n_obs == 0 and stride_um is None:
        stride_um = DEFAULT_IMAGE_STRIDE_UM
    return model, adata, stride_um


def predict(model: TrainedModel | str | Path, target: AnnData | str | Path, *,
            factor: int = geometry.DEFAULT_DENSITY_FACTOR,
            stride_um: float | None = None, um_per_px: float | None = None,
            encoder: str | None = None, windows_um: Sequence[float] | None = None,
            device: str = "auto", cache_dir: str | None = None, hf_token: str | None = None,
            progress: Progress | None = None, map_path: str | None = None,
            reference: str = "auto", map_store: bool | str = False) -> PredictResult:
    """Apply a trained model to ``target``, a sample or a bare H&E image file.

    A sample is an AnnData or any path :func:`io.read` takes; for a bare image the pixel size is
    ``um_per_px`` or read from the file's metadata.

    Returns an :class:`~napari_trihrge.tl.EnhanceResult`: ``virtual`` holds the
    ``factor``-x denser virtual spots (with spots: measured spots keep their barcodes as
    ``obs_names``, ``obs['parent']`` and ``obs['is_measured']`` as in enhance; without spots: a
    lattice over the tissue), ``maps`` the dense map at ``stride_um`` (a bare image always gets
    one, 16 um unless given), ``metrics['spots']`` the fair score at the measured spots next to
    the kNN (leave-one-out) and training-mean baselines. ``encoder`` / ``windows_um`` only check
    that the model fits them. ``reference`` chooses the locations a section's feature
    statistics come from: 'auto' (the measured spots, or a spot-spaced lattice inside the tissue
    for a bare image) or 'tissue' (the lattice even when there are spots, as for a bare slide).
    ``map_store``: keep the maps factorised, as :func:`enhance` does (a path writes the store).
    """
    factor = geometry.validate_density_factor(factor)  # before loading anything
    progress = ensure_progress(progress)
    timer = _Timer()
    model, adata, stride_um = prediction_inputs(model, target, stride_um=stride_um,
                                                um_per_px=um_per_px, encoder=encoder,
                                                windows_um=windows_um)
    bare = adata.n_obs == 0
    if bare and not model.image_only:
        raise TrihrgeInputError(
            "this model uses the expression of measured spots as input, and the target has no "
            "spots", "train an image-only model (trihrge train --image-only) for H&E slides "
            "without spatial transcriptomics")
    if stride_um is not None and not model.dense:
        raise TrihrgeInputError(
            "this model was trained on whole-window features, not the dense path a map needs "
            "(a recovery run, or enhance without --stride-um)",
            "leave --stride-um out, or use a model from `trihrge train` or enhance --stride-um")
    if reference not in ("auto", "tissue"):
        raise TrihrgeInputError(f"unknown reference {reference!r}", "use 'auto' or 'tissue'")
    genes = model.genes
    cfg = prediction_config(model, device=device, cache_dir=cache_dir, hf_token=hf_token)
    if stride_um is not None:  # a NaN, tiny or too large stride: refused before any work
        check_map_size(adata, stride_um, n_genes=len(genes), ensemble=len(model.nets),
                       in_memory=map_path is None)
    _warn_about_bins(adata, model)
    if bare and not model.gene_table.reindex(genes).notna().any().any():
        warnings.warn("the model folder's genes.csv has no held-out trust figures for the "
                      "model's genes: the trust columns of the prediction stay empty",
                      UserWarning, stacklevel=2)

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
        grid = None
        if stride_um is not None:  # an empty map is refused before the features
            grid = map_grid(image, ref_rc, float(stride_um), float("inf") if bare else
                            geometry.spot_spacing_um(ref_rc))
            check_map_grid(grid, image, float(stride_um))
        check_neighbour_images(cfg.neighbour_images, len(ref_rc),
                               "the tissue lattice of the image" if bare else "the target")
        pts_rc, parent = geometry.virtual_spot_grid(ref_rc, factor, lattice)
        v_feats = _features(image, enc, pts_rc, windows, cfg, progress, dense=dense)
        n_off = len(pts_rc) // len(ref_rc)
        # offset 0 of every cell: the spots / the tissue lattice, the neighbour images' sources
        images = NeighbourImages.from_spots(cfg, v_feats[::n_off], ref_rc, windows, dense=dense)
        if images is not None:
            v_feats = images.append_to(v_feats, pts_rc)
        ref_feats = v_feats[::n_off]
        mu = sd = None
        if model.per_section:
            if reference == "tissue" and not bare:
                ref_feats = _features(image, enc,
                                      _tissue_lattice(image, model.description["lattice"]),
                                      windows, cfg, progress, dense=dense,
                                      neighbour_images=images)
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
    virtual = _virtual_spots(pts_rc, parent, v_pred, v_std, genes, um_per_px,
                             spot_names=None if bare else adata.obs_names, keep_barcodes=True,
                             spatial_uns=adata.uns.get("spatial"))

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
                                genes=genes, progress=progress, map_path=map_path, grid=grid,
                                factorised=bool(map_store),
                                store_path=map_store if isinstance(map_store, str) else None,
                                neighbour_images=images)
        if not bare and not np.isnan(y).any():
            with timer("consistency"):
                metrics["consistency"] = map_spot_consistency(maps, rc_um, y, diameter_um)
    spots = _spots_adata(adata, genes, y)
    return PredictResult(spots=spots, virtual=virtual, maps=maps, metrics=metrics, history=[],
                         timings_s=timer.timings_s, config=cfg.public_dict(), fits=[],
                         per_gene=per_gene)


def _spots_adata(adata: AnnData, genes: list[str], y: np.ndarray | None) -> AnnData:
    """Return the target's measured spots, or an empty AnnData for a bare image.

    X log-normalised, the model's genes (NaN for genes it lacks), with the spatial metadata.
    """
    n = adata.n_obs
    out = AnnData(X=(y if y is not None else np.zeros((0, len(genes)), np.float32)),
                  obs=adata.obs.copy() if n else None, var=pd.DataFrame(index=pd.Index(genes)))
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64).reshape(n, 2)
    out.uns["trihrge"] = dict(adata.uns.get("trihrge", {}))
    if "spatial" in adata.uns:
        out.uns["spatial"] = adata.uns["spatial"]
    return out
