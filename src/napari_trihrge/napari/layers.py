"""AnnData, images and enhanced maps -> napari layer data tuples (no Qt, no napari import).

Everything is registered in micrometres (world coordinates = row/col um, see :mod:`.geometry`):

* :func:`image_layer` - the H&E as an RGB image (a lazy multiscale pyramid for large images);
* :func:`spots_layer` - the spots as points of their true diameter, expression in ``features``,
  the AnnData in ``metadata['adata']`` (the napari-spatialdata convention);
* :func:`map_layers` - enhanced expression maps as images over the H&E, transparent outside the
  tissue, on the same colour scale as the spots (:func:`shared_contrast_limits`).

A layer data tuple is ``(data, kwargs, layer_type)`` as napari readers and sample data return it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..blocks import block_mean, lazy_block_mean
from ..errors import TrihrgeInputError
from ..geometry import (
    DEFAULT_DENSITY_FACTOR,
    DEFAULT_SPOT_DIAMETER_UM,
    DEFAULT_SPOT_SPACING_UM,
    xy_px_to_rc_um,
)
from ..io.sample import trihrge_info
from ..pp import gene_expression, is_log_normalised, log_normalised

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Colormap shared by spots and maps (perceptually uniform, dark = low, reads over H&E).
DEFAULT_COLORMAP = "magma"
#: Robust percentiles of the expression used as contrast limits (one scale for spots and map).
DEFAULT_PERCENTILES = (1.0, 99.5)
#: Opacity and blending of enhanced maps over the H&E.
MAP_OPACITY = 0.7
MAP_BLENDING = "translucent"
#: Images whose longest side exceeds this (pixels) open as a multiscale pyramid.
MULTISCALE_MIN_PX = 4096

_TRANSPARENT_BAND = 1.0 / 512.0

#: what the colour of spots and maps measures (one scale for all of them)
EXPRESSION_UNITS = "log-normalised expression, ln(1 + counts per 10 000)"



#: the tasks whose output AnnData (``uns['trihrge']['task']``) holds predicted spots, each with
#: the kind and the name of its layer: the reader and the layer view both draw from this table
RESULT_LAYERS = {"recovery": ("recovered", "recovery: predicted hidden spots"),
                 "enhance": ("virtual", "enhanced: {factor}x virtual spots"),
                 "predict": ("virtual", "predicted: {factor}x virtual spots")}


# ------------------------------------------------------------------------------------------
# Sample metadata
# ------------------------------------------------------------------------------------------
def sample_name(adata) -> str:
    info = adata.uns.get("trihrge", {}) if hasattr(adata, "uns") else {}
    return str(info.get("sample") or info.get("library_id") or "sample")


def spots_rc_um(adata) -> np.ndarray:
    """Spot centres as row/col micrometres (napari world coordinates)."""
    if "spatial" not in adata.obsm:
        raise TrihrgeInputError("the AnnData has no obsm['spatial'] spot positions",
                                "open the sample with napari_trihrge.io.read(...)")
    return xy_px_to_rc_um(np.asarray(adata.obsm["spatial"]), float(trihrge_info(adata)["um_per_px"]))


# ------------------------------------------------------------------------------------------
# Expression values
# ------------------------------------------------------------------------------------------
def most_variable_genes(adata, n: int = 8) -> list[str]:
    """The ``n`` genes with the highest variance of log-normalised expression (a quick default)."""
    x = adata.X if is_log_normalised(adata) else log_normalised(adata)
    if sp.issparse(x):
        from sklearn.utils.sparsefuncs import mean_variance_axis

        var = mean_variance_axis(sp.csr_matrix(x, dtype=np.float64), axis=0)[1]
    else:
        var = np.asarray(x, dtype=np.float64).var(axis=0)
    order = np.argsort(-np.nan_to_num(var, nan=-1.0), kind="stable")[: max(0, int(n))]
    return [str(adata.var_names[i]) for i in order]


def shared_contrast_limits(*values: np.ndarray | None,
                           percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                           max_samples: int = 200_000) -> tuple[float, float]:
    """ONE colour scale for several value sets (spots and map) that covers each of them: the
    lowest lower and the highest upper robust percentile over the sets, so that a large set (a
    map of many pixels) cannot narrow the scale of a small one (the measured spots). Large
    arrays are subsampled with a fixed stride. Always ``hi > lo``."""
    parts = []
    for v in values:
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float32).ravel()
        v = v[np.isfinite(v)]
        if v.size > max_samples:
            v = v[:: int(np.ceil(v.size / max_samples))]
        if v.size:
            parts.append(v)
    if not parts:
        return 0.0, 1.0
    ranges = np.asarray([np.percentile(v, percentiles) for v in parts], dtype=np.float64)
    lo, hi = float(ranges[:, 0].min()), float(ranges[:, 1].max())
    if not hi > lo:
        hi = max(float(v.max()) for v in parts)
        lo = min(lo, min(float(v.min()) for v in parts))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def clipped_share(values: np.ndarray | None, limits: tuple[float, float]) -> float:
    """Share of the finite ``values`` beyond ``limits`` (drawn in the end colours of the
    scale); 0 for no values."""
    if values is None:
        return 0.0
    v = np.asarray(values, dtype=np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = (float(x) for x in limits)
    return float(np.count_nonzero((v < lo) | (v > hi)) / v.size)


def clipped_text(shares: dict[str, float]) -> str:
    """'ERBB2 beyond the scale: 1.2 % of spots, 0.4 % of map pixels' style text from
    ``{kind: share}`` (kinds with a share of 0 left out); '' when nothing is clipped."""
    what = {"spots": "measured spots", "recovered": "predicted spots",
            "virtual": "virtual spots", "map": "map pixels"}
    parts = [f"{100 * s:.1f} % of {what.get(k, k)}" for k, s in shares.items() if s > 0]
    return ("beyond the scale (drawn in its end colours): " + ", ".join(parts)) if parts else ""


def trust_table(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The per-gene trust of every scored gene of a per-gene table (an output's ``var`` or a
    recovery's ``per_gene``), the best predicted first: ``pcc`` (the model on held-out spots),
    ``pcc_baseline_knn`` (the better kNN interpolation), ``pcc_gain`` and
    ``beats_interpolation`` (True, False, or None when no baseline was recorded). Older outputs
    without the trust columns fall back on ``pcc_baseline`` (the better kNN). None when the
    table has no scores."""
    if table is None or "pcc" not in getattr(table, "columns", ()):
        return None
    pcc = pd.to_numeric(table["pcc"], errors="coerce").astype(float)
    base_col = next((c for c in ("pcc_baseline_knn", "pcc_baseline") if c in table.columns),
                    None)
    base = (pd.to_numeric(table[base_col], errors="coerce").astype(float)
            if base_col is not None else pd.Series(np.nan, index=table.index))
    gain = (pd.to_numeric(table["pcc_gain"], errors="coerce").astype(float)
            if "pcc_gain" in table.columns else pcc - base)
    beats = pd.Series(np.where(np.isfinite(base), pcc > base, None), index=table.index,
                      dtype=object)
    if "beats_interpolation" in table.columns:
        recorded = table["beats_interpolation"]
        known = recorded.notna().to_numpy()
        beats[known] = recorded[known].astype(bool).to_numpy()
    out = pd.DataFrame({"pcc": pcc, "pcc_baseline_knn": base, "pcc_gain": gain,
                        "beats_interpolation": beats}, index=table.index.astype(str))
    out = out[np.isfinite(pcc.to_numpy())]
    return out.sort_values("pcc", ascending=False, kind="stable")


