"""Region statistics: what differs in a drawn region against the rest of the tissue (no Qt).

Regions are polygons in row/col micrometres (napari world coordinates). Expression comes as
:class:`ExpressionSet` s - points with values: the measured spots, and the enhanced expression
(virtual spots, or a sub-sampled grid of the dense maps). For every region and gene the table
holds the means inside and outside, the log2 fold change, a Wilcoxon rank-sum test on the
measured spots with Benjamini-Hochberg FDR and the spot counts behind it; the genes that differ
most come first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from skimage.measure import points_in_poly

from .errors import TrihrgeInputError

AREA_SHAPES = ("polygon", "rectangle", "ellipse")


@dataclass
class ExpressionSet:
    """Expression at points: ``values`` (n_points, n_genes) dense or sparse, positions row/col um."""

    name: str
    points_rc_um: np.ndarray
    values: np.ndarray | sp.spmatrix
    genes: list[str]

    def __post_init__(self):
        self.points_rc_um = np.asarray(self.points_rc_um, dtype=np.float64).reshape(-1, 2)
        self.genes = [str(g) for g in self.genes]
        if self.values.shape != (len(self.points_rc_um), len(self.genes)):
            raise TrihrgeInputError(
                f"{self.name}: values have shape {self.values.shape}, expected "
                f"({len(self.points_rc_um)}, {len(self.genes)})",
                "pass one row per point and one column per gene")


#: fewest measured spots on each side (inside and outside a region) for a rank-sum test
MIN_SPOTS_FOR_TEST = 5
#: pseudo-count (in normalised counts per 10 000) of the log2 fold change: one count, as
#: Seurat does, so a gene absent on one side gives a finite, readable fold change
FOLD_CHANGE_PSEUDOCOUNT = 1.0

#: the columns a reader needs first (the rest follows in the table and the CSV)
KEY_COLUMNS = ("region", "gene", "log2_fold_change", "fdr", "measured_inside",
               "measured_outside", "n_spots_inside", "n_spots_outside")


@dataclass
class RegionStats:
    """``table``: one row per (region, gene) - the ``top_n`` genes per region, the most
    different first (largest rank-sum z-score on the measured spots, else largest difference of
    means); key columns first (:data:`KEY_COLUMNS`). ``summary``: one row per region (spots
    inside, whether it could be tested); ``messages``: plain-language notes (for example a
    region with too few spots for a test)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    messages: list[str] = field(default_factory=list)


def shape_polygon_rc_um(vertices: np.ndarray, shape_type: str = "polygon",
                        n_ellipse: int = 72) -> np.ndarray | None:
    """A napari shape as a closed polygon (k, 2) in row/col um; ``None`` for lines and paths.

    napari stores an ellipse as the four corners of its (possibly rotated) bounding box.
    """
    v = np.asarray(vertices, dtype=np.float64)[:, -2:]
    if shape_type not in AREA_SHAPES:
        return None
    if shape_type == "ellipse":
        centre = v.mean(axis=0)
        a = (v[1] - v[0]) / 2.0
        b = (v[3] - v[0]) / 2.0
        t = np.linspace(0.0, 2 * np.pi, n_ellipse, endpoint=False)
        return centre + np.cos(t)[:, None] * a + np.sin(t)[:, None] * b
    return v


