"""Scores: per-gene PCC / MSE / MAE on held-out spots, ARI, and map-vs-truth PCC / SSIM / RMSE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def per_gene_pcc(pred: np.ndarray, true: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Pearson correlation per gene (column); NaN where either side is constant."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    pc = pred - pred.mean(axis=0)
    tc = true - true.mean(axis=0)
    num = (pc * tc).sum(axis=0)
    den = np.sqrt((pc**2).sum(axis=0) * (tc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[den <= eps] = np.nan
    return r


def spot_scores(pred: np.ndarray, true: np.ndarray, genes: Sequence[str],
                baseline: np.ndarray | None = None) -> tuple[dict, pd.DataFrame]:
    """Held-out spot scores: mean per-gene PCC (constant genes excluded and counted), MSE, MAE.

    Returns the summary dict and a per-gene table (``pcc``, ``mse``, ``mae`` and, with a
    baseline, ``pcc_baseline``), sorted by ``pcc`` descending.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    pcc = per_gene_pcc(pred, true)
    table = pd.DataFrame({"pcc": pcc, "mse": ((pred - true) ** 2).mean(axis=0),
                          "mae": np.abs(pred - true).mean(axis=0)}, index=pd.Index(genes, name="gene"))
    summary = {
        "pcc_mean": float(np.nanmean(pcc)) if np.isfinite(pcc).any() else float("nan"),
        "pcc_median": float(np.nanmedian(pcc)) if np.isfinite(pcc).any() else float("nan"),
        "mse": float(((pred - true) ** 2).mean()),
        "mae": float(np.abs(pred - true).mean()),
        "n_genes_scored": int(np.isfinite(pcc).sum()),
        "n_genes_constant_excluded": int((~np.isfinite(pcc)).sum()),
    }
    if baseline is not None:
        bp = per_gene_pcc(baseline, true)
        table["pcc_baseline"] = bp
        # compare on the same genes (a gene constant in either prediction is excluded from both)
        both = np.isfinite(pcc) & np.isfinite(bp)
        summary["baseline_pcc_mean"] = float(np.nanmean(bp)) if np.isfinite(bp).any() else float("nan")
        summary["baseline_mse"] = float(((baseline - true) ** 2).mean())
        summary["pcc_mean_paired"] = float(pcc[both].mean()) if both.any() else float("nan")
        summary["baseline_pcc_mean_paired"] = float(bp[both].mean()) if both.any() else float("nan")
        summary["fraction_genes_better_than_baseline"] = (
            float((pcc[both] > bp[both]).mean()) if both.any() else float("nan"))
    return summary, table.sort_values("pcc", ascending=False)


def kmeans_ari(expression: np.ndarray, labels: Sequence, *, n_pcs: int = 15, seed: int = 0) -> float:
    """ARI between k-means clusters of the expression (k = number of labels, fixed seed, on the
    first ``n_pcs`` principal components) and the labels. Spots with missing labels are ignored."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    labels = pd.Series(np.asarray(labels, dtype=object))
    keep = labels.notna().to_numpy() & (labels.astype(str) != "nan").to_numpy()
    x = np.asarray(expression, dtype=np.float64)[keep]
    y = labels[keep].astype(str).to_numpy()
    k = len(np.unique(y))
    if k < 2 or len(x) <= k:
        return float("nan")
    n_comp = int(min(n_pcs, x.shape[1], len(x) - 1))
    z = PCA(n_components=n_comp, random_state=seed).fit_transform(x - x.mean(axis=0))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    return float(adjusted_rand_score(y, clusters))


def minmax_per_gene(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale each gene's map to [0, 1] using its values inside ``mask``; 0 outside the mask."""
    maps = np.asarray(maps, dtype=np.float64)
    inside = maps[:, mask]
    lo = inside.min(axis=1)[:, None, None]
    hi = inside.max(axis=1)[:, None, None]
    out = np.divide(maps - lo, hi - lo, out=np.zeros_like(maps), where=(hi - lo) > 0)
    out[:, ~mask] = 0.0
    return np.clip(out, 0.0, 1.0)


def map_scores(pred_maps: np.ndarray, true_maps: np.ndarray, mask: np.ndarray,
               genes: Sequence[str]) -> tuple[dict, pd.DataFrame]:
    """Dense map vs truth, per gene, after per-gene min-max scaling inside the tissue mask:
    PCC and RMSE inside the mask, SSIM over the map (data_range 1, background 0)."""
    from skimage.metrics import structural_similarity

    mask = np.asarray(mask, dtype=bool)
    p = minmax_per_gene(pred_maps, mask)
    t = minmax_per_gene(true_maps, mask)
    pcc = per_gene_pcc(p[:, mask].T, t[:, mask].T)
    rmse = np.sqrt(((p[:, mask] - t[:, mask]) ** 2).mean(axis=1))
    ssim = np.array([structural_similarity(p[g], t[g], data_range=1.0) for g in range(len(p))])
    table = pd.DataFrame({"pcc": pcc, "ssim": ssim, "rmse": rmse},
                         index=pd.Index(genes, name="gene"))
    summary = {"pcc_mean": float(np.nanmean(pcc)), "ssim_mean": float(ssim.mean()),
               "rmse": float(rmse.mean())}
    return summary, table