def trust_of_gene(table: pd.DataFrame | None, gene: str) -> dict[str, Any] | None:
    """The trust of one gene (a row of :func:`trust_table` as a dict), None when the gene was
    not scored."""
    if table is None or gene not in table.index:
        return None
    scored = trust_table(table.loc[[gene]])
    if scored is None or scored.empty:
        return None
    row = scored.iloc[0]
    beats = row["beats_interpolation"]
    return {"pcc": float(row["pcc"]), "pcc_baseline_knn": float(row["pcc_baseline_knn"]),
            "pcc_gain": float(row["pcc_gain"]),
            "beats_interpolation": None if beats is None else bool(beats)}


def measured_here(adata) -> bool:
    """Whether the per-gene trust columns of ``adata``'s predictions were measured on the same
    slide. False for a trained model applied to a slide without measured spots (a bare H&E):
    its trust columns come from spots held out in the model's training sections."""
    meta = getattr(adata, "uns", {}).get("trihrge", {})
    if meta.get("task") != "predict":
        return True
    obs = adata.obs
    return "is_measured" in obs.columns and bool(np.asarray(obs["is_measured"]).any())


def trust_warns(trust: dict[str, Any] | None) -> bool:
    """Whether a gene's prediction deserves a warning (orange): it does not beat interpolation
    on the held-out spots - of this slide, or, on a slide where nothing was measured, of the
    model's training sections - or it had no positive correlation there."""
    if trust is None:
        return False
    if trust.get("measured_here", True) is False and not trust["pcc"] > 0:
        return True
    return trust["beats_interpolation"] is False