def points_in_regions(polygons: Sequence[np.ndarray], points_rc_um: np.ndarray) -> np.ndarray:
    """Boolean (n_regions, n_points): which points lie inside each polygon (or region with
    holes and several parts: anything with ``contains_rc_um``, such as QuPath annotations read by
    ``io.geojson.read_regions``)."""
    pts = np.asarray(points_rc_um, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((len(polygons), len(pts)), dtype=bool)
    for r, poly in enumerate(polygons):
        if hasattr(poly, "contains_rc_um"):
            out[r] = poly.contains_rc_um(pts)
            continue
        poly = np.asarray(poly, dtype=np.float64)
        if len(poly) < 3 or len(pts) == 0:
            continue
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        near = np.all((pts >= lo) & (pts <= hi), axis=1)
        if near.any():
            out[r, near] = points_in_poly(pts[near], poly)
    return out


def _region_means(inside: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``values`` over the points inside and outside each region (NaN when empty)."""
    n_in = inside.sum(axis=1).astype(np.float64)
    n_out = inside.shape[1] - n_in
    m_in = sp.csr_matrix(inside.astype(np.float64))
    sums_in = m_in @ values
    sums_in = sums_in.toarray() if sp.issparse(sums_in) else np.asarray(sums_in)
    total = np.asarray(values.sum(axis=0)).ravel()
    sums_out = total[None, :] - sums_in
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(n_in[:, None] > 0, sums_in / n_in[:, None], np.nan)
        mean_out = np.where(n_out[:, None] > 0, sums_out / n_out[:, None], np.nan)
    return mean_in, mean_out


def log2_fold_change(mean_in_log: np.ndarray, mean_out_log: np.ndarray) -> np.ndarray:
    """log2 fold change of two means of log-normalised (``log1p``) expression, back on the
    normalised-count scale (as scanpy's ``rank_genes_groups``), with a pseudo-count of
    :data:`FOLD_CHANGE_PSEUDOCOUNT`."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.log2((np.expm1(mean_in_log) + FOLD_CHANGE_PSEUDOCOUNT)
                       / (np.expm1(mean_out_log) + FOLD_CHANGE_PSEUDOCOUNT))


def rank_sum_test(values, inside: np.ndarray, *, chunk_genes: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilcoxon rank-sum (Mann-Whitney U, normal approximation with tie correction)
    of every gene (column of ``values``) between the points ``inside`` and the others.
    Returns ``(z, p)``; a gene that is constant over all points gets z = 0, p = 1.

    ``z`` is computed from U itself (with the continuity correction of the p-value), so it
    keeps ranking genes where ``p`` underflows to 0 (thousands of cells in a region)."""
    from scipy.stats import mannwhitneyu

    inside = np.asarray(inside, dtype=bool)
    n_genes = values.shape[1]
    z = np.zeros(n_genes)
    p = np.ones(n_genes)
    n1, n2 = int(inside.sum()), int((~inside).sum())
    for a in range(0, n_genes, chunk_genes):
        block = values[:, a:a + chunk_genes]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64)
        varies = np.ptp(block, axis=0) > 0
        if not varies.any():
            continue
        res = mannwhitneyu(block[inside][:, varies], block[~inside][:, varies], axis=0,
                           alternative="two-sided", method="asymptotic")
        pv = np.nan_to_num(np.asarray(res.pvalue, float), nan=1.0)
        centred = np.asarray(res.statistic, float) - n1 * n2 / 2.0
        n = n1 + n2
        variance = n1 * n2 / 12.0 * ((n + 1) - _tie_term(block[:, varies]) / (n * (n - 1)))
        idx = np.arange(a, a + block.shape[1])[varies]
        p[idx] = pv
        z[idx] = np.sign(centred) * np.maximum(np.abs(centred) - 0.5, 0.0) / np.sqrt(variance)
    return z, p


def _tie_term(values: np.ndarray) -> np.ndarray:
    """Sum of ``t**3 - t`` over the groups of ``t`` tied values of each column."""
    n, g = values.shape
    ordered = np.sort(values, axis=0)
    starts_run = np.ones((n, g), dtype=bool)
    starts_run[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(starts_run.T.ravel())  # column by column: no run spans two
    lengths = np.diff(np.append(starts, n * g)).astype(np.float64)
    return np.bincount(starts // n, weights=lengths ** 3 - lengths, minlength=g)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (FDR) of the finite entries; NaN stays NaN."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def region_statistics(polygons: Sequence[np.ndarray], measured: ExpressionSet | None = None,
                      enhanced: ExpressionSet | None = None, *, top_n: int | None = 20,
                      region_names: Sequence[str] | None = None,
                      min_spots: int = MIN_SPOTS_FOR_TEST) -> RegionStats:
    """Each region against the rest of the tissue, per gene: mean measured and enhanced
    expression inside and outside, the log2 fold change, and a two-sided Wilcoxon rank-sum test
    on the measured spots with Benjamini-Hochberg FDR over the genes of the region, with the
    number of spots behind each test. A region with fewer than ``min_spots`` measured spots
    inside (or outside) gets means but no test, and a message saying so. Without measured spots
    (a bare H&E) the table holds the enhanced columns only, and a message says why there is no
    test. Every measured gene is tested, the enhanced ones and the others alike; with both
    sets, the ``mapped`` column says which genes the enhanced expression has. ``top_n=None``
    keeps every gene."""
    if measured is None and enhanced is None:
        raise TrihrgeInputError("no expression to summarise",
                                "open a sample (and run Enhance for enhanced expression)")
    if len(polygons) == 0:
        raise TrihrgeInputError("no region drawn",
                                "draw a polygon, rectangle or ellipse on the regions layer")
    names = list(region_names) if region_names is not None else [
        f"region {i + 1}" for i in range(len(polygons))]
    genes = list(enhanced.genes) if enhanced is not None else list(measured.genes)
    if enhanced is not None and measured is not None:
        mapped = set(genes)
        genes += [g for g in measured.genes if g not in mapped]  # tested, without a map
        genes_m = list(measured.genes)
    else:
        genes_m = genes if measured is not None else []
    pos_m = pd.Index(genes).get_indexer(genes_m)

    n_reg = len(polygons)
    res: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    inside_sets: dict[str, np.ndarray] = {}
    for key, es in (("enhanced", enhanced), ("measured", measured)):
        if es is None:
            continue
        inside = points_in_regions(polygons, es.points_rc_um)
        inside_sets[key] = inside
        counts[key] = inside.sum(axis=1)
        use = list(es.genes) if key == "enhanced" else genes_m
        cols = pd.Index(es.genes).get_indexer(use)
        vals = es.values[:, cols]
        m_in, m_out = _region_means(inside, vals)
        full_in = np.full((n_reg, len(genes)), np.nan)
        full_out = np.full((n_reg, len(genes)), np.nan)
        pos = pd.Index(genes).get_indexer(use)
        full_in[:, pos], full_out[:, pos] = m_in, m_out
        res[f"{key}_inside"], res[f"{key}_outside"] = full_in, full_out

    primary = "enhanced" if enhanced is not None else "measured"
    diff = res[f"{primary}_inside"] - res[f"{primary}_outside"]
    if primary == "enhanced" and measured is not None:  # genes without a map: measured
        diff = np.where(np.isfinite(diff), diff,
                        res["measured_inside"] - res["measured_outside"])
    n_points = len(measured.points_rc_um) if measured is not None else 0
    measured_vals = None
    if measured is not None:
        measured_vals = measured.values[:, pd.Index(measured.genes).get_indexer(genes_m)]
    messages: list[str] = []
    if measured is None:
        messages.append("No measured spots on this slide: the Wilcoxon rank-sum test needs "
                        "them and cannot be run (no p-values or FDR); only the enhanced means "
                        "inside and outside are compared.")
    n_mapped = len(enhanced.genes) if enhanced is not None else 0
    rows = []
    summary = []
    for r in range(n_reg):
        n_meas = int(counts["measured"][r]) if "measured" in counts else None
        n_enh = int(counts["enhanced"][r]) if "enhanced" in counts else None
        n_out = n_points - n_meas if n_meas is not None else None
        note = ""
        if (n_meas in (None, 0)) and (n_enh in (None, 0)):
            note = (f"{names[r]} contains no spots: draw it over the tissue, around at least "
                    "one spot")
        elif n_meas == 0:
            note = (f"{names[r]} contains no measured spot centre: only enhanced expression is "
                    "compared, without a test (draw a larger region to test measured spots)")
        elif n_meas is not None and (n_meas < min_spots or n_out < min_spots):
            side = "inside" if n_meas < min_spots else "outside"
            k = n_meas if side == "inside" else n_out
            note = (f"{names[r]} has too few measured spots {side} for a test ({k}; at least "
                    f"{min_spots} needed): means only, draw a larger region")
        if note:
            messages.append(note)
        tested = (n_meas is not None and n_meas >= min_spots and n_out >= min_spots
                  and len(genes_m) > 0)
        z = np.full(len(genes), np.nan)
        pval = np.full(len(genes), np.nan)
        if tested:
            zm, pm = rank_sum_test(measured_vals, inside_sets["measured"][r])
            z[pos_m], pval[pos_m] = zm, pm
        fdr = benjamini_hochberg(pval)
        summary.append({"region": names[r], "measured_spots_inside": n_meas,
                        "measured_spots_outside": n_out, "enhanced_points_inside": n_enh,
                        "tested": bool(tested), "note": note})
        d = diff[r]
        if not np.isfinite(d).any():
            continue
        lfc_m = (log2_fold_change(res["measured_inside"][r], res["measured_outside"][r])
                 if "measured_inside" in res else None)
        lfc_e = (log2_fold_change(res["enhanced_inside"][r], res["enhanced_outside"][r])
                 if "enhanced_inside" in res else None)
        # most different first: |z| of the test, then the absolute difference of means
        abs_z = np.nan_to_num(np.abs(z), nan=-1.0, posinf=1e300)
        abs_d = np.nan_to_num(np.abs(d), nan=-1.0)
        order = np.lexsort((-abs_d, -abs_z))
        order = [g for g in order if np.isfinite(d[g])][:top_n]
        for g in order:
            lfc = lfc_m if lfc_m is not None and np.isfinite(lfc_m[g]) else lfc_e
            row = {"region": names[r], "gene": genes[g], "mapped": g < n_mapped,
                   "log2_fold_change": float(lfc[g]) if lfc is not None else np.nan,
                   "fdr": float(fdr[g]),
                   "measured_inside": float(res["measured_inside"][r, g])
                   if "measured_inside" in res else np.nan,
                   "measured_outside": float(res["measured_outside"][r, g])
                   if "measured_outside" in res else np.nan,
                   "n_spots_inside": n_meas if n_meas is not None else 0,
                   "n_spots_outside": n_out if n_out is not None else 0,
                   "p_value": float(pval[g]), "z_score": float(z[g])}
            for key in ("enhanced_inside", "enhanced_outside"):
                if key in res:
                    row[key] = float(res[key][r, g])
            if lfc_e is not None:
                row["log2_fold_change_enhanced"] = float(lfc_e[g])
            row["difference"] = float(d[g])
            rows.append(row)
    cols = list(KEY_COLUMNS) + ["p_value", "z_score"]
    if measured is not None and enhanced is not None:
        cols.insert(cols.index("gene") + 1, "mapped")
    if measured is None:  # nothing measured: no test, no spot counts, no measured fold change
        cols = [c for c in cols if c not in (
            "measured_inside", "measured_outside", "log2_fold_change", "fdr", "p_value",
            "z_score", "n_spots_inside", "n_spots_outside")]
    cols += [k for k in ("enhanced_inside", "enhanced_outside") if k in res]
    if enhanced is not None:
        cols.append("log2_fold_change_enhanced")
    cols.append("difference")
    table = pd.DataFrame(rows)
    table = table.reindex(columns=cols)
    return RegionStats(table=table, summary=pd.DataFrame(summary), messages=messages)


# ------------------------------------------------------------------------------------------
# Expression sets from engine objects
# ------------------------------------------------------------------------------------------
def adata_expression_set(adata, name: str = "measured",
                         genes: Sequence[str] | None = None) -> ExpressionSet:
    """Log-normalised expression of an AnnData's spots (counts are normalised on the fly)."""
    from .pp import gene_expression, is_log_normalised, log_normalised
    from .tl import sample_geometry

    rc = sample_geometry(adata)[0]
    if genes is None:
        x = adata.X if is_log_normalised(adata) else log_normalised(adata)
        vals = (sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x)
                else np.asarray(x, np.float32))
        return ExpressionSet(name, rc, vals, list(map(str, adata.var_names)))
    df = gene_expression(adata, genes)
    return ExpressionSet(name, rc, df.to_numpy(), list(df.columns))


def cells_expression_set(cells, name: str = "cells") -> ExpressionSet:
    """Cells (an AnnData of ``trihrge cells``: ``obs`` row_um / col_um) as points; cells
    outside the map have no values (NaN) and are left out, not counted as 0."""
    rc = cells.obs[["row_um", "col_um"]].to_numpy(dtype=np.float64)
    values = np.asarray(cells.X, dtype=np.float32)
    mapped = np.isfinite(values).all(axis=1)
    return ExpressionSet(name, rc[mapped], values[mapped], list(cells.var_names))


def maps_expression_set(maps, genes: Sequence[str] | None = None, *,
                        max_values: int = 50_000_000, name: str = "enhanced") -> ExpressionSet:
    """Dense maps as points: the in-tissue pixel centres of a sub-sampled grid (every k-th pixel
    so that points x genes stays below ``max_values``), values read gene by gene; factorised
    maps (``values_at``) compute every gene at those points only, their networks run once."""
    genes = list(maps.gene_names) if genes is None else list(genes)
    if getattr(maps, "mask", None) is not None:
        mask = np.asarray(maps.mask, dtype=bool)
    else:
        mask = np.ones(np.asarray(maps.values[0]).shape if len(maps.gene_names) else (0, 0),
                       dtype=bool)
    n_in = max(1, int(mask.sum()))
    step = max(1, int(np.ceil(np.sqrt(n_in * max(1, len(genes)) / max_values))))
    sub = np.zeros_like(mask)
    sub[::step, ::step] = True
    sub &= mask
    ii, jj = np.nonzero(sub)
    origin = np.asarray(maps.origin_rc_um, dtype=np.float64)
    pts = origin[None, :] + np.stack([ii, jj], axis=1) * float(maps.stride_um)
    names = list(maps.gene_names)
    values_at = getattr(maps, "values_at", None)
    if values_at is not None:
        vals = np.ascontiguousarray(values_at([names.index(g) for g in genes], ii, jj).T)
    else:
        vals = np.empty((len(ii), len(genes)), dtype=np.float32)
        for k, g in enumerate(genes):
            plane = np.asarray(maps.values[names.index(g)], dtype=np.float32)
            vals[:, k] = plane[ii, jj]
    vals = np.nan_to_num(vals, nan=0.0)
    return ExpressionSet(name, pts, vals, genes)
