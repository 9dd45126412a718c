"""Plots (``napari_trihrge.pl``): the run overview figure, readable without the viewer."""

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
    """One row per gene: H&E, measured spots, the enhanced result (dense map or virtual spots)
    and, when known, the truth; one colour scale (with a colour bar) per gene shared by all
    panels of that row, so measured and enhanced can be compared honestly."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    thumb_um = max(image.shape_rc_um) / 700.0
    thumb = image.at_resolution(max(thumb_um, image.um_per_px))
    th_um = image.shape_rc_um[0] / thumb.shape[0]
    extent = (-0.5 * th_um, thumb.shape[1] * th_um - 0.5 * th_um,
              thumb.shape[0] * th_um - 0.5 * th_um, -0.5 * th_um)
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
    for row, gene in enumerate(show_genes):
        g = list(genes).index(gene)
        enhanced = None
        if maps is not None:
            enhanced = np.asarray(maps.values[list(maps.gene_names).index(gene)], dtype=np.float32)
        arrays = [spots_expr[:, g]] + ([enhanced] if enhanced is not None else []) + (
            [virtual_expr[:, g]] if virtual_expr is not None and enhanced is None else [])
        vmin, vmax = _robust_limits(*arrays)
        ax = axes[row, 0]
        ax.imshow(thumb, extent=extent)
        ax.set_title("H&E" if row == 0 else "")
        ax = axes[row, 1]
        ax.imshow(thumb, extent=extent, alpha=0.35)
        circles = [Circle((c, r), spot_diameter_um / 2) for r, c in spots_rc_um]
        coll = PatchCollection(circles, cmap="magma", linewidths=0)
        coll.set_array(spots_expr[:, g])
        coll.set_clim(vmin, vmax)
        ax.add_collection(coll)
        ax.set_title(f"{gene}: measured spots" if len(spots_rc_um) else "no measured spots")
        ax = axes[row, 2]
        ax.imshow(thumb, extent=extent, alpha=0.35)
        if enhanced is not None:
            s = maps.stride_um
            o = maps.origin_rc_um
            ext = (o[1] - s / 2, o[1] + (enhanced.shape[1] - 0.5) * s,
                   o[0] + (enhanced.shape[0] - 0.5) * s, o[0] - s / 2)
            im = ax.imshow(np.ma.masked_invalid(enhanced), extent=ext, cmap="magma", vmin=vmin,
                           vmax=vmax, interpolation="nearest")
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
        from ._atomic import atomic_path

        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    return fig