def trust_text(trust: dict[str, Any] | None) -> str:
    """One plain line (two for a slide where nothing was measured) on how far a gene's
    prediction can be trusted."""
    if trust is None:
        return "not scored on held-out spots (Enhance or Recovery scores it)"
    pcc, base = trust["pcc"], trust["pcc_baseline_knn"]
    if trust.get("measured_here", True) is False:
        knn = f" (kNN {base:.2f})" if np.isfinite(base) else ""
        return ("accuracy unknown on this slide (nothing measured here);\n"
                f"held-out PCC on the training sections {pcc:.2f}{knn}"
                + (" - no signal" if not pcc > 0 else
                   " - NOT better than interpolation there"
                   if trust["beats_interpolation"] is False else ""))
    if trust["beats_interpolation"] is None:
        return f"held-out PCC {pcc:.2f} (no interpolation baseline recorded)"
    if trust["beats_interpolation"]:
        return f"beats interpolation: held-out PCC {pcc:.2f} vs {base:.2f} for kNN"
    return (f"NOT better than interpolation: held-out PCC {pcc:.2f} vs {base:.2f} for kNN "
            "(the image adds nothing for this gene)")


# ------------------------------------------------------------------------------------------
# Image
# ------------------------------------------------------------------------------------------
#: layer metadata key holding the :class:`~napari_trihrge.io.TissueImage` an image layer reads
IMAGE_OWNER_KEY = "_trihrge_tissue_image"


def image_layer(adata, *, name: str | None = None,
                multiscale_min_px: int = MULTISCALE_MIN_PX, resolution: str | None = None,
                image=None) -> LayerDataTuple | None:
    """The sample's H&E as an RGB Image layer in micrometres (``None`` if it has no image).

    Uses :func:`napari_trihrge.io.get_image` (full resolution, else hires, else lowres;
    ``resolution`` forces one) unless an opened :class:`~napari_trihrge.io.TissueImage` is
    given; a large image opens as a lazy multiscale list of dask levels. An image that is
    there but cannot be shown (blank, unreadable) raises :class:`TrihrgeInputError`.
    """
    from .. import io

    if image is None:
        if not io.available_images(adata):
            return None
        image = io.get_image(adata, resolution)
    img = image
    levels = list(getattr(img, "levels", None) or [(img.array, img.um_per_px)])
    um0 = float(levels[0][1])
    big = max(levels[0][0].shape[:2]) > multiscale_min_px
    if big and len(levels) > 1:
        data: Any = [lvl for lvl, _ in levels]
        multiscale = True
    elif big:
        data = rgb_pyramid(levels[0][0])
        multiscale = True
    else:
        data = levels[0][0]
        multiscale = False
    kwargs = {
        "name": name or f"{sample_name(adata)} H&E",
        "rgb": True,
        "scale": (um0, um0),
        "translate": (0.0, 0.0),
        "multiscale": multiscale,
        "units": "um",
        "metadata": {"trihrge": {"kind": "image", "sample": sample_name(adata),
                                 "um_per_px": um0, "image_key": _image_key(img)},
                     # the layer owns the opened image: a lazy TIFF stays open while the layer
                     # reads it and is closed when the layer is gone
                     IMAGE_OWNER_KEY: img},
    }
    return data, kwargs, "image"


