"""Coarse-to-fine validation on a real section (``trihrge validate-coarse``).

Is the finer detail of an enhanced map right on real tissue, or image texture painted onto
interpolation? The measured spots are summed into coarse pseudo-spots that tile the section
(Visium: a spot and its six lattice neighbours, 7-spot hexagons; legacy ST: 2 x 2 blocks; a
larger ``factor`` for larger blocks), enhance runs on that coarse sample as a user would run it
(same defaults, the real image), and its map, averaged over each real spot's footprint, is
scored against the real measured spots with the fair score, next to what a user had without
enhance: the pseudo-spot's own value, inverse-distance interpolation of the pseudo-spots at the
real spot centres (the better of k = 6 / 12) and a ridge on the image alone; the nearest virtual
spot is scored too, and the noise ceiling of the real spots sits beside every score.

A pseudo-spot holds the real spot's own counts (one of its 7 or 4 members), and with them the
counting noise of the measurement it is scored against: it can exceed the noise ceiling, which
bounds predictions independent of that noise. The pseudo-spot without the spot itself
(``pseudo_spot_others``) is scored too, to show how much of its score that is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .. import geometry
from ..errors import TrihrgeInputError
from ..geometry import DEFAULT_BLOCK_SIZE
from ..metrics import TOP_GENES, add_noise_ceiling, scored_genes, spot_scores
from ..metrics import split_counts as metrics_split_counts
from ..neighbours import idw_interpolate
from ..pp import check_counts, normalize_log1p
from ..progress import Progress, ensure_progress
from ._config import BASELINE_KS, RunConfig, validate_config
from ._enhance import EnhanceResult, enhance
from ._maps import map_footprint_means
from ._reference import check_references, split_references
from ._shared import (
    _annotation_labels,
    _encoder_and_image,
    _features,
    _lattice_kind,
    _score_with_knn,
    _Timer,
    sample_geometry,
)
from ._store import store_result

#: the map stride used when none is given (micrometres)
DEFAULT_STRIDE_UM = 16.0
#: the fewest pseudo-spots enhance is asked to learn from
MIN_PSEUDO_SPOTS = 10
#: genes detected in fewer than this share of the scored spots form the 'sparse' class
SPARSE_DETECTION = 0.1
#: marker genes per annotated label (the scored genes most above the rest of the section)
MARKERS_PER_LABEL = 5
#: what each prediction is called in the per-gene table (``pcc_<name>``) and in ``spots.h5ad``
BASELINES = ("pseudo_spot", "pseudo_spot_others", *(f"knn{k}" for k in BASELINE_KS),
             "ridge_image")


@dataclass
class CoarseValidationResult:
    """What :func:`validate_coarse` returns.

    The pseudo-spots (a sample of raw counts), the real spots scored (X the map averaged over
    each footprint, layers ``measured``, one per baseline and ``nearest_virtual``), the scores,
    the per-gene table and enhance's result.
    """

    coarse: AnnData
    spots: AnnData
    metrics: dict[str, Any]
    per_gene: pd.DataFrame
    enhance: EnhanceResult
    timings_s: dict[str, float] = field(default_factory=dict)


def _lattice(adata: AnnData, rc_um: np.ndarray) -> tuple[str, np.ndarray]:
    """Return the sample's lattice kind and every spot's lattice coordinates.

    The coordinates come from the platform's array indices when the sample has them.
    """
    kind = _lattice_kind(adata) or geometry.detect_lattice(rc_um).kind
    platform = adata.uns.get("trihrge", {}).get("platform")
    columns = geometry.PLATFORMS.get(platform, {}).get("array_columns", ())
    array_index = (adata.obs[list(columns)].to_numpy(dtype=np.float64)
                   if columns and all(c in adata.obs for c in columns) else None)
    return kind, geometry.lattice_indices(rc_um, kind, array_index=array_index)


def coarse_sample(adata: AnnData, *, factor: int = DEFAULT_BLOCK_SIZE
                  ) -> tuple[AnnData, pd.Series]:
    """Sum the raw counts of member spots into pseudo-spots that tile the section.

    Each pseudo-spot is the sum of the raw counts (every gene) of its member spots
    (:func:`napari_trihrge.geometry.lattice_blocks`: 7-spot hexagons on a
    hexagonal lattice for ``factor`` 2, 19 for 3; ``factor`` x ``factor`` blocks on a square
    one). A block at the tissue edge with half a full block's spots or fewer is left out, and
    so are its spots. The centre is the mean of the members' centres; the footprint
    (``uns['trihrge']['spot_diameter_um']``) the disk around a full block's member spots (the
    median over full blocks).

    Returns the pseudo-spots as a sample (X and ``layers['counts']`` the summed counts,
    ``obs['n_members']``, ``obsm['spatial']`` in the input's full-resolution pixels) and each
    kept real spot's pseudo-spot id (indexed by the real spots' names).
    """
    check_counts(adata)
    rc_um, um_per_px, diameter_um = sample_geometry(adata)
    if adata.n_obs < 2 * MIN_PSEUDO_SPOTS:
        raise TrihrgeInputError(
            f"the sample has {adata.n_obs} spots, too few to form {MIN_PSEUDO_SPOTS} pseudo-spots",
            "use a section with more measured spots")
    kind, indices = _lattice(adata, rc_um)
    blocks, n_full = geometry.lattice_blocks(indices, kind, factor)
    labels, inverse, counts = np.unique(blocks, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    kept = counts * 2 > n_full
    if kept.sum() < MIN_PSEUDO_SPOTS:
        found = (f"blocks of {n_full} spots (factor {factor}) leave {int(kept.sum())} "
                 f"pseudo-spots from {adata.n_obs} spots; at least {MIN_PSEUDO_SPOTS} are needed")
        n_joined = spots_with_a_neighbour(indices, kind)
        if n_joined * 2 < adata.n_obs:  # a subsample of a section, not the section
            raise TrihrgeInputError(
                f"{found}: the spots are scattered, only {n_joined} of the {adata.n_obs} have "
                "a measured neighbour on the spot lattice, and a pseudo-spot sums neighbouring "
                "spots", "pass the whole section (every spot under the tissue), not a subsample "
                "of its spots")
        raise TrihrgeInputError(found, "use a section with more spots" if factor <= 2 else
                                "use a smaller --factor (2 is the smallest) or a section with "
                                "more spots")
    new_index = np.cumsum(kept) - 1
    member = kept[inverse]
    spot_rows = np.flatnonzero(member)
    block_of = new_index[inverse[member]]
    n_blocks = int(kept.sum())
    weights = sp.csr_matrix((np.ones(len(spot_rows), np.float32), (block_of, spot_rows)),
                            shape=(n_blocks, adata.n_obs))
    counts_sum = sp.csr_matrix(weights @ sp.csr_matrix(adata.X, dtype=np.float32))
    n_members = counts[kept]
    centres = np.asarray(weights @ rc_um) / n_members[:, None]
    # the footprint: the disk around a full block's member spots (the typical block: real
    # spot positions stray from the lattice)
    reach = np.zeros(n_blocks)
    np.maximum.at(reach, block_of, np.linalg.norm(rc_um[spot_rows] - centres[block_of], axis=1))
    full = n_members == n_full
    footprint_um = 2.0 * float(np.median(reach[full] if full.any() else reach)) + diameter_um
    ids = pd.Index([f"coarse_{a}_{b}" for a, b in labels[kept]])
    info = dict(adata.uns.get("trihrge", {}))
    out = AnnData(X=counts_sum, obs=pd.DataFrame({"n_members": n_members.astype(np.int64)},
                                                 index=ids), var=adata.var.copy())
    out.layers["counts"] = counts_sum.copy()
    out.obsm["spatial"] = geometry.rc_um_to_xy_px(centres, um_per_px)
    lib = str(info.get("library_id", "sample"))
    spatial = dict((adata.uns.get("spatial") or {}).get(lib, {}) or {})
    if spatial:
        scalefactors = {**dict(spatial.get("scalefactors", {}) or {}),
                        "spot_diameter_fullres": footprint_um / um_per_px}
        out.uns["spatial"] = {lib: {**spatial, "scalefactors": scalefactors}}
    out.uns["trihrge"] = {
        **info, "sample": f"{info.get('sample', 'sample')}-coarse{factor}",
        "spot_diameter_um": footprint_um,
        "coarse": {"factor": int(factor), "lattice": kind, "spots_per_pseudo_spot": int(n_full),
                   "source_sample": info.get("sample"), "n_spots": int(adata.n_obs),
                   "n_spots_left_out": int(adata.n_obs - len(spot_rows)),
                   "footprint_diameter_um": footprint_um}}
    membership = pd.Series(ids[block_of], index=adata.obs_names[spot_rows], name="coarse_id")
    return out, membership


def spots_with_a_neighbour(indices: np.ndarray, kind: str) -> int:
    """Count the spots with at least one measured neighbour on their lattice.

    ``indices``: :func:`napari_trihrge.geometry.lattice_indices` ('hex': six neighbours,
    'square': four).
    """
    steps = geometry.HEX_NEIGHBOURS if kind == "hex" else geometry.SQUARE_NEIGHBOURS
    spots = [(int(a), int(b)) for a, b in np.asarray(indices)]
    present = set(spots)
    return sum(any((a + da, b + db) in present for da, db in steps) for a, b in spots)


def pseudo_spot_without_self(adata: AnnData, coarse: AnnData, membership: pd.Series,
                             genes: list[str]) -> np.ndarray:
    """Compute each real spot's pseudo-spot without the spot itself.

    That is the summed counts of the other members (every gene), log-normalised as recovery
    does, for ``genes`` (spots x genes, in the order of ``membership``). The pseudo-spot holds
    the spot's own counts, and with them the counting noise of its measurement; this value
    does not.
    """
    own = sp.csr_matrix(adata[membership.index].X, dtype=np.float64)
    block = sp.csr_matrix(coarse.layers["counts"], dtype=np.float64)[
        coarse.obs_names.get_indexer(membership.to_numpy())]
    others = AnnData(X=block - own, var=pd.DataFrame(index=adata.var_names))
    return normalize_log1p(others, genes=genes)


def gene_classes(truth: np.ndarray, labels=None) -> dict[str, np.ndarray]:
    """Return boolean gene masks of the classes scored separately.

    They come from the measured expression (spots x genes): every scored gene ('all'), the
    :data:`~napari_trihrge.metrics.TOP_GENES` most expressed ('top100'), the sparse ones
    (detected in fewer than :data:`SPARSE_DETECTION` of the spots) and, with ``labels`` (one
    per spot, e.g. layers or tumour / stroma; missing ones ignored), the markers: for each
    label with at least 5 spots the :data:`MARKERS_PER_LABEL` scored genes whose mean is most
    above the other spots'.
    """
    varies, top_idx = scored_genes(truth)
    top = np.zeros(len(varies), dtype=bool)
    top[top_idx] = True
    detection = (truth > 0).mean(axis=0)
    classes = {"all": varies, f"top{TOP_GENES}": top,
               "sparse": varies & (detection < SPARSE_DETECTION)}
    if labels is not None:
        labels = pd.Series(np.asarray(labels, dtype=object))
        known = labels.notna().to_numpy() & (labels.astype(str) != "nan").to_numpy()
        markers = np.zeros(len(varies), dtype=bool)
        for label in pd.unique(labels[known]):
            inside = known & (labels == label).to_numpy()
            if inside.sum() < 5 or (known & ~inside).sum() < 5:
                continue
            lift = truth[inside].mean(axis=0) - truth[known & ~inside].mean(axis=0)
            order = np.argsort(-np.where(varies, lift, -np.inf), kind="stable")
            markers[order[:MARKERS_PER_LABEL]] = True
        classes["markers"] = markers & varies
    return classes


def _class_scores(classes: dict[str, np.ndarray], per_gene: pd.DataFrame, genes: list[str]
                  ) -> dict[str, dict[str, float]]:
    columns = {"map": "pcc", "nearest_virtual": "pcc_nearest_virtual",
               **{name: f"pcc_{name}" for name in BASELINES}, "noise_ceiling": "noise_ceiling"}
    table = per_gene.reindex(genes)
    out: dict[str, dict[str, float]] = {}
    for cls, mask in classes.items():
        row: dict[str, float] = {"n_genes": int(mask.sum())}
        for name, col in columns.items():
            if col in table:
                values = table[col].to_numpy(dtype=np.float64)[mask]
                row[name] = float(values.mean()) if len(values) else float("nan")
        out[cls] = row
    return out


def validate_coarse(adata: AnnData, *, factor: int = DEFAULT_BLOCK_SIZE,
                    stride_um: float = DEFAULT_STRIDE_UM, config: RunConfig | None = None,
                    progress: Progress | None = None, map_path: str | None = None,
                    annotation=None, split_counts: bool = False, reference=None,
                    reference_weight: float | None = None,
                    key_added: str | None = None) -> CoarseValidationResult:
    """Validate coarse to fine whether enhance's map adds correct detail on real tissue.

    Parameters
    ----------
    adata
        A sample of raw counts as :func:`napari_trihrge.io.read` returns it.
    factor
        Block size of the pseudo-spots (:func:`coarse_sample`): 2 = 7-spot hexagons on
        Visium, 2 x 2 blocks on legacy ST.
    stride_um
        Pixel of enhance's dense map (micrometres).
    config
        Enhance's settings (:class:`RunConfig`; its defaults are what a user gets).
    progress
        Progress events (enhance's stages, then 'scoring').
    map_path
        Where enhance streams its map (OME-Zarr); in memory when None.
    annotation
        Labels of the real spots (an obs column, a Series by spot name or a barcode -> label
        file: tissue layers, tumour / stroma) for the marker genes class of ``by_gene_class``.
    split_counts
        Split every spot's counts binomially in two (:func:`napari_trihrge.metrics.split_counts`,
        seed ``config.seed``): the pseudo-spots are summed from one half, the real spots are
        scored against the other. The pseudo-spots then no longer share the counting noise of
        what they are scored against (each half has half the depth, and so a lower ceiling).
    reference
        Other sections of the study (as :func:`napari_trihrge.tl.enhance`'s ``reference``),
        coarsened with the same ``factor`` before they join the training: they are measured at
        the same coarse resolution as the section, so they teach nothing finer than it has.
    reference_weight
        As :func:`napari_trihrge.tl.enhance`'s (None: every reference pseudo-spot).
    key_added
        Where the result is recorded on ``adata`` (default ``trihrge_validate_coarse``;
        :func:`napari_trihrge.tl.store_result`): the scores in ``uns``, the per-gene PCC in
        ``var``, the map at the real spots in ``obsm``.

    Returns
    -------
    CoarseValidationResult
        ``metrics``: the map's fair score at the real spots (``pcc_mean``, ``pcc_top100``, ...),
        each baseline's on the same genes and spots (``baseline_pseudo_spot_*``; the
        pseudo-spot without the spot's own counts, ``baseline_pseudo_spot_others_*``;
        ``baseline_knn_*`` the better of k = 6 / 12, ``baseline_ridge_image_*``), the better of
        pseudo-spot value and interpolation (``baseline_simple_*``, ``x_better_simple``), the
        nearest virtual spot (``nearest_virtual_*``), the noise ceiling
        (``noise_ceiling_pcc_mean``, ``fraction_of_ceiling``) and the scores per gene class
        (``by_gene_class``: all, top-100, sparse and, with ``annotation``, markers;
        :func:`gene_classes`).
    """
    cfg = config or RunConfig()
    validate_config(cfg)
    if not np.isfinite(stride_um) or stride_um <= 0:
        raise TrihrgeInputError(f"the map stride must be positive, got {stride_um} um",
                                "pass --stride-um, for example 16 or 32")
    source = target = adata
    if split_counts:
        check_counts(adata)
        source, target = adata.copy(), adata.copy()
        halves = metrics_split_counts(adata.X, seed=cfg.seed)
        source.X, target.X = (h.astype(np.float32) for h in halves)
    coarse, membership = coarse_sample(source, factor=factor)  # refused before any work
    coarse_refs = None
    if reference is not None:
        if split_references(reference)[1]:
            raise TrihrgeInputError(
                "validate-coarse cannot use a trained model as a reference: it learned from "
                "spots at the measured resolution, finer than the pseudo-spots the check "
                "gives the run", "pass the sections the model was trained on (--with "
                "SECTION...): they are coarsened like the section")
        coarse_refs = [coarse_sample(ref, factor=factor)[0]
                       for ref in check_references(adata, reference)]
    labels = _annotation_labels(adata, annotation)
    progress = ensure_progress(progress)
    timer = _Timer()
    with timer("enhance"):
        result = enhance(coarse, stride_um=stride_um, config=cfg, progress=progress,
                         map_path=map_path, reference=coarse_refs,
                         reference_weight=reference_weight)
    progress.stage("scoring", 1)
    with timer("scoring"):
        spots, metrics, per_gene = _score_real_spots(target, source, coarse, membership,
                                                     result, cfg, labels, progress)
    metrics.update({"factor": int(factor), "stride_um": float(stride_um),
                    "split_counts": bool(split_counts),
                    "n_pseudo_spots": int(coarse.n_obs),
                    **{k: v for k, v in coarse.uns["trihrge"]["coarse"].items()
                       if k not in ("factor", "source_sample")},
                    "enhance_trust": result.metrics.get("trust")})
    store_result(adata, "validate_coarse", metrics=metrics, config=cfg.public_dict(),
                 per_gene=per_gene, predictions=spots, key_added=key_added)
    progress.advance()
    return CoarseValidationResult(coarse=coarse, spots=spots, metrics=metrics, per_gene=per_gene,
                                  enhance=result,
                                  timings_s={**result.timings_s, **timer.timings_s})


def _score_real_spots(adata: AnnData, source: AnnData, coarse: AnnData, membership: pd.Series,
                      result: EnhanceResult, cfg: RunConfig, labels: pd.Series | None,
                      progress: Progress) -> tuple[AnnData, dict[str, Any], pd.DataFrame]:
    """Score the map, the nearest virtual spot and the baselines at the real spots of ``adata``.

    ``source``: the counts the pseudo-spots were summed from.
    """
    genes = list(result.spots.var_names)
    coarse_names = result.spots.obs_names
    real = adata[membership.index]
    totals = np.asarray(real.X.sum(axis=1)).ravel()
    ok = (totals > 0) & membership.isin(coarse_names).to_numpy()
    real, membership = real[ok], membership[ok]
    truth = normalize_log1p(real, genes=genes)
    rc_um, um_per_px, diameter_um = sample_geometry(real)

    means, _ = map_footprint_means(result.maps, rc_um, diameter_um)
    v_rc = geometry.xy_px_to_rc_um(result.virtual.obsm["spatial"], um_per_px)
    _, nearest_idx = cKDTree(v_rc).query(rc_um)
    nearest = np.asarray(result.virtual.X, dtype=np.float64)[nearest_idx]
    outside = ~np.isfinite(means).all(axis=1)  # no map pixel in the footprint
    map_pred = np.where(outside[:, None], nearest, means)

    coarse_y = np.asarray(result.spots.X, dtype=np.float32)
    coarse_rc = sample_geometry(result.spots)[0]
    baselines: dict[str, np.ndarray] = {
        "pseudo_spot": coarse_y[coarse_names.get_indexer(membership.to_numpy())],
        "pseudo_spot_others": pseudo_spot_without_self(source, coarse, membership, genes)}
    for k in BASELINE_KS:
        baselines[f"knn{k}"] = idw_interpolate(coarse_rc, coarse_y, rc_um, k)
    if cfg.image_input:
        from ..model.stacking import RidgeHead

        image, encoder = _encoder_and_image(adata, cfg)
        feats = _features(image, encoder, np.vstack([coarse_rc, rc_um]), cfg.windows_um, cfg,
                          progress)
        head = RidgeHead.fit(feats[:len(coarse_rc)], None, coarse_y)
        baselines["ridge_image"] = head.predict(feats[len(coarse_rc):], None)

    metrics, per_gene = _score_with_knn(map_pred, truth, genes, baselines)
    simple = max(("pseudo_spot", metrics["baseline_knn_method"]),
                 key=lambda name: metrics[f"baseline_{name}_pcc_mean"])
    metrics["baseline_simple_method"] = simple
    for key in ("pcc_mean", "pcc_top100"):
        metrics[f"baseline_simple_{key}"] = metrics[f"baseline_{simple}_{key}"]
    best = metrics["baseline_simple_pcc_mean"]
    metrics["x_better_simple"] = float(metrics["pcc_mean"] / best) if best > 0 else float("nan")
    near_summary, near_table = spot_scores(nearest, truth, genes)
    for key in ("pcc_mean", "pcc_top100", "mse", "n_genes_constant_prediction"):
        metrics[f"nearest_virtual_{key}"] = near_summary[key]
    per_gene["pcc_nearest_virtual"] = near_table["pcc"].reindex(per_gene.index).to_numpy()
    per_gene["detection"] = pd.Series((truth > 0).mean(axis=0), index=genes).reindex(
        per_gene.index).to_numpy()
    add_noise_ceiling(metrics, per_gene, real)
    if labels is not None:
        labels = labels.reindex(real.obs_names).to_numpy()
    metrics["by_gene_class"] = _class_scores(gene_classes(truth, labels), per_gene,
                                             genes)
    metrics.update({"n_spots_scored": int(real.n_obs),
                    "n_spots_outside_map": int(outside.sum())})

    obs = pd.DataFrame({"coarse_id": membership.to_numpy(), "outside_map": outside},
                       index=real.obs_names.copy())
    spots = AnnData(X=map_pred.astype(np.float32), obs=obs,
                    var=per_gene.reindex(genes).rename_axis(None))
    spots.obsm["spatial"] = np.asarray(real.obsm["spatial"])
    spots.layers["measured"] = truth
    for name, values in baselines.items():
        spots.layers[name] = np.asarray(values, dtype=np.float32)
    spots.layers["nearest_virtual"] = nearest.astype(np.float32)
    spots.uns["trihrge"] = {**dict(real.uns.get("trihrge", {})), "task": "validate_coarse",
                            "x_kind": "log-normalised", "config": cfg.public_dict()}
    if "spatial" in real.uns:
        spots.uns["spatial"] = real.uns["spatial"]
    return spots, metrics, per_gene


__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_STRIDE_UM", "MIN_PSEUDO_SPOTS", "SPARSE_DETECTION",
           "MARKERS_PER_LABEL", "BASELINES", "CoarseValidationResult", "coarse_sample",
           "spots_with_a_neighbour", "pseudo_spot_without_self", "gene_classes", "validate_coarse"]
