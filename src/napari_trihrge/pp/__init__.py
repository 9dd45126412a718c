"""Preprocessing (``napari_trihrge.pp``): gene selection and normalisation, scanpy style."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_adata
from ..errors import TrihrgeInputError
from .markers import (
    DEFAULT_MARKER_PANEL,
    MARKER_PANEL_CHOICES,
    MARKER_PANELS,
    marker_genes_detected,
)

#: how many highly variable genes a model learns unless told otherwise (RunConfig.n_top_genes)
DEFAULT_N_TOP_GENES = 1000


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def check_counts(adata: AnnData) -> None:
    """Raise an actionable error when the counts cannot be used.

    Empty, not finite, negative or all zero counts are refused: the same check every reader runs.
    """
    from ..io.sample import check_counts as check_count_matrix

    check_adata(adata, need_spatial=False)
    check_count_matrix(adata.X)


def select_genes(adata: AnnData, *, n_top_genes: int = DEFAULT_N_TOP_GENES,
                 extra_genes: Sequence[str] = (), marker_panel: str | None = None,
                 min_spots: int = 3) -> list[str]:
    """Highly variable genes (scanpy ``seurat_v3`` on raw counts) plus extra and marker genes.

    Genes detected in fewer than ``min_spots`` spots are not candidates. Extra genes that are
    absent from the data are an error naming them; all requested extra genes are kept even when
    they are not highly variable. The genes of ``marker_panel`` (:mod:`.markers`) that the sample
    detects in enough spots are added after them; the others are skipped, not an error.
    """
    import scanpy as sc

    check_counts(adata)
    missing = [g for g in extra_genes if g not in adata.var_names]
    if extra_genes and len(missing) == len(extra_genes):
        raise TrihrgeInputError(
            f"none of the requested genes ({', '.join(list(extra_genes)[:5])}) are in the data",
            "check the gene symbols (case matters) against the sample's gene names",
        )
    if missing:
        raise TrihrgeInputError(f"requested genes not in the data: {', '.join(missing[:10])}",
                                "remove them or check their spelling (case matters)")
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= min_spots
    candidates = adata[:, detected]
    n_top = int(min(n_top_genes, candidates.n_vars))
    if n_top < 1:
        raise TrihrgeInputError("no gene is detected in enough spots",
                                "check that the counts are raw UMI counts per spot")
    tmp = AnnData(X=sp.csr_matrix(candidates.X, dtype=np.float32))
    tmp.var_names = candidates.var_names
    if n_top >= tmp.n_vars:
        hvg = list(tmp.var_names)
    else:
        # seurat_v3 fits log variance on log mean with loess (span 0.3); on a small sample
        # where many sparse genes share nearly the same low mean the fit is singular, and a
        # wider span is the remedy
        for span in (0.3, 0.5, 1.0):
            try:
                sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top,
                                            subset=False, span=span)
                break
            except ValueError:
                if span == 1.0:
                    raise
        ranks = tmp.var["highly_variable_rank"].to_numpy()
        order = np.argsort(np.where(np.isnan(ranks), np.inf, ranks), kind="stable")[:n_top]
        hvg = list(tmp.var_names[order])
    genes = hvg + [g for g in extra_genes if g not in hvg]
    markers, _ = marker_genes_detected(adata, panel=marker_panel, min_spots=min_spots)
    return genes + [g for g in markers if g not in set(genes)]


def log_normalised(adata: AnnData, *, target_sum: float = 1e4,
                   genes: Sequence[str] | None = None):
    """Log-normalise expression, keeping sparsity (CSR stays CSR, float64).

    Library size normalised to ``target_sum`` per spot over ALL genes (scanpy's
    ``normalize_total``), then scanpy's ``log1p``; only the columns of ``genes`` when given.
    """
    import scanpy as sc

    check_adata(adata, need_spatial=False)
    x = adata.X.tocsr() if sp.issparse(adata.X) else np.asarray(adata.X)
    tmp = AnnData(X=x.astype(np.float64))
    with warnings.catch_warnings():
        # a spot without counts (e.g. one half of a split spot) stays 0, as it should
        warnings.filterwarnings("ignore", message="Some cells have zero counts")
        sc.pp.normalize_total(tmp, target_sum=target_sum)
    if genes is not None:
        tmp = tmp[:, adata.var_names.get_indexer(list(genes))].copy()
    sc.pp.log1p(tmp)
    return tmp.X


def normalize_log1p(adata: AnnData, *, target_sum: float = 1e4,
                    genes: Sequence[str] | None = None) -> np.ndarray:
    """:func:`log_normalised` as a dense float32 array."""
    return _dense(log_normalised(adata, target_sum=target_sum, genes=genes)).astype(np.float32)


def is_log_normalised(adata: AnnData) -> bool:
    """Tell whether ``X`` already holds log-normalised expression (engine outputs), not counts.

    Engine outputs are marked (``uns['trihrge_preprocessing']`` or ``uns['trihrge']['x_kind']``);
    otherwise integer-valued ``X`` is taken as raw counts.
    """
    check_adata(adata, need_spatial=False)
    if "trihrge_preprocessing" in adata.uns:
        return True
    meta = adata.uns.get("trihrge", {})
    kind = meta.get("x_kind")
    if kind is not None:
        return str(kind) != "counts"
    if meta.get("task") in ("recovery", "enhance"):  # engine predictions
        return True
    x = adata.X
    vals = x.data if sp.issparse(x) else np.asarray(x).ravel()
    sample = vals[: 200_000]
    if sample.size == 0:
        return False
    return not np.allclose(sample, np.round(sample))


def gene_expression(adata: AnnData, genes: Sequence[str], *, target_sum: float = 1e4
                    ) -> pd.DataFrame:
    """Return the log-normalised expression of ``genes`` per spot (rows = ``obs_names``).

    Raw counts go through :func:`normalize_log1p`, log-normalised ``X`` is returned as is.
    """
    check_adata(adata, need_spatial=False)
    genes = list(genes)
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise TrihrgeInputError(f"genes not in the sample: {', '.join(missing[:10])}",
                                "check the gene symbols (case matters)")
    if is_log_normalised(adata):
        cols = _dense(adata.X[:, adata.var_names.get_indexer(genes)]).astype(np.float32)
    else:
        cols = _log_normalised_columns(adata, genes, target_sum)
    return pd.DataFrame(cols, index=adata.obs_names.copy(), columns=genes)


def _log_normalised_columns(adata: AnnData, genes: Sequence[str], target_sum: float
                            ) -> np.ndarray:
    """:func:`normalize_log1p` of a few ``genes`` without normalising the other columns.

    The same numbers as scanpy's ``normalize_total`` + ``log1p`` (library size over all genes,
    in float64); the viewer calls it at every gene switch.
    """
    x = adata.X
    totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    scale = totals / target_sum
    scale[scale == 0] = 1.0  # a spot without counts stays 0
    sub = x[:, adata.var_names.get_indexer(list(genes))]
    sub = np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float64)
    return np.log1p(sub / scale[:, None]).astype(np.float32)


def prepare_expression(adata: AnnData, *, n_top_genes: int = DEFAULT_N_TOP_GENES,
                       extra_genes: Sequence[str] = (), marker_panel: str | None = None,
                       target_sum: float = 1e4) -> AnnData:
    """Select genes and return a new AnnData whose ``X`` is log-normalised expression (dense).

    Normalisation uses every gene's counts (as scanpy's ``normalize_total`` before subsetting);
    raw counts of the selected genes are kept in ``layers['counts']``. Spots with zero counts are
    dropped. ``marker_panel`` adds that panel's detected genes (:func:`select_genes`); which were
    added and which skipped is recorded in ``uns['trihrge_preprocessing']``. Spatial metadata (``obsm`` arrays, ``uns``, ``obs``) is carried over; per-gene tables
    in ``obsm`` (a task's recorded predictions, see :func:`napari_trihrge.tl.store_result`) are not.
    """
    check_counts(adata)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    adata = adata[totals > 0].copy() if (totals <= 0).any() else adata
    genes = select_genes(adata, n_top_genes=n_top_genes, extra_genes=extra_genes,
                         marker_panel=marker_panel)
    markers, skipped = marker_genes_detected(adata, panel=marker_panel)
    idx = adata.var_names.get_indexer(genes)
    out = AnnData(X=normalize_log1p(adata, target_sum=target_sum, genes=genes), obs=adata.obs.copy(), var=adata.var.iloc[idx].copy(),
                  obsm={k: np.asarray(v) for k, v in adata.obsm.items()
                        if not isinstance(v, pd.DataFrame)}, uns=dict(adata.uns))
    out.layers["counts"] = _dense(adata.X[:, idx]).astype(np.float32)
    out.uns["trihrge_preprocessing"] = {"n_top_genes": int(n_top_genes), "flavor": "seurat_v3",
                                        "target_sum": float(target_sum),
                                        "extra_genes": list(extra_genes),
                                        "marker_panel": marker_panel or "none",
                                        "marker_genes": markers, "marker_genes_skipped": skipped}
    return out


__all__ = [
    "DEFAULT_MARKER_PANEL",
    "DEFAULT_N_TOP_GENES",
    "MARKER_PANELS",
    "MARKER_PANEL_CHOICES",
    "marker_genes_detected",
    "check_counts",
    "select_genes",
    "log_normalised",
    "normalize_log1p",
    "is_log_normalised",
    "gene_expression",
    "prepare_expression",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