def _image_key(image) -> str | None:
    """The pixels' identity (:meth:`TissueImage.key`): the same H&E opened twice is one layer."""
    try:
        return image.key()
    except Exception:  # noqa: BLE001 - an image without a key is never matched
        return None


def image_decoded_whole(adata, min_side_px: int = MULTISCALE_MIN_PX) -> str | None:
    """The full-resolution image file of ``adata`` when showing it means decoding the whole
    file first (a JPEG or PNG longer than ``min_side_px``; TIFFs and stores open lazily), else
    None. Such an image is best decoded away from the viewer's thread."""
    from pathlib import Path

    from .. import io
    from ..io.image import TIFF_SUFFIXES

    options = io.available_images(adata)
    if not options or options[0] != "fullres":
        return None
    path = Path(str(adata.uns["trihrge"]["fullres_image_path"]))
    if not path.is_file() or path.name.lower().endswith(TIFF_SUFFIXES):
        return None
    try:
        return str(path) if max(io.image_size_px(path)) > min_side_px else None
    except TrihrgeInputError:
        return None


def preview_resolution(adata) -> str | None:
    """The in-memory preview of the sample's image ('hires', else 'lowres'), or None."""
    from .. import io

    return next((r for r in ("hires", "lowres") if r in io.available_images(adata)), None)


def rgb_pyramid(arr, min_px: int = 1024, chunk_px: int = 2048) -> list:
    """A multiscale list for napari from one large RGB image: level 0 as a chunked dask array,
    then 2x2 block means (rounded, ``blocks.block_mean``) down to ``min_px``. In-memory images get
    in-memory coarse levels (a third more memory, instant zoom-out); lazy (dask) images stay
    lazy."""
    import dask.array as da

    lazy = not isinstance(arr, np.ndarray)
    lvl = arr if lazy else np.asarray(arr)
    out = [da.asarray(lvl).rechunk((chunk_px, chunk_px, -1)) if lazy else
           da.from_array(lvl, chunks=(chunk_px, chunk_px, lvl.shape[2]))]
    while max(lvl.shape[:2]) > min_px:
        lvl = (lazy_block_mean(lvl, 2, dtype=np.uint8) if lazy else
               block_mean(lvl, 2, ragged="trim", dtype=np.uint8))
        out.append(lvl)
    return out


# ------------------------------------------------------------------------------------------
# Spots
# ------------------------------------------------------------------------------------------
def spots_layer(adata, genes: Sequence[str] | None = None, *, color_by: str | None = None,
                name: str | None = None, size_um: float | None = None,
                contrast_limits: tuple[float, float] | None = None,
                colormap: str = DEFAULT_COLORMAP, n_default_genes: int = 8,
                kind: str = "spots", opacity: float = 0.9) -> LayerDataTuple:
    """The spots as a Points layer: row/col um, true diameter, expression in ``features``.

    ``genes`` are loaded into ``features`` (default: the most variable few); ``color_by`` (default
    the first loaded gene) sets the face colour through ``colormap`` and ``contrast_limits``
    (default robust percentiles). ``metadata['adata']`` holds the AnnData.
    """
    info = trihrge_info(adata)
    rc_um = spots_rc_um(adata)
    if genes is None:
        genes = most_variable_genes(adata, n_default_genes)
    genes = list(dict.fromkeys(genes))
    if color_by is not None and color_by not in genes:
        genes.insert(0, color_by)
    expr = gene_expression(adata, genes)
    features = pd.DataFrame({"barcode": np.asarray(adata.obs_names, dtype=object)})
    for g in genes:
        features[g] = expr[g].to_numpy()
    diameter = float(size_um if size_um is not None
                     else info.get("spot_diameter_um", DEFAULT_SPOT_DIAMETER_UM))
    kwargs: dict[str, Any] = {
        "name": name or f"{sample_name(adata)} {kind}",
        "size": diameter,
        "features": features,
        "border_width": 0.0,
        "opacity": opacity,
        "units": "um",
        "metadata": {"adata": adata,
                     "trihrge": {"kind": kind, "sample": sample_name(adata),
                                 "gene": None}},
    }
    color_by = color_by or (genes[0] if genes else None)
    if color_by is not None:
        vals = features[color_by].to_numpy()
        kwargs["face_color"] = color_by
        kwargs["face_colormap"] = colormap
        kwargs["face_contrast_limits"] = tuple(contrast_limits or shared_contrast_limits(vals))
        kwargs["metadata"]["trihrge"]["gene"] = color_by
    else:
        kwargs["face_color"] = "#ffd54a"
    return rc_um, kwargs, "points"


