"""Plots (``napari_trihrge.pl``), readable without the viewer.

AnnData-first spot plots over the H&E and the run overview figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _robust_limits(*arrays: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def overview_figure(image, spots_rc_um: np.ndarray, spots_expr: np.ndarray, genes: Sequence[str],
                    show_genes: Sequence[str], *, spot_diameter_um: float, maps=None,
                    virtual_rc_um: np.ndarray | None = None, virtual_expr: np.ndarray | None = None,
                    truth_maps: np.ndarray | None = None, title: str = "", path: str | Path | None = None):
    """Plot one row per gene: H&E, measured spots, the enhanced result and, when known, the truth.

    The enhanced result is a dense map or virtual spots. One colour scale (with a colour bar) per
    gene is shared by all panels of that row, so measured and enhanced can be compared honestly.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    thumb, extent = _thumbnail(image)
    has_truth = truth_maps is not None
    n_cols = 3 + int(has_truth)
    fig, axes = plt.subplots(len(show_genes), n_cols, figsize=(4.2 * n_cols, 4.0 * len(show_genes)),
                             squeeze=False, constrained_layout=True)
    pad = 1.5 * spot_diameter_um
    # zoom on the spots; an H&E without spots (a trained model applied to it) on its predictions
    shown = spots_rc_um if len(spots_rc_um) else virtual_rc_um
    if shown is None or not len(shown):
        shown = np.array([[0.0, 0.0], image.shape_rc_um])
    r0, c0 = np.asarray(shown).min(axis=0) - pad
    r1, c1 = np.asarray(shown).max(axis=0) + pad
    if maps is not None:
        panels, step = _panel_maps(maps, show_genes, c1 - c0)
    for row, gene in enumerate(show_genes):
        g = list(genes).index(gene)
        enhanced = None
        if maps is not None:
            enhanced = panels[row]
        arrays = [spots_expr[:, g]] + ([enhanced] if enhanced is not None else []) + (
            [virtual_expr[:, g]] if virtual_expr is not None and enhanced is None else [])
        vmin, vmax = _robust_limits(*arrays)
        ax = axes[row, 0]
        ax.imshow(thumb, extent=extent)
        ax.set_title("H&E" if row == 0 else "")
        ax = axes[row, 1]
        ax.imshow(thumb, extent=extent, alpha=0.35)
        _draw_spots(ax, spots_rc_um, spots_expr[:, g], spot_diameter_um, vmin, vmax)
        ax.set_title(f"{gene}: measured spots" if len(spots_rc_um) else "no measured spots")
        ax = axes[row, 2]
        ax.imshow(thumb, extent=extent, alpha=0.35)
        if enhanced is not None:
            s = maps.stride_um
            o = maps.origin_rc_um
            drawn = s * step
            im = ax.imshow(np.ma.masked_invalid(enhanced), cmap="magma", vmin=vmin, vmax=vmax,
                           extent=(o[1] - drawn / 2, o[1] + (enhanced.shape[1] - 0.5) * drawn,
                                   o[0] + (enhanced.shape[0] - 0.5) * drawn, o[0] - drawn / 2),
                           interpolation="nearest")
            ext = (o[1] - s / 2, o[1] + (maps.mask.shape[1] - 0.5) * s,
                   o[0] + (maps.mask.shape[0] - 0.5) * s, o[0] - s / 2)
            ax.set_title(f"{gene}: enhanced map ({s:g} um)")
        else:
            im = ax.scatter(virtual_rc_um[:, 1], virtual_rc_um[:, 0], c=virtual_expr[:, g], s=4,
                            cmap="magma", vmin=vmin, vmax=vmax)
            ax.set_title(f"{gene}: virtual spots")
        fig.colorbar(im, ax=axes[row, 1:3].tolist(), shrink=0.8, label="log-normalised expression")
        if has_truth:
            ax = axes[row, 3]
            t = truth_maps[row]
            tm = np.ma.masked_where(~np.asarray(maps.mask), t)
            ax.imshow(tm, extent=ext, cmap="magma", interpolation="nearest")
            ax.set_title(f"{gene}: truth (own scale)")
        for ax in axes[row]:
            ax.set_xlim(c0, c1)
            ax.set_ylim(r1, r0)
            ax.set_xticks([])
            ax.set_yticks([])
    # scale bar on the first panel
    bar_um = 500.0 if (c1 - c0) > 1500 else 100.0
    ax = axes[0, 0]
    ax.plot([c0 + 0.05 * (c1 - c0), c0 + 0.05 * (c1 - c0) + bar_um], [r1 - 0.05 * (r1 - r0)] * 2,
            color="black", lw=3)
    ax.text(c0 + 0.05 * (c1 - c0), r1 - 0.08 * (r1 - r0), f"{bar_um:g} um", fontsize=9)
    if title:
        fig.suptitle(title)
    if path is not None:
        _save(fig, path)
    return fig


