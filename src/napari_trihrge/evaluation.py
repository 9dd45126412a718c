"""Scoring dense maps against known truth (the synthetic sample) and the image-free baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .metrics import map_scores, minmax_per_gene, per_gene_pcc
from .neighbours import idw_interpolate


def truth_on_grid(adata: AnnData, maps, genes: list[str]) -> np.ndarray:
    """The sample's truth (``uns['truth']``) at the map's pixel centres, log-scaled like the
    predictions: log1p(rate * 1e4 / median total rate per truth pixel). (genes, rows, cols).

    One scale for the whole truth, not scanpy's per-spot ``normalize_total``: the truth is an
    expected rate without sampling depth, so its pixels keep their relative totals."""
    truth = adata.uns["truth"]
    expr = np.asarray(truth["expression_8um"], dtype=np.float32)
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    truth_genes = list(truth.get("genes", truth.get("gene_names", [])))
    if len(truth_genes) != expr.shape[0]:
        truth_genes = list(adata.var_names)
    gidx = [truth_genes.index(g) for g in genes]
    tissue = np.asarray(truth.get("tissue_8um", np.ones(expr.shape[1:], bool)), dtype=bool)
    totals = expr.sum(axis=0)
    scale = 1e4 / float(np.median(totals[tissue & (totals > 0)]))
    n_rows, n_cols = maps.mask.shape
    rows = np.rint((maps.origin_rc_um[0] + np.arange(n_rows) * maps.stride_um - origin[0]) / stride)
    cols = np.rint((maps.origin_rc_um[1] + np.arange(n_cols) * maps.stride_um - origin[1]) / stride)
    rows = np.clip(rows.astype(int), 0, expr.shape[1] - 1)
    cols = np.clip(cols.astype(int), 0, expr.shape[2] - 1)
    return np.log1p(expr[gidx][:, rows][:, :, cols] * scale)


def superres_scores(adata: AnnData, maps, spots_rc_um: np.ndarray, spots_expr: np.ndarray,
                    n_neighbours: int = 6) -> tuple[dict[str, Any], pd.DataFrame]:
    """Dense map vs truth (PCC, SSIM, RMSE per gene, after per-gene min-max scaling inside the map
    mask), next to the image-free baseline: measured spot values interpolated onto the same grid
    (inverse-distance kNN). Broken down by ``var['gene_class']`` when the sample has it."""
    genes = list(maps.gene_names)
    mask = np.asarray(maps.mask, dtype=bool)
    truth = truth_on_grid(adata, maps, genes)
    pred = np.asarray(maps.values, dtype=np.float32)
    pred = np.where(np.isfinite(pred), pred, 0.0)
    ii, jj = np.nonzero(mask)
    pts = maps.origin_rc_um + np.stack([ii, jj], axis=1) * maps.stride_um
    interp = np.zeros_like(pred)
    interp[:, ii, jj] = idw_interpolate(spots_rc_um, spots_expr, pts, n_neighbours).T
    s_model, t_model = map_scores(pred, truth, mask, genes)
    s_base, t_base = map_scores(interp, truth, mask, genes)
    table = t_model.join(t_base, rsuffix="_baseline_interp")
    summary: dict[str, Any] = {**s_model, "baseline_interp_pcc_mean": s_base["pcc_mean"],
                               "baseline_interp_ssim_mean": s_base["ssim_mean"],
                               "baseline_interp_rmse": s_base["rmse"],
                               "baseline_interp": f"inverse-distance kNN (k={n_neighbours})"}
    if maps.std is not None:
        std = np.asarray(maps.std, dtype=np.float32)
        std = np.where(np.isfinite(std), std, 0.0)
        err = np.abs(minmax_per_gene(pred, mask) - minmax_per_gene(truth, mask))
        # does the ensemble spread point at the errors? per-gene PCC of spread vs |error|
        table["spread_error_pcc"] = per_gene_pcc(std[:, mask].T, err[:, mask].T)
        table["error_ratio_high_vs_low_spread"] = _error_ratio_by_spread(std[:, mask],
                                                                         err[:, mask])
        summary["spread_error_pcc_mean"] = _nan_stat(table["spread_error_pcc"], np.mean)
        summary["error_ratio_high_vs_low_spread"] = _nan_stat(
            table["error_ratio_high_vs_low_spread"], np.median)
    if "gene_class" in adata.var:
        classes = adata.var["gene_class"].reindex(genes)
        table["gene_class"] = classes.to_numpy()
        by_class = {}
        for name, sub in table.groupby("gene_class"):
            by_class[str(name)] = {
                "n_genes": int(len(sub)),
                "pcc_mean": float(sub["pcc"].mean()), "ssim_mean": float(sub["ssim"].mean()),
                "baseline_interp_pcc_mean": float(sub["pcc_baseline_interp"].mean()),
                "baseline_interp_ssim_mean": float(sub["ssim_baseline_interp"].mean()),
            }
            if "spread_error_pcc" in sub:
                by_class[str(name)]["spread_error_pcc_mean"] = _nan_stat(
                    sub["spread_error_pcc"], np.mean)
                by_class[str(name)]["error_ratio_high_vs_low_spread"] = _nan_stat(
                    sub["error_ratio_high_vs_low_spread"], np.median)
        summary["by_gene_class"] = by_class
    return summary, table


def _nan_stat(values, stat) -> float:
    """``stat`` (np.mean, np.median) over the values that are not NaN, as np.nanmean and
    np.nanmedian, but NaN without a warning when every value is NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(stat(v)) if len(v) else float("nan")


