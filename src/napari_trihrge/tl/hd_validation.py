"""Validation against measured high-resolution expression (Visium HD).

The protocol (``docs/benchmarks.md``; as in HISTEX / iStar evaluations): from Visium HD bins
(8 um, or 2 um) build pseudo-Visium spots (55 um disks on a 100 um hexagonal lattice, the counts
of the bins whose centres fall in each disk summed), enhance them into a dense map with the bin
size as its stride, and score that map against the measured bins inside the tissue (per-gene PCC
with a constant map counting as 0, SSIM, RMSE after per-gene min-max scaling;
:func:`napari_trihrge.evaluation.superres_scores`), next to the measured spots interpolated onto
the same grid (inverse-distance kNN).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .. import geometry
from ..errors import TrihrgeInputError

PSEUDO_SPOT_DIAMETER_UM = float(geometry.PLATFORMS["visium"]["spot_diameter_um"])


def _bin_size_um(bins: AnnData) -> float:
    info = bins.uns.get("trihrge", {}) or {}
    if info.get("bin_size_um") is None:
        raise TrihrgeInputError(
            "the sample is not made of Visium HD bins (no bin size recorded)",
            "pass a Visium HD outs/ folder, a square_002um / square_008um folder, or a "
            "SpatialData store made from one (table square_008um)")
    return float(info["bin_size_um"])


def pseudo_visium(bins: AnnData, *, min_coverage: float = 0.5) -> AnnData:
    """Build pseudo-Visium spots from Visium HD bins.

    55 um disks on a 100 um hexagonal lattice over the bins' extent, each the sum of the bins whose
    centres lie in the disk. Spots whose disk holds fewer than ``min_coverage`` of the bins a full
    disk would hold are dropped. ``obs['n_bins']`` counts the bins per spot; the result follows the
    sample data model (platform 'visium') and shares the bins' images and pixel size.
    """
    from ..datasets import _hex_spots  # the Visium lattice with its array indices

    bin_um = _bin_size_um(bins)
    info = dict(bins.uns["trihrge"])
    um_per_px = float(info["um_per_px"])
    rc_bins = geometry.xy_px_to_rc_um(bins.obsm["spatial"], um_per_px)
    extent = tuple(float(v) for v in rc_bins.max(axis=0) + bin_um)
    spots_rc, arr = _hex_spots(extent)
    radius = PSEUDO_SPOT_DIAMETER_UM / 2.0
    members = cKDTree(rc_bins).query_ball_point(spots_rc, r=radius)
    expected = np.pi * radius**2 / bin_um**2
    n_bins = np.array([len(m) for m in members])
    keep = n_bins >= min_coverage * expected
    if keep.sum() < 10:
        raise TrihrgeInputError(
            f"only {int(keep.sum())} pseudo-Visium spots are covered by the bins",
            "the tissue must span several 100 um spots; check the bin positions and pixel size")
    rows = np.concatenate([np.full(len(members[i]), k) for k, i in
                           enumerate(np.flatnonzero(keep))])
    cols = np.concatenate([members[i] for i in np.flatnonzero(keep)]).astype(np.int64)
    w = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                      shape=(int(keep.sum()), bins.n_obs))
    X = sp.csr_matrix(w @ sp.csr_matrix(bins.X, dtype=np.float32))
    spots_rc, arr = spots_rc[keep], arr[keep]
    obs = pd.DataFrame({"in_tissue": 1, "array_row": arr[:, 0], "array_col": arr[:, 1],
                        "n_bins": n_bins[keep]},
                       index=pd.Index([f"pseudo_{r}_{c}" for r, c in arr]))
    out = AnnData(X=X, obs=obs, var=bins.var.copy())
    out.obsm["spatial"] = geometry.rc_um_to_xy_px(spots_rc, um_per_px)
    lib = str(info.get("library_id", "sample"))
    spatial = dict((bins.uns.get("spatial") or {}).get(lib, {}) or {})
    scalefactors = {**dict(spatial.get("scalefactors", {}) or {}),
                    "spot_diameter_fullres": PSEUDO_SPOT_DIAMETER_UM / um_per_px}
    out.uns["spatial"] = {lib: {**spatial, "scalefactors": scalefactors}}
    out.uns["trihrge"] = {
        **{k: v for k, v in info.items() if k not in ("assay", "bin_size_um")},
        "platform": "visium", "spot_diameter_um": PSEUDO_SPOT_DIAMETER_UM,
        "pseudo_visium_from_bin_um": bin_um, "sample": f"{info.get('sample', 'sample')}-pseudo"}
    return out


def measured_truth(bins: AnnData, genes: list[str]) -> dict[str, Any]:
    """Put the measured bins of ``genes`` on a regular grid of the bin size.

    The origin is at the first bin centre; a grid cell takes the mean of the bins whose centres
    round to it. The layout is that of ``uns['truth']``, which
    :func:`napari_trihrge.evaluation.truth_on_grid` reads, with ``tissue_8um`` marking the cells
    that hold a measured in-tissue bin.
    """
    bin_um = _bin_size_um(bins)
    um_per_px = float(bins.uns["trihrge"]["um_per_px"])
    rc = geometry.xy_px_to_rc_um(bins.obsm["spatial"], um_per_px)
    origin = rc.min(axis=0)
    idx = np.rint((rc - origin) / bin_um).astype(np.int64)
    shape = tuple(int(v) for v in idx.max(axis=0) + 1)
    missing = [g for g in genes if g not in bins.var_names]
    if missing:
        raise TrihrgeInputError(f"{len(missing)} genes are not in the bins (e.g. {missing[:3]})",
                                "score only genes measured in the bins")
    gidx = bins.var_names.get_indexer(genes)
    X = bins.X[:, gidx]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    flat = idx[:, 0] * shape[1] + idx[:, 1]
    n = np.bincount(flat, minlength=shape[0] * shape[1]).astype(np.float32)
    grid = np.zeros((len(genes), shape[0] * shape[1]), dtype=np.float32)
    for g in range(len(genes)):
        grid[g] = np.bincount(flat, weights=X[:, g], minlength=len(n))
    measured = n > 0
    grid[:, measured] /= n[measured]
    return {"expression_8um": grid.reshape(len(genes), *shape), "stride_um": bin_um,
            "origin_rc_um": origin, "genes": np.asarray(genes, dtype=object),
            "tissue_8um": measured.reshape(shape)}


def measured_on_map(truth: dict[str, Any], maps) -> np.ndarray:
    """Map pixels whose nearest truth cell is a measured bin (bool, the map's shape)."""
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    tissue = np.asarray(truth["tissue_8um"], dtype=bool)
    n_rows, n_cols = maps.mask.shape
    rows = np.rint((maps.origin_rc_um[0] + np.arange(n_rows) * maps.stride_um - origin[0])
                   / stride).astype(int)
    cols = np.rint((maps.origin_rc_um[1] + np.arange(n_cols) * maps.stride_um - origin[1])
                   / stride).astype(int)
    ok_r = (rows >= 0) & (rows < tissue.shape[0])
    ok_c = (cols >= 0) & (cols < tissue.shape[1])
    out = tissue[np.clip(rows, 0, tissue.shape[0] - 1)][:, np.clip(cols, 0, tissue.shape[1] - 1)]
    return out & ok_r[:, None] & ok_c[None, :]


def score_against_bins(bins: AnnData, result, n_neighbours: int = 6
                       ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score an enhance result's dense map against the measured bins inside the tissue.

    Scored on the map pixels inside the map's tissue mask that fall on a measured bin, next to the
    measured pseudo-spots interpolated onto the same pixels.
    """
    from ..evaluation import superres_scores
    from ._shared import sample_geometry

    maps = result.maps
    if maps is None:
        raise TrihrgeInputError("the enhance result has no dense map",
                                "run enhance with stride_um (the bin size)")
    genes = list(maps.gene_names)
    truth = measured_truth(bins, genes)
    scored = maps.mask & measured_on_map(truth, maps)
    if scored.sum() < 10:
        raise TrihrgeInputError(f"only {int(scored.sum())} map pixels fall on measured bins",
                                "check that the bins and the pseudo-spots share coordinates")
    holder = AnnData(obs=pd.DataFrame(index=pd.Index(["_"])), var=pd.DataFrame(index=genes))
    holder.uns["truth"] = truth
    rc_um, _, _ = sample_geometry(result.spots)
    summary, table = superres_scores(holder, dataclasses.replace(maps, mask=scored), rc_um,
                                     np.asarray(result.spots.X), n_neighbours=n_neighbours)
    summary.update({"n_pixels_scored": int(scored.sum()), "bin_size_um": truth["stride_um"],
                    "n_bins": int(bins.n_obs), "n_pseudo_spots": int(result.spots.n_obs)})
    return summary, table