def spots(adata, genes: str | Sequence[str], *, layer: str | None = None, image: bool = True,
          spot_diameter_um: float | None = None, title: str = "", path: str | Path | None = None):
    """Spots of an AnnData coloured by gene over its H&E, one panel per gene.

    ``adata`` is any spot AnnData of this package in the scanpy/squidpy convention: a sample from
    :func:`napari_trihrge.io.read` (raw counts are log-normalised for display), the predictions
    of :func:`napari_trihrge.tl.recovery` (``layer='measured'`` shows the measurement) or the
    virtual spots of :func:`napari_trihrge.tl.enhance`. Returns the matplotlib figure; with
    ``path`` it is also written as PNG.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .. import geometry
    from ..errors import TrihrgeInputError
    from ..pp import gene_expression

    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in adata.var_names]
    if missing or not genes:
        raise TrihrgeInputError(f"genes not in this AnnData: {missing or '(none given)'}",
                                "pick genes from adata.var_names")
    meta = adata.uns.get("trihrge", {})
    if "um_per_px" not in meta:
        raise TrihrgeInputError("the AnnData has no pixel size (uns['trihrge']['um_per_px'])",
                                "read the sample with napari_trihrge.io.read()")
    rc_um = geometry.xy_px_to_rc_um(np.asarray(adata.obsm["spatial"]), float(meta["um_per_px"]))
    diameter_um = float(spot_diameter_um or meta.get("spot_diameter_um")
                        or geometry.DEFAULT_SPOT_DIAMETER_UM)
    if layer is not None:
        values = np.asarray(adata[:, genes].layers[layer], dtype=np.float32)
    else:
        values = gene_expression(adata, genes).to_numpy()
    thumb = extent = None
    if image and "spatial" in adata.uns:
        from ..io import get_image

        thumb, extent = _thumbnail(get_image(adata))
    fig, axes = plt.subplots(1, len(genes), figsize=(4.4 * len(genes), 4.2), squeeze=False,
                             constrained_layout=True)
    pad = 1.5 * diameter_um
    (r0, c0), (r1, c1) = rc_um.min(axis=0) - pad, rc_um.max(axis=0) + pad
    for ax, gene, vals in zip(axes[0], genes, values.T, strict=True):
        if thumb is not None:
            ax.imshow(thumb, extent=extent, alpha=0.45)
        vmin, vmax = _robust_limits(vals)
        coll = _draw_spots(ax, rc_um, vals, diameter_um, vmin, vmax)
        fig.colorbar(coll, ax=ax, shrink=0.8, label="log-normalised expression")
        ax.set_title(gene + (f" ({layer})" if layer else ""))
        ax.set_xlim(c0, c1)
        ax.set_ylim(r1, r0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    if path is not None:
        _save(fig, path)
    return fig


def _thumbnail(image, max_px: int = 700):
    """Return a small copy of a TissueImage and its imshow extent in um (x0, x1, y1, y0)."""
    thumb_um = max(image.shape_rc_um) / float(max_px)
    thumb = image.at_resolution(max(thumb_um, image.um_per_px))
    th_um = image.shape_rc_um[0] / thumb.shape[0]
    extent = (-0.5 * th_um, thumb.shape[1] * th_um - 0.5 * th_um,
              thumb.shape[0] * th_um - 0.5 * th_um, -0.5 * th_um)
    return thumb, extent


def _draw_spots(ax, rc_um: np.ndarray, values: np.ndarray, diameter_um: float, vmin: float,
                vmax: float):
    """Spots as true-size disks (micrometre axes), coloured by ``values`` on [vmin, vmax]."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    coll = PatchCollection([Circle((c, r), diameter_um / 2) for r, c in rc_um], cmap="magma",
                           linewidths=0)
    coll.set_array(np.asarray(values))
    coll.set_clim(vmin, vmax)
    ax.add_collection(coll)
    return coll


#: map pixels across an overview panel (about its width at the figure's 110 dpi): a map with
#: more is drawn from every n-th pixel, as nearest-neighbour drawing would show it anyway
PANEL_PX = 420


def _panel_maps(maps, genes: Sequence[str], width_um: float) -> tuple[list[np.ndarray], int]:
    """Return the genes' maps for panels ``width_um`` wide and the map pixels per drawn pixel.

    Every ``step``-th pixel when the map has more than :data:`PANEL_PX` pixels across the
    panel (``step`` the smallest that leaves at most :data:`PANEL_PX`); a factorised map
    computes only those, for all the genes at once (its networks run once, at those locations
    only).
    """
    index = [list(maps.gene_names).index(g) for g in genes]
    step = max(1, int(np.ceil(width_um / maps.stride_um / PANEL_PX - 1e-9)))
    values_at = getattr(maps, "values_at", None)
    if step == 1 or values_at is None:
        return [np.asarray(maps.values[g], dtype=np.float32) for g in index], 1
    n_rows, n_cols = maps.mask.shape
    rows, cols = np.meshgrid(np.arange(0, n_rows, step), np.arange(0, n_cols, step),
                             indexing="ij")
    return list(values_at(index, rows, cols)), step


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    from .._atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


__all__ = [
    "overview_figure",
    "spots",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