def _error_ratio_by_spread(std: np.ndarray, err: np.ndarray, fraction: float = 0.1
                           ) -> np.ndarray:
    """Per gene (rows, locations in columns): mean |error| where the ensemble spread is in its
    top ``fraction`` divided by the mean |error| where it is in its bottom ``fraction`` (> 1: the
    spread points at the errors); NaN where the spread is constant or the low errors are 0."""
    out = np.full(len(std), np.nan)
    n = std.shape[1]
    k = max(1, int(round(fraction * n)))
    for g in range(len(std)):
        if n < 2 * k or not np.ptp(std[g]) > 0:
            continue
        order = np.argsort(std[g], kind="stable")
        low, high = err[g, order[:k]].mean(), err[g, order[-k:]].mean()
        if low > 0:
            out[g] = high / low
    return out


def _eta2(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per gene (rows of ``values`` (G, P)), the share of the variance over P locations that the
    group labels explain (eta squared of a one-way ANOVA); NaN for a constant gene."""
    values = np.asarray(values, dtype=np.float64)
    total = values.var(axis=1) * values.shape[1]
    between = np.zeros(len(values))
    grand = values.mean(axis=1)
    for g in np.unique(groups):
        sel = groups == g
        between += sel.sum() * (values[:, sel].mean(axis=1) - grand) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 1e-12, between / total, np.nan)


def structure_scores(adata: AnnData, maps, spots_rc_um: np.ndarray, spots_expr: np.ndarray,
                     n_neighbours: int = 6) -> dict[str, dict[str, float]]:
    """Is structure invented? Per gene class of the synthetic sample:

    * ``eta2_map`` / ``eta2_interp`` / ``eta2_truth``: share of each gene's spatial variance
      (inside the map mask) explained by the true tissue domains, for the predicted map, for the
      interpolated spot values and for the truth (mean over the class's genes);
    * ``rel_sd_map`` / ``rel_sd_interp``: the class's mean spatial sd of the map divided by the
      mean spatial sd of the marker maps (how loud the class's map is next to real structure).

    Noise genes have no structure (``eta2_truth`` near 0); a model that hallucinates them into
    the tissue's domains would give them a high ``eta2_map`` and a ``rel_sd_map`` near 1.
    """
    truth = adata.uns["truth"]
    genes = list(maps.gene_names)
    mask = np.asarray(maps.mask, dtype=bool)
    dom = np.asarray(truth["domain_8um"])
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    ii, jj = np.nonzero(mask)
    pts = maps.origin_rc_um + np.stack([ii, jj], axis=1) * maps.stride_um
    ti = np.clip(np.rint((pts - origin) / stride).astype(int), 0, np.array(dom.shape) - 1)
    groups = dom[ti[:, 0], ti[:, 1]]
    pred = np.asarray(maps.values, dtype=np.float32)[:, ii, jj]
    interp = idw_interpolate(spots_rc_um, spots_expr, pts, n_neighbours).T
    tru = truth_on_grid(adata, maps, genes)[:, ii, jj]
    classes = (adata.var["gene_class"].reindex(genes).to_numpy() if "gene_class" in adata.var
               else np.array(["all"] * len(genes)))
    eta = {"map": _eta2(pred, groups), "interp": _eta2(interp, groups), "truth": _eta2(tru, groups)}
    sd = {"map": pred.std(axis=1), "interp": interp.std(axis=1)}
    out: dict[str, dict[str, float]] = {}
    marker = classes == "marker"
    for cls in pd.unique(classes):
        sel = classes == cls
        row = {f"eta2_{k}": float(np.nanmean(v[sel])) for k, v in eta.items()}
        for k, v in sd.items():
            ref = float(v[marker].mean()) if marker.any() else float("nan")
            row[f"rel_sd_{k}"] = float(v[sel].mean() / ref) if ref > 0 else float("nan")
        out[str(cls)] = row
    return out


def truth_in_cells(adata: AnnData, cell_labels: np.ndarray, um_per_px: float,
                   genes: list[str]) -> np.ndarray:
    """The synthetic truth averaged over each cell, log-scaled as :func:`truth_on_grid`:
    (cells, genes); NaN for a cell off the truth grid. The truth is a field on an 8 um grid, so
    a cell's truth is that field over the cell's area (what a perfect map would give it)."""
    from types import SimpleNamespace

    from .tl._cells import average_maps_over_cells, cell_map_weights

    truth = adata.uns["truth"]
    shape = np.shape(truth["expression_8um"])[1:]
    grid = SimpleNamespace(mask=np.ones(shape, dtype=bool), stride_um=float(truth["stride_um"]),
                           origin_rc_um=np.asarray(truth["origin_rc_um"], dtype=np.float64),
                           gene_names=list(genes))
    grid.values = truth_on_grid(adata, grid, list(genes))
    return average_maps_over_cells(cell_map_weights(cell_labels, um_per_px, grid), grid)


def cell_scores(adata: AnnData, cells: AnnData, cell_labels: np.ndarray, um_per_px: float,
                spots_rc_um: np.ndarray, spots_expr: np.ndarray) -> tuple[dict[str, Any],
                                                                       pd.DataFrame]:
    """Per-cell expression (``cells.X``, from :func:`napari_trihrge.tl.cells`) against the
    per-cell truth, next to the baseline "each cell gets its spot's interpolated value" (the
    measured spots ``spots_expr`` interpolated at the cell centroid by inverse-distance kNN,
    k=6 and k=12), with the project's one scoring (:func:`metrics.spot_scores`: fair per-gene
    PCC over the cells, the same genes and cells for every candidate). Cells the map does not
    cover are left out of every score (counted in ``n_cells_without_map``)."""
    from .metrics import spot_scores

    genes = [str(g) for g in cells.var_names]
    truth = truth_in_cells(adata, cell_labels, um_per_px, genes)
    pred = np.asarray(cells.X, dtype=np.float64)
    ok = np.isfinite(pred).all(axis=1) & np.isfinite(truth).all(axis=1)
    rc_um = cells.obs[["row_um", "col_um"]].to_numpy()[ok]
    baselines = {f"knn{k}": idw_interpolate(spots_rc_um, spots_expr, rc_um, k) for k in (6, 12)}
    summary, table = spot_scores(pred[ok], truth[ok], genes, baselines=baselines)
    summary["n_cells_scored"] = int(ok.sum())
    summary["n_cells_without_map"] = int((~ok).sum())
    if "gene_class" in adata.var:
        table["gene_class"] = adata.var["gene_class"].reindex(table.index).to_numpy()
    return summary, table