def result_spots_layer(predictions, task: str, genes: Sequence[str] | None = None,
                       **kwargs: Any) -> LayerDataTuple:
    """The predicted spots of a ``task`` of :data:`RESULT_LAYERS` as a Points layer.

    Virtual spots are drawn ``sqrt(factor)`` times smaller than a measured spot: enhance from
    the sample's spot diameter, predict (no measured diameter on a bare image) with the
    platform's diameter-to-spacing ratio on the lattice it predicted on.
    """
    kind, name = RESULT_LAYERS[task]
    info = predictions.uns.get("trihrge", {})
    if task != "recovery":
        factor = int(info.get("factor", DEFAULT_DENSITY_FACTOR))
        name = name.format(factor=factor)
        if task == "enhance":
            diameter_um = float(info.get("spot_diameter_um", DEFAULT_SPOT_DIAMETER_UM))
        else:
            spacing_um = float(info.get("lattice_spacing_um", DEFAULT_SPOT_SPACING_UM))
            diameter_um = DEFAULT_SPOT_DIAMETER_UM / DEFAULT_SPOT_SPACING_UM * spacing_um
        kwargs.setdefault("size_um", diameter_um / np.sqrt(factor))
    return spots_layer(predictions, genes, kind=kind, name=name, **kwargs)


# ------------------------------------------------------------------------------------------
# Enhanced maps
# ------------------------------------------------------------------------------------------

def map_colormap(name: str = DEFAULT_COLORMAP) -> dict[str, Any]:
    """``name`` (a matplotlib colormap) whose lowest end is fully transparent: pixels at or
    below the lower contrast limit - and everything outside the tissue - show the H&E."""
    from matplotlib import colormaps

    base = colormaps[name](np.linspace(0.0, 1.0, 64))
    colors = np.vstack([[0.0, 0.0, 0.0, 0.0], base]).astype(np.float32)
    controls = np.concatenate([[0.0], np.linspace(_TRANSPARENT_BAND, 1.0, 64)]).astype(np.float32)
    return {"colors": colors, "controls": controls, "name": f"trihrge-{name}",
            "interpolation": "linear"}


def gene_index(maps, gene: str) -> int:
    names = list(maps.gene_names)
    if gene not in names:
        raise TrihrgeInputError(f"the enhanced maps have no gene {gene!r}",
                                "pick one of the genes used for the run")
    return names.index(gene)


def map_values(maps, gene: str) -> np.ndarray:
    """The map of ``gene`` (rows, cols) float32 with NaN outside the tissue mask."""
    vals = np.asarray(maps.values[gene_index(maps, gene)], dtype=np.float32)
    mask = getattr(maps, "mask", None)
    if mask is not None:
        vals = np.where(np.asarray(mask, dtype=bool), vals, np.float32(np.nan))
    return vals


def map_display_data(values: np.ndarray, contrast_limits: tuple[float, float]) -> np.ndarray:
    """Map values ready for display: NaN (outside tissue) replaced by a value below the lower
    contrast limit, which :func:`map_colormap` draws transparent (GPUs do not render NaN); tissue
    values are kept just above the transparent band so low expression stays visible (dark)."""
    lo, hi = (float(v) for v in contrast_limits)
    sentinel = np.float32(lo - max(1.0, hi - lo))
    floor = np.float32(lo + 2.0 * _TRANSPARENT_BAND * (hi - lo))
    finite = np.isfinite(values)
    return np.where(finite, np.maximum(values, floor), sentinel).astype(np.float32, copy=False)


def is_outside_tissue(display_value: float, contrast_limits: tuple[float, float]) -> bool:
    """True for a value of :func:`map_display_data` that marks a pixel outside the tissue
    (drawn transparent; it is not an expression value)."""
    return float(display_value) < float(contrast_limits[0])


