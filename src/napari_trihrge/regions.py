"""Region statistics: mean expression inside vs outside drawn regions (no Qt).

Regions are polygons in row/col micrometres (napari world coordinates). Expression comes as
:class:`ExpressionSet` s - points with values: the measured spots, and the enhanced expression
(virtual spots, or a sub-sampled grid of the dense maps). For every region and gene the table
holds the means inside and outside and their difference; the genes that differ most come first.
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


@dataclass
class RegionStats:
    """``table``: one row per (region, gene) - the ``top_n`` genes per region, most different
    first; ``summary``: one row per region (counts of points inside); ``messages``: plain-language
    notes (for example a region containing no spots)."""

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
    """Boolean (n_regions, n_points): which points lie inside each polygon."""
    pts = np.asarray(points_rc_um, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((len(polygons), len(pts)), dtype=bool)
    for r, poly in enumerate(polygons):
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


def region_statistics(polygons: Sequence[np.ndarray], measured: ExpressionSet | None = None,
                      enhanced: ExpressionSet | None = None, *, top_n: int = 20,
                      region_names: Sequence[str] | None = None) -> RegionStats:
    """Mean expression inside vs outside each region, for the measured spots and the enhanced
    expression; genes ranked by the absolute difference of means (enhanced when available,
    else measured). A region without spots yields a message instead of numbers."""
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
        common = set(measured.genes)
        genes_m = [g for g in genes if g in common]
    else:
        genes_m = genes if measured is not None else []

    n_reg = len(polygons)
    res: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for key, es in (("enhanced", enhanced), ("measured", measured)):
        if es is None:
            continue
        inside = points_in_regions(polygons, es.points_rc_um)
        counts[key] = inside.sum(axis=1)
        use = genes if key == "enhanced" else genes_m
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
    messages: list[str] = []
    rows = []
    summary = []
    for r in range(n_reg):
        n_meas = int(counts["measured"][r]) if "measured" in counts else None
        n_enh = int(counts["enhanced"][r]) if "enhanced" in counts else None
        note = ""
        if (n_meas in (None, 0)) and (n_enh in (None, 0)):
            note = (f"{names[r]} contains no spots: draw it over the tissue, around at least "
                    "one spot")
        elif n_meas == 0:
            note = (f"{names[r]} contains no measured spot centre: only enhanced expression is "
                    "compared (draw a larger region to compare with measured spots)")
        if note:
            messages.append(note)
        summary.append({"region": names[r], "measured_spots_inside": n_meas,
                        "enhanced_points_inside": n_enh, "note": note})
        d = diff[r]
        if not np.isfinite(d).any():
            continue
        order = np.argsort(-np.nan_to_num(np.abs(d), nan=-1.0), kind="stable")[:top_n]
        for g in order:
            if not np.isfinite(d[g]):
                continue
            row = {"region": names[r], "gene": genes[g]}
            for key in ("enhanced_inside", "enhanced_outside", "measured_inside",
                        "measured_outside"):
                if key in res:
                    row[key] = float(res[key][r, g])
            row["difference"] = float(d[g])
            rows.append(row)
    cols = ["region", "gene"] + [k for k in ("enhanced_inside", "enhanced_outside",
                                             "measured_inside", "measured_outside") if k in res]
    table = pd.DataFrame(rows, columns=cols + ["difference"])
    return RegionStats(table=table, summary=pd.DataFrame(summary), messages=messages)


# ------------------------------------------------------------------------------------------
# Expression sets from engine objects
# ------------------------------------------------------------------------------------------
def adata_expression_set(adata, name: str = "measured",
                         genes: Sequence[str] | None = None) -> ExpressionSet:
    """Log-normalised expression of an AnnData's spots (counts are normalised on the fly)."""
    from .preprocessing import gene_expression, is_log_normalised, log_normalised
    from .tasks import sample_geometry

    rc = sample_geometry(adata)[0]
    if genes is None:
        x = adata.X if is_log_normalised(adata) else log_normalised(adata)
        vals = (sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x)
                else np.asarray(x, np.float32))
        return ExpressionSet(name, rc, vals, list(map(str, adata.var_names)))
    df = gene_expression(adata, genes)
    return ExpressionSet(name, rc, df.to_numpy(), list(df.columns))


def maps_expression_set(maps, genes: Sequence[str] | None = None, *,
                        max_values: int = 50_000_000, name: str = "enhanced") -> ExpressionSet:
    """Dense maps as points: the in-tissue pixel centres of a sub-sampled grid (every k-th pixel
    so that points x genes stays below ``max_values``), values read gene by gene."""
    genes = list(maps.gene_names) if genes is None else list(genes)
    shape = np.asarray(maps.values[0]).shape if len(maps.gene_names) else (0, 0)
    mask = np.ones(shape, bool) if getattr(maps, "mask", None) is None else np.asarray(
        maps.mask, dtype=bool)
    n_in = max(1, int(mask.sum()))
    step = max(1, int(np.ceil(np.sqrt(n_in * max(1, len(genes)) / max_values))))
    sub = np.zeros_like(mask)
    sub[::step, ::step] = True
    sub &= mask
    ii, jj = np.nonzero(sub)
    origin = np.asarray(maps.origin_rc_um, dtype=np.float64)
    pts = origin[None, :] + np.stack([ii, jj], axis=1) * float(maps.stride_um)
    names = list(maps.gene_names)
    vals = np.empty((len(ii), len(genes)), dtype=np.float32)
    for k, g in enumerate(genes):
        plane = np.asarray(maps.values[names.index(g)], dtype=np.float32)
        vals[:, k] = plane[ii, jj]
    vals = np.nan_to_num(vals, nan=0.0)
    return ExpressionSet(name, pts, vals, genes)
