"""Scores: per-gene PCC / MSE / MAE on held-out spots, ARI, and map-vs-truth PCC / SSIM / RMSE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


#: how many of the most expressed scored genes the ``*_top100`` scores average over
TOP_GENES = 100


def fair_pcc(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-gene PCC for scoring: NaN for a gene that does not vary in ``true`` (it cannot be
    scored), 0 for a gene that varies in ``true`` but is predicted as a constant (a constant
    carries no information)."""
    true = np.asarray(true, dtype=np.float64)
    r = per_gene_pcc(pred, true)
    varies = np.ptp(true, axis=0) > 0
    r[varies & ~np.isfinite(r)] = 0.0
    r[~varies] = np.nan
    return r


def scored_genes(true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The genes the fair score averages (those that vary in ``true``, bool) and the indices of
    the :data:`TOP_GENES` of them with the highest mean measured expression."""
    varies = np.ptp(true, axis=0) > 0
    order = np.argsort(-np.where(varies, true.mean(axis=0), -np.inf), kind="stable")
    return varies, order[:min(TOP_GENES, int(varies.sum()))]


def spot_scores(pred: np.ndarray, true: np.ndarray, genes: Sequence[str],
                baselines: Mapping[str, np.ndarray] | None = None
                ) -> tuple[dict, pd.DataFrame]:
    """Held-out spot scores with the project's one scoring definition.

    ``pcc_mean`` is the mean per-gene PCC over every gene that varies among the measured spots
    in ``true``; a gene predicted as a constant counts as 0 and is never dropped. Every baseline
    in ``baselines`` (name -> prediction) is scored on exactly the same genes and spots.

    Summary keys: ``pcc_mean``, ``pcc_median``, ``pcc_top100`` (the 100 scored genes with the
    highest mean measured expression), ``n_genes``, ``n_genes_scored``,
    ``n_genes_constant_truth``, ``n_genes_constant_prediction``, ``mse``, ``mae``; per baseline
    ``baseline_<name>_pcc_mean``, ``_pcc_top100``, ``_mse``, ``_n_genes_constant_prediction`` and
    ``fraction_genes_better_than_<name>``. The per-gene table has ``pcc``, ``mse``, ``mae``,
    ``mean_measured`` and ``pcc_<name>`` per baseline, sorted by ``pcc`` descending (unscored
    genes last).
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    varies, top = scored_genes(true)
    mean_measured = true.mean(axis=0)

    def score(p: np.ndarray) -> tuple[np.ndarray, dict]:
        r = fair_pcc(p, true)
        constant_pred = varies & (np.ptp(p, axis=0) <= 0)
        return r, {
            "pcc_mean": float(r[varies].mean()) if varies.any() else float("nan"),
            "pcc_top100": float(r[top].mean()) if len(top) else float("nan"),
            "mse": float(((p - true) ** 2).mean()),
            "n_genes_constant_prediction": int(constant_pred.sum()),
        }

    pcc, s = score(pred)
    table = pd.DataFrame({"pcc": pcc, "mse": ((pred - true) ** 2).mean(axis=0),
                          "mae": np.abs(pred - true).mean(axis=0),
                          "mean_measured": mean_measured},
                         index=pd.Index(genes, name="gene"))
    summary = {
        "pcc_mean": s["pcc_mean"],
        "pcc_median": float(np.median(pcc[varies])) if varies.any() else float("nan"),
        "pcc_top100": s["pcc_top100"],
        "n_genes": int(len(varies)),
        "n_genes_scored": int(varies.sum()),
        "n_genes_constant_truth": int((~varies).sum()),
        "n_genes_constant_prediction": s["n_genes_constant_prediction"],
        "mse": s["mse"],
        "mae": float(np.abs(pred - true).mean()),
    }
    for name, values in (baselines or {}).items():
        values = np.asarray(values, dtype=np.float64)
        bp, bs = score(values)
        table[f"pcc_{name}"] = bp
        for key, v in bs.items():
            summary[f"baseline_{name}_{key}"] = v
        summary[f"fraction_genes_better_than_{name}"] = (
            float((pcc[varies] > bp[varies]).mean()) if varies.any() else float("nan"))
    table = table.sort_values("pcc", ascending=False, na_position="last")
    return summary, table


def best_baseline(summary: Mapping, table: pd.DataFrame, names: Sequence[str], label: str
                  ) -> dict:
    """The better of several baselines scored by :func:`spot_scores` (highest ``pcc_mean``), as
    ``baseline_<label>_*`` keys, ``baseline_<label>_method`` (its name) and
    ``fraction_genes_better_than_baseline``. Adds its per-gene PCC to ``table`` as
    ``pcc_baseline``."""
    best = max(names, key=lambda n: summary[f"baseline_{n}_pcc_mean"])
    table["pcc_baseline"] = table[f"pcc_{best}"]
    out = {f"baseline_{label}_{key}": summary[f"baseline_{best}_{key}"]
           for key in ("pcc_mean", "pcc_top100", "mse", "n_genes_constant_prediction")}
    out[f"baseline_{label}_method"] = best
    out["fraction_genes_better_than_baseline"] = summary[f"fraction_genes_better_than_{best}"]
    return out


#: the per-gene trust columns every run writes (recovery predictions, ``enhanced.h5ad``, the
#: per-gene CSV of the run folder), measured on held-out spots with :func:`spot_scores`
TRUST_COLUMNS = ("pcc", "pcc_baseline_knn", "pcc_gain", "beats_interpolation")


def gene_trust(table: pd.DataFrame) -> pd.DataFrame:
    """Per gene, does the model beat interpolation? From a :func:`spot_scores` table on which
    :func:`best_baseline` picked the better kNN (``pcc_baseline``): the :data:`TRUST_COLUMNS`,
    ``pcc_gain = pcc - pcc_baseline_knn`` and ``beats_interpolation = pcc > pcc_baseline_knn``
    (False for a gene that could not be scored: it does not vary among the held-out spots)."""
    pcc = table["pcc"].astype(float)
    base = table["pcc_baseline"].astype(float)
    gain = pcc - base
    return pd.DataFrame({"pcc": pcc, "pcc_baseline_knn": base, "pcc_gain": gain,
                         "beats_interpolation": (gain > 0).to_numpy(dtype=bool)},
                        index=table.index)


def split_counts(counts, *, seed: int, fraction: float = 0.5):
    """Binomial count splitting (data thinning): each count ``n`` of ``counts`` (whole numbers,
    sparse or dense) becomes ``Binomial(n, fraction)`` and ``n`` minus that; with Poisson
    counts the two parts are independent measurements of the same spots. Returns the two parts
    as CSR float64 matrices (the draws follow the stored values row by row, ``seed`` fixed)."""
    import scipy.sparse as sp

    counts = sp.csr_matrix(counts, dtype=np.float64)
    part = counts.copy()
    part.data = np.random.default_rng(seed).binomial(
        np.round(counts.data).astype(np.int64), fraction).astype(np.float64)
    return part, counts - part


#: seed of the binomial count split of :func:`noise_ceiling` (fixed: a sample has one ceiling)
NOISE_CEILING_SEED = 0


def noise_ceiling(adata, genes: Sequence[str], *, spots=None, seed: int = NOISE_CEILING_SEED,
                  target_sum: float = 1e4) -> tuple[dict, pd.Series]:
    """The noise ceiling: the best fair per-gene PCC any predictor could reach against these
    measured spots, given the counting noise of the measurement alone.

    Each spot's raw counts (``adata.X``, every gene; ``spots`` selects rows) are split
    binomially into two independent halves (count splitting / data thinning, p = 0.5, fixed
    ``seed``); each half is log-normalised as recovery does (``normalize_total`` to
    ``target_sum`` over all genes, ``log1p``; :func:`napari_trihrge.pp.log_normalised`). Per
    gene, the PCC ``r`` of the two halves over the spots is corrected to full depth with
    Spearman-Brown (``2r / (1 + r)``, the reliability of the measurement) and its square root is
    the gene's ceiling (0 where ``r <= 0`` or a half is constant). The means are over the genes
    :func:`spot_scores` averages (those that vary among the spots at full depth); other genes
    get NaN.

    Returns the summary (``noise_ceiling_pcc_mean``, ``noise_ceiling_pcc_top100``,
    ``noise_ceiling_pcc_median``, ``noise_ceiling_n_genes``, ``noise_ceiling_seed``) and the
    per-gene ceiling. Counts that are not whole numbers cannot be split: the values are then
    NaN and ``noise_ceiling_note`` says why.
    """
    import scipy.sparse as sp
    from anndata import AnnData

    from .pp import log_normalised

    genes = list(genes)
    sub = adata if spots is None else adata[spots]
    counts = sp.csr_matrix(sub.X, dtype=np.float64)
    nan = float("nan")
    summary: dict = {"noise_ceiling_seed": int(seed)}
    if counts.nnz and (np.any(counts.data < 0) or not np.allclose(counts.data,
                                                                  np.round(counts.data))):
        summary.update({"noise_ceiling_pcc_mean": nan, "noise_ceiling_pcc_top100": nan,
                        "noise_ceiling_pcc_median": nan, "noise_ceiling_n_genes": 0,
                        "noise_ceiling_note": "X does not hold raw counts (whole numbers)"})
        return summary, pd.Series(nan, index=pd.Index(genes, name="gene"), name="noise_ceiling")
    halves = split_counts(counts, seed=seed)

    def log_norm(x) -> np.ndarray:
        tmp = AnnData(X=sp.csr_matrix(x), var=pd.DataFrame(index=sub.var_names))
        values = log_normalised(tmp, target_sum=target_sum, genes=genes)
        return np.asarray(values.toarray() if sp.issparse(values) else values)

    varies, top = scored_genes(log_norm(counts))
    r = per_gene_pcc(log_norm(halves[0]), log_norm(halves[1]))
    r = np.where(np.isfinite(r) & (r > 0), r, 0.0)
    ceiling = np.sqrt(2.0 * r / (1.0 + r))
    ceiling[~varies] = np.nan
    summary.update({
        "noise_ceiling_pcc_mean": float(ceiling[varies].mean()) if varies.any() else nan,
        "noise_ceiling_pcc_top100": float(ceiling[top].mean()) if len(top) else nan,
        "noise_ceiling_pcc_median": float(np.median(ceiling[varies])) if varies.any() else nan,
        "noise_ceiling_n_genes": int(varies.sum()),
    })
    return summary, pd.Series(ceiling, index=pd.Index(genes, name="gene"), name="noise_ceiling")


def add_noise_ceiling(summary: dict, table: pd.DataFrame, adata, *, spots=None) -> None:
    """Put the :func:`noise_ceiling` of the measured spots beside a :func:`spot_scores` result
    (in place): its summary keys, ``fraction_of_ceiling`` (``pcc_mean`` over
    ``noise_ceiling_pcc_mean``) in ``summary`` and the per-gene ``noise_ceiling`` column in
    ``table``. ``adata`` holds the raw counts of every gene; ``spots`` the rows scored, in the
    order of the scores."""
    ceiling, per_gene = noise_ceiling(adata, list(table.index), spots=spots)
    summary.update(ceiling)
    top = ceiling["noise_ceiling_pcc_mean"]
    summary["fraction_of_ceiling"] = (float(summary["pcc_mean"] / top)
                                      if np.isfinite(top) and top > 0 else float("nan"))
    table["noise_ceiling"] = per_gene.reindex(table.index).to_numpy()


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
    PCC (as :func:`fair_pcc`: a constant map counts as 0) and RMSE inside the mask, SSIM over
    the map (data_range 1, background 0)."""
    from skimage.metrics import structural_similarity

    mask = np.asarray(mask, dtype=bool)
    p = minmax_per_gene(pred_maps, mask)
    t = minmax_per_gene(true_maps, mask)
    pcc = fair_pcc(p[:, mask].T, t[:, mask].T)  # a constant map counts as 0
    rmse = np.sqrt(((p[:, mask] - t[:, mask]) ** 2).mean(axis=1))
    ssim = np.array([structural_similarity(p[g], t[g], data_range=1.0) for g in range(len(p))])
    table = pd.DataFrame({"pcc": pcc, "ssim": ssim, "rmse": rmse},
                         index=pd.Index(genes, name="gene"))
    summary = {"pcc_mean": float(np.nanmean(pcc)), "ssim_mean": float(ssim.mean()),
               "rmse": float(rmse.mean())}
    return summary, table


#: the IoU at which a predicted nucleus counts as detecting a true one
MATCH_IOU = 0.5


def instance_scores(true_labels: np.ndarray, pred_labels: np.ndarray, *,
                    iou: float = MATCH_IOU) -> dict[str, float]:
    """Instance segmentation (nuclei) against the truth, two label images (0 = background):
    detection ``f1`` / ``precision`` / ``recall`` with one-to-one matches at IoU >= ``iou``
    (greedy, best IoU first), panoptic quality ``pq`` (= detection quality ``dq`` x
    segmentation quality ``sq``, Kirillov et al.) and the aggregated Jaccard index ``aji``
    (Kumar et al. 2017), with the object counts."""
    t = np.asarray(true_labels).ravel().astype(np.int64)
    p = np.asarray(pred_labels).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {np.shape(true_labels)} vs "
                         f"{np.shape(pred_labels)}")
    area_t = np.bincount(t, minlength=1)
    area_p = np.bincount(p, minlength=1)
    ids_t = np.flatnonzero(area_t[1:]) + 1
    ids_p = np.flatnonzero(area_p[1:]) + 1
    both = (t > 0) & (p > 0)
    key = t[both] * (len(area_p)) + p[both]
    pairs, inter = np.unique(key, return_counts=True)
    pt, pp = pairs // len(area_p), pairs % len(area_p)
    union = area_t[pt] + area_p[pp] - inter
    pair_iou = inter / union
    # one-to-one matches at IoU >= iou, best first
    order = np.argsort(-pair_iou, kind="stable")
    used_t, used_p = set(), set()
    matched_iou = []
    for k in order:
        if pair_iou[k] < iou:
            break
        if pt[k] in used_t or pp[k] in used_p:
            continue
        used_t.add(pt[k])
        used_p.add(pp[k])
        matched_iou.append(pair_iou[k])
    tp = len(matched_iou)
    fp, fn = len(ids_p) - tp, len(ids_t) - tp
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    sq = float(np.mean(matched_iou)) if tp else 0.0
    # AJI: every true object with the predicted object of its best IoU
    best = np.full(len(area_t), -1, dtype=np.int64)
    best_iou = np.zeros(len(area_t))
    for k in np.argsort(pair_iou, kind="stable"):
        best[pt[k]], best_iou[pt[k]] = k, pair_iou[k]
    inter_sum, union_sum = 0.0, 0.0
    used = np.zeros(len(area_p), dtype=bool)
    for i in ids_t:
        k = best[i]
        if k < 0:
            union_sum += area_t[i]
            continue
        inter_sum += inter[k]
        union_sum += union[k]
        used[pp[k]] = True
    union_sum += float(area_p[ids_p][~used[ids_p]].sum())
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
            "dq": float(f1), "sq": sq, "pq": float(f1 * sq),
            "aji": float(inter_sum / union_sum) if union_sum else 0.0,
            "n_true": int(len(ids_t)), "n_pred": int(len(ids_p)), "n_matched": int(tp)}


__all__ = [
    "TOP_GENES",
    "TRUST_COLUMNS",
    "gene_trust",
    "per_gene_pcc",
    "fair_pcc",
    "spot_scores",
    "best_baseline",
    "scored_genes",
    "NOISE_CEILING_SEED",
    "split_counts",
    "noise_ceiling",
    "add_noise_ceiling",
    "kmeans_ari",
    "minmax_per_gene",
    "map_scores",
    "MATCH_IOU",
    "instance_scores",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