def map_layer_kwargs(maps, gene: str, contrast_limits: tuple[float, float], *,
                     colormap: str = DEFAULT_COLORMAP, name: str | None = None,
                     opacity: float = MAP_OPACITY, blending: str = MAP_BLENDING
                     ) -> dict[str, Any]:
    """napari Image kwargs placing a map exactly over the tissue: pixel (i, j) is centred at
    ``origin_rc_um + (i, j) * stride_um``."""
    stride = float(maps.stride_um)
    origin = np.asarray(maps.origin_rc_um, dtype=np.float64)
    return {
        "name": name or f"enhanced {gene}",
        "scale": (stride, stride),
        "translate": (float(origin[0]), float(origin[1])),
        "colormap": map_colormap(colormap),
        "contrast_limits": tuple(float(c) for c in contrast_limits),
        "opacity": opacity,
        "blending": blending,
        "interpolation2d": "nearest",
        "units": "um",
        "metadata": {"trihrge": {"kind": "map", "gene": gene,
                                 "display_limits": tuple(float(c) for c in contrast_limits)},
                     "maps": maps},
    }


def viewable_maps(maps) -> tuple[Any, str | None]:
    """Return the maps the viewer shows of ``maps``, and a message when they are not all of it.

    A map store too large to compute at once is shown at every n-th pixel along rows and
    columns (:func:`~napari_trihrge.tl._maps.displayed_maps`): the networks run at those pixels
    only and, kept, make a gene switch quick; a region at full resolution is the Gene
    explorer's :meth:`~._qt.GeneExplorer.show_full_resolution` or
    ``trihrge export-maps --window-um``. Other maps are shown whole.
    """
    from ..tl._maps import displayed_maps

    shown = displayed_maps(maps)
    if shown is maps:
        return maps, None
    step = int(round(shown.stride_um / maps.stride_um))
    return shown, (
        f"The map holds {maps.n_locations:,} locations at {maps.stride_um:g} um, more than the "
        f"viewer computes at once: it shows one pixel in {step} along rows and columns "
        f"({shown.stride_um:g} um, {shown.n_locations:,} locations, the map's values there). "
        f"For a region at {maps.stride_um:g} um, zoom in and press 'Map at full resolution in "
        "this view' in the Gene explorer (or tick 'Follow the view at full resolution' there: "
        "each view you stop at is computed); to write one to disk, `trihrge export-maps RUN "
        "--genes GENE --window-um ROW0 ROW1 COL0 COL1` (micrometres, as the status bar shows "
        "them).")


def map_ready(maps, gene: str) -> bool:
    """Whether ``gene``'s map of ``maps`` is read at once: False for a map store's map whose
    networks still have to run (or whose factors are still on disk), which a viewer computes
    in a worker (:meth:`~napari_trihrge.io.map_store.FactorMaps.ready`); True for other maps
    and for a gene the maps do not have."""
    ready = getattr(maps, "ready", None)
    names = list(maps.gene_names)
    return ready is None or gene not in names or bool(ready(names.index(gene)))


def pending_map_name(gene: str) -> str:
    """The name of ``gene``'s map layer while its map is being computed."""
    return f"enhanced {gene} (computing…)"


def pending_map_data(maps) -> tuple[np.ndarray, tuple[float, float]]:
    """Display data of a map not computed yet (transparent everywhere) and its limits."""
    limits = (0.0, 1.0)
    return map_display_data(np.full(maps.mask.shape, np.nan, np.float32), limits), limits


def pending_map_layer(maps, gene: str) -> LayerDataTuple:
    """``gene``'s map layer before its map is computed: placed over the tissue, transparent,
    named so (:func:`pending_map_name`), ``metadata['trihrge']['pending']`` set; the viewer
    fills it when the map is ready."""
    data, limits = pending_map_data(maps)
    kwargs = map_layer_kwargs(maps, gene, limits, name=pending_map_name(gene))
    kwargs["metadata"]["trihrge"]["pending"] = True
    return data, kwargs, "image"


#: colormap of the ensemble-spread layer (distinct from the expression colormap)
SPREAD_COLORMAP = "viridis"


def spread_layer_name(gene: str) -> str:
    """The name of the layer showing ``gene``'s ensemble spread."""
    return f"ensemble spread {gene}"


def spread_layer(maps, gene: str) -> LayerDataTuple | None:
    """The ensemble spread (std over models) of ``gene`` as an Image layer over the tissue, on its
    own scale from 0 to the 99th percentile; None when the maps carry no spread (one model).
    High values mark where the models disagree: where the prediction is weak."""
    std = getattr(maps, "std", None)
    if std is None:
        return None
    vals = np.asarray(std[gene_index(maps, gene)], dtype=np.float32)
    mask = getattr(maps, "mask", None)
    if mask is not None:
        vals = np.where(np.asarray(mask, dtype=bool), vals, np.float32(np.nan))
    finite = vals[np.isfinite(vals)]
    hi = float(np.percentile(finite, 99)) if finite.size else 1.0
    limits = (0.0, hi if hi > 0 else 1.0)
    kwargs = map_layer_kwargs(maps, gene, limits, colormap=SPREAD_COLORMAP,
                              name=spread_layer_name(gene))
    kwargs["metadata"] = {"trihrge": {"kind": "spread", "gene": gene, "display_limits": limits},
                          "maps": maps}
    kwargs["visible"] = False  # switch it on to see where the prediction is uncertain
    return map_display_data(vals, limits), kwargs, "image"


def map_layers(maps, genes: Sequence[str] | None = None, *,
               spot_values: dict[str, np.ndarray] | None = None,
               contrast_limits: tuple[float, float] | None = None,
               colormap: str = DEFAULT_COLORMAP, opacity: float = MAP_OPACITY,
               blending: str = MAP_BLENDING) -> list[LayerDataTuple]:
    """One Image layer per gene (default: the first gene) over the H&E.

    Contrast limits are robust percentiles over the map and, when given, the measured spots'
    values of the same gene (``spot_values[gene]``), so spots and map share ONE colour scale.
    """
    if maps is None:
        return []
    genes = list(genes) if genes is not None else list(maps.gene_names[:1])
    out = []
    for gene in genes:
        vals = map_values(maps, gene)
        lims = contrast_limits or shared_contrast_limits(
            vals, None if spot_values is None else spot_values.get(gene))
        data = map_display_data(vals, lims)
        kwargs = map_layer_kwargs(maps, gene, lims, colormap=colormap, opacity=opacity,
                                  blending=blending)
        out.append((data, kwargs, "image"))
    return out


def sample_layers(adata, genes: Sequence[str] | None = None, *, source: str | None = None,
                  with_image: bool = True, **spot_kwargs) -> list[LayerDataTuple]:
    """H&E (when available and ``with_image``) and spots of a sample, bottom to top; ``source``
    (the path it was read from) is recorded so that opening the same sample again replaces
    these layers."""
    layers: list[LayerDataTuple] = []
    img = image_layer(adata) if with_image else None
    if img is not None:
        layers.append(img)
    layers.append(spots_layer(adata, genes, **spot_kwargs))
    if source is not None:
        for _, kwargs, _ in layers:
            kwargs["metadata"]["trihrge"]["source"] = str(source)
    return layers


# ------------------------------------------------------------------------------------------
# Cells (tl.cells / `trihrge cells`)
# ------------------------------------------------------------------------------------------
#: the cells' obs columns shown when hovering a cell (napari's status bar reads ``features``)
CELL_FEATURES = ("cell_id", "area_um2", "nucleus_area_um2", "spot", "region")


def cell_gene_colors(cells, gene: str | None,
                     contrast_limits: tuple[float, float] | None = None) -> dict[Any, Any]:
    """Label -> RGBA colour of every cell for ``gene`` (napari Labels ``colormap``), on the
    colormap spots and maps use; without a gene, one translucent colour for all cells.

    Only the colours change with the gene, so switching genes needs no recompute of labels.
    """
    from matplotlib import colormaps

    ids = np.asarray(cells.obs["cell_id"], dtype=np.int64)
    colors: dict[Any, Any] = {None: np.zeros(4, dtype=np.float32), 0: np.zeros(4, np.float32)}
    if gene is None:
        for k in ids:
            colors[int(k)] = np.array([1.0, 0.85, 0.0, 0.5], dtype=np.float32)
        return colors
    if gene not in cells.var_names:
        raise TrihrgeInputError(f"{gene!r} is not predicted for these cells",
                                "choose one of the genes of the enhance run")
    x = np.asarray(cells[:, gene].X, dtype=np.float64).ravel()
    lo, hi = contrast_limits or shared_contrast_limits(x)
    scaled = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgba = colormaps[DEFAULT_COLORMAP](scaled).astype(np.float32)
    rgba[~np.isfinite(x)] = 0.0
    colors.update(zip(ids.tolist(), rgba, strict=True))
    return colors


def cell_top_genes(cells, n: int = 3) -> np.ndarray:
    """Each cell's ``n`` most distinctive genes ('A, B, C'): the highest expression relative to
    all cells (per-gene z-score), so a cell shows what sets it apart, not housekeeping genes."""
    x = np.asarray(cells.X, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - np.nanmean(x, axis=0)) / np.nanstd(x, axis=0)
    z = np.nan_to_num(z, nan=-np.inf)
    top = np.argsort(-z, axis=1)[:, :n]
    names = np.asarray(cells.var_names, dtype=object)
    return np.array([", ".join(names[row]) for row in top], dtype=object)


def cells_layer(cell_labels: Any, um_per_px: float, cells, *, gene: str | None = None,
                name: str = "cells") -> LayerDataTuple:
    """The cells as a napari Labels layer in micrometres (``scale`` = the label image's pixel
    size), coloured by ``gene`` (:func:`cell_gene_colors`); hovering a cell shows its id, area,
    nucleus area, spot, region and top genes (``features``, one row per label, label 0 first).
    ``cell_labels``: an array, or a list of lazy levels finest first (multiscale)."""
    ids = np.asarray(cells.obs["cell_id"], dtype=np.int64)
    cols = [c for c in CELL_FEATURES if c in cells.obs]
    table = cells.obs[cols].copy()
    table.index = pd.RangeIndex(len(table))
    if cells.n_vars:
        table["top_genes"] = cell_top_genes(cells)
    n = int(ids.max()) if len(ids) else 0
    if isinstance(cell_labels, np.ndarray) and cell_labels.size:  # lazy labels: their ids
        n = max(n, int(cell_labels.max()))
    features = pd.DataFrame({"index": np.arange(n + 1)})
    features = features.merge(table.assign(index=ids), on="index", how="left")
    meta = {"trihrge": {"kind": "cells", "gene": gene, "n_cells": int(len(ids))},
            "cells": cells}
    return (cell_labels, {"name": name, "scale": (float(um_per_px), float(um_per_px)),
                          "features": features, "colormap": cell_gene_colors(cells, gene),
                          "opacity": 0.7, "metadata": meta}, "labels")


def cells_of_layer(layer) -> Any:
    """The cells AnnData a cells Labels layer carries (``metadata['cells']``), or None."""
    meta = getattr(layer, "metadata", None) or {}
    if meta.get("trihrge", {}).get("kind") != "cells":
        return None
    return meta.get("cells")


def cell_description(features: pd.DataFrame, label: int) -> str:
    """One line about cell ``label`` from a cells layer's ``features`` (one row per label):
    its id, area, nucleus area, spot, region and top genes; '' for the background."""
    label = int(label)
    if label <= 0 or label >= len(features) or pd.isna(features.iloc[label].get("cell_id")):
        return ""
    row = features.iloc[label]
    text = f"cell {int(row['cell_id'])}: {float(row['area_um2']):.0f} um²"
    if "nucleus_area_um2" in row:
        text += f", nucleus {float(row['nucleus_area_um2']):.0f} um²"
    spot = str(row.get("spot", "") or "")
    text += f", spot {spot}" if spot else ", outside the measured spots"
    region = row.get("region")
    if isinstance(region, str) and region:
        text += f", region {region}"
    top = row.get("top_genes")
    if isinstance(top, str) and top:
        text += f"; top genes {top}"
    return text
