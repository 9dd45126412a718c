"""Dense maps: the grid over the tissue, streamed prediction in bands, size checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from .. import geometry
from ..errors import TrihrgeInputError
from ..io.map_store import (
    FACTOR_CACHE_BYTES,
    LOCATION_CHUNK,
    FactorMaps,
    FactorModel,
    GeneWeights,
    LocationFactors,
    MapStoreWriter,
)
from ..io.sample import is_positive_number
from ..neighbours import idw_interpolate
from ..progress import Progress, ensure_progress
from ..threads import cpu_threads
from ._config import RunConfig
from ._shared import NeighbourImages, StackedModel, _features, _stacked_predict


@dataclass
class DenseMaps:
    """Per-gene maps on a regular grid; NaN outside ``mask`` (no tissue).

    ``values[g, i, j]`` is gene ``g`` at the map pixel centred at
    ``origin_rc_um + (i, j) * stride_um``.
    """

    values: Any  # (genes, rows, cols) numpy or zarr array
    stride_um: float
    origin_rc_um: np.ndarray
    gene_names: list[str]
    mask: np.ndarray
    std: Any = None  # ensemble spread, same shape, or None

    def gene(self, name: str) -> np.ndarray:
        """Return the map of ``name`` (rows, cols).

        An unknown gene raises with the nearest names.
        """
        from ..io.map_store import gene_index

        return np.asarray(self.values[gene_index(self.gene_names, name)])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.gene(name)

    def sel(self, gene: str | Sequence[str]) -> np.ndarray:
        """One gene's map (rows, cols), or several genes' (g, rows, cols)."""
        if isinstance(gene, str):
            return self.gene(gene)
        return np.stack([self.gene(g) for g in gene])


#: bytes of working memory per map-grid pixel (mask, centre coordinates, nearest-spot query)
GRID_BYTES_PER_PX = 40


def check_map_size(adata: AnnData, stride_um: Any, *, n_genes: int, ensemble: int = 1,
                   in_memory: bool = False) -> None:
    """Refuse a dense-map stride that cannot work, before any heavy work.

    Refused: not a positive number, finer than the full-resolution pixel, or a grid whose working
    memory (plus the maps themselves when kept in memory) exceeds the memory available, with the
    size it would need.
    """
    from ..io.sample import image_extent_px

    if not is_positive_number(stride_um):
        raise TrihrgeInputError(f"the map stride must be a positive number of micrometres, got "
                                f"{stride_um!r}", "pass --stride-um, for example 8 or 16")
    stride_um = float(stride_um)
    um_per_px = float(adata.uns.get("trihrge", {}).get("um_per_px", 0) or 0)
    if um_per_px and stride_um < um_per_px:
        raise TrihrgeInputError(
            f"the map stride {stride_um:g} um is finer than the image's pixel "
            f"({um_per_px:.3g} um)", f"use --stride-um {max(1, int(np.ceil(um_per_px)))} or more")
    extent = image_extent_px(adata)
    if extent is None or not um_per_px:
        return
    (h_px, w_px), _, _ = extent
    h_um, w_um = h_px * um_per_px, w_px * um_per_px
    if stride_um > max(h_um, w_um) / 2.0:
        raise TrihrgeInputError(
            f"the map stride {stride_um:g} um is larger than half the image ({h_um:.0f} x "
            f"{w_um:.0f} um): the map would have at most one location per side",
            "use --stride-um 8 or 16 (micrometres per map pixel)")
    n_px = float(np.ceil(h_px * um_per_px / stride_um)) * float(np.ceil(w_px * um_per_px
                                                                        / stride_um))
    need = n_px * GRID_BYTES_PER_PX
    if in_memory:
        need += n_px * n_genes * 4 * (2 if ensemble > 1 else 1)
    available = _available_memory_bytes()
    if available is not None and need > available:
        raise TrihrgeInputError(
            f"a {stride_um:g} um map over the {h_px * um_per_px / 1000:.1f} x "
            f"{w_px * um_per_px / 1000:.1f} mm image has {n_px:.3g} pixels and would need "
            f"{_bytes(need)} of memory ({_bytes(available)} available)",
            "use a larger --stride-um (for example 8 or 16)")


#: share of the memory available when maps are made for a viewer that their factor cache may
#: take (``io.map_store.for_display``; at least ``FACTOR_CACHE_BYTES``): a whole Visium capture
#: area's factors at 8 um (about 4 GB as float32) are then kept where 8 GB are free
DISPLAY_CACHE_SHARE = 0.5


def display_cache_bytes() -> int:
    """Return the factor cache for maps a viewer shows: a share of the available memory.

    :data:`DISPLAY_CACHE_SHARE` of it, at least ``io.map_store.FACTOR_CACHE_BYTES`` (that
    alone when the available memory is unknown).
    """
    available = _available_memory_bytes() or 0.0
    return max(FACTOR_CACHE_BYTES, int(DISPLAY_CACHE_SHARE * available))


def displayed_maps(maps: Any) -> Any:
    """Return the part of ``maps`` a viewer shows.

    A factorised map too large to compute at once is shown at every n-th pixel
    (:meth:`~napari_trihrge.io.map_store.FactorMaps.display_step` with
    :func:`display_cache_bytes`); other maps whole (``maps`` itself).
    """
    step_for = getattr(maps, "display_step", None)
    return maps if step_for is None else maps.every(step_for(display_cache_bytes()))


def _available_memory_bytes() -> float | None:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing: ask the OS
        import os

        try:
            return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024.0
    return f"{n:.3g} PiB"


def map_grid(image, rc_um: np.ndarray, stride_um: float, margin_um: float, *,
             mask_um_per_px: float = 8.0) -> geometry.DenseGrid:
    """Return the dense-map grid: tissue (from the image) within ``margin_um`` of a spot."""
    from scipy.spatial import cKDTree

    from ..tissue import tissue_mask_for

    height_um, width_um = image.shape_rc_um
    mask, mask_um = tissue_mask_for(image, mask_um_per_px=max(mask_um_per_px, image.um_per_px))
    grid = geometry.dense_grid((height_um, width_um), stride_um, mask, mask_um)
    pts = grid.points_rc_um()
    near = cKDTree(rc_um).query(pts, k=1)[0] <= margin_um
    m = grid.mask.copy()
    m[grid.mask] = near
    return geometry.DenseGrid(grid.origin_rc_um, grid.stride_um, m)


def check_map_grid(grid: geometry.DenseGrid, image, stride_um: float) -> None:
    """Refuse a map grid without a location (inside the tissue, near the spots).

    The check comes before the features are computed.
    """
    if not grid.mask.any():
        h_um, w_um = image.shape_rc_um
        raise TrihrgeInputError(
            f"a map with a {stride_um:g} um stride has no pixel inside the tissue near "
            f"the spots (image {h_um:.0f} x {w_um:.0f} um)",
            "use a smaller --stride-um (for example 8 or 16)")


def predict_maps(fits: list | StackedModel, image, encoder, rc_um: np.ndarray, y: np.ndarray,
                 windows_um: Sequence[float], stride_um: float, cfg: RunConfig, *,
                 genes: list[str], progress: Progress | None = None, map_path: str | None = None,
                 margin_um: float | None = None, band_rows: int = 32,
                 grid: geometry.DenseGrid | None = None, factorised: bool = False,
                 store_path: str | None = None, factor_dtype: Any = None,
                 overwrite: bool = False, neighbour_images: NeighbourImages | None = None
                 ) -> DenseMaps | FactorMaps:
    """Predict dense maps, streamed band of map rows by band.

    Each band's locations are embedded and predicted for all genes, then written into a (genes,
    rows, cols) array chunked by genes, so memory holds one band at a time, never genes x all map
    pixels. ``fits``: the network fits, or a :class:`StackedModel` (every map pixel then gets the
    per-gene blend of kNN of the measured spots ``rc_um``/``y``, the ridge head and the networks, as
    recovery's hidden spots do). ``grid``: the map grid when the caller already has it
    (:func:`map_grid`), else it is made here.

    ``factorised=True``: instead of every gene's map, the per-location inputs are kept
    (:mod:`napari_trihrge.io.map_store`: the image features and the kNN weights;
    ``factor_dtype`` for the features, by default float16 in a store and float32 in memory)
    with the networks and the ridge head's standardisation, and a :class:`FactorMaps` is
    returned that computes any gene's map, equal to the direct prediction, when asked (the
    networks' last hidden layers only then); written to the store ``store_path`` when given
    (else in memory); with ``map_path`` every gene is also materialised there as an OME-Zarr
    map. ``neighbour_images``: the run's neighbour-image window
    (:class:`~napari_trihrge.tl._shared.NeighbourImages`), appended to every map location's
    features as to the spots'.
    """
    progress = ensure_progress(progress)
    if grid is None:
        margin_um = margin_um if margin_um is not None else geometry.spot_spacing_um(rc_um)
        grid = map_grid(image, rc_um, stride_um, margin_um)
    if factorised:
        return _predict_factor_maps(fits, image, encoder, rc_um, y, windows_um, grid, cfg,
                                    genes=genes, progress=progress, store_path=store_path,
                                    map_path=map_path, factor_dtype=factor_dtype,
                                    overwrite=overwrite, band_rows=band_rows,
                                    neighbour_images=neighbour_images)
    n_rows, n_cols = grid.shape
    n_genes = len(genes)
    gene_chunk = min(32, n_genes)
    if isinstance(fits, StackedModel):
        with_std = len(fits.fits) > 1 and "network" in fits.blend.names
    else:
        with_std = len(fits) > 1
    if map_path is not None:
        from ..io.writers import open_ome_zarr_map

        zarr_kw = dict(chunks=(gene_chunk, band_rows, n_cols), um_per_px=stride_um,
                       gene_names=genes, origin_rc_um=grid.origin_rc_um, fill_value=np.nan)
        values = open_ome_zarr_map(map_path, (n_genes, n_rows, n_cols), **zarr_kw)
        std = (open_ome_zarr_map(str(map_path).replace(".ome.zarr", "") + "_std.ome.zarr",
                                 (n_genes, n_rows, n_cols), **zarr_kw) if with_std else None)
    else:
        values = np.full((n_genes, n_rows, n_cols), np.nan, dtype=np.float32)
        std = np.full_like(values, np.nan) if with_std else None
    n_bands = int(np.ceil(n_rows / band_rows))
    progress.stage("maps", total=n_bands)
    try:
        _predict_map_bands(fits, image, encoder, rc_um, y, windows_um, grid, cfg, values, std,
                           band_rows, progress, neighbour_images)
    except BaseException:
        for store in (values, std):
            if hasattr(store, "abort"):
                store.abort()
        raise
    for store in (values, std):
        if hasattr(store, "finalize"):
            store.finalize()
    return DenseMaps(values=values, stride_um=float(stride_um), origin_rc_um=grid.origin_rc_um,
                     gene_names=list(genes), mask=grid.mask, std=std)


#: working memory of one block of map locations embedded in one pass (their features, the
#: encoder's statistics, their neighbour input): blocks are as many rows as fit, so memory does
#: not grow with the map's area (the encoder bounds its own image reads: features/handcrafted.py)
FEATURE_BLOCK_BYTES = 192 * 2**20
#: bytes per location and window beyond its features (the default encoder's box statistics)
WINDOW_WORK_BYTES = 1536


def feature_block_rows(n_cols: int, *, n_windows: int, embed_dim: int, n_genes: int,
                       multiple: int = 1) -> int:
    """Return the map rows per block of embedded locations.

    As many rows of ``n_cols`` locations as :data:`FEATURE_BLOCK_BYTES` holds, at least one, a
    multiple of ``multiple``.
    """
    per_location = n_windows * (4 * embed_dim + WINDOW_WORK_BYTES) + 8 * n_genes
    rows = FEATURE_BLOCK_BYTES // (per_location * max(1, n_cols))
    return multiple * max(1, int(rows) // multiple)


#: map locations whose blend candidates (kNN k=6/12, ridge, networks; each locations x genes) are
#: held at once
BLEND_BLOCK_LOCATIONS = 4096


def _predict_map_bands(fits, image, encoder, rc_um, y, windows_um, grid, cfg, values, std,
                       band_rows, progress, neighbour_images=None) -> None:
    """Embed blocks of many map rows at once, then predict and write them 32 rows at a time.

    All genes at once, so features cost one encoder pass per block and predictions stay bounded (a
    blend: :data:`BLEND_BLOCK_LOCATIONS` locations at a time).
    """
    from ..model.predict import predict_ensemble

    n_genes = values.shape[0]
    n_rows, n_cols = grid.shape
    with_std = std is not None
    rows_per_block = feature_block_rows(n_cols, n_windows=len(windows_um), n_genes=n_genes,
                                        embed_dim=getattr(encoder, "embed_dim", 1024),
                                        multiple=band_rows)
    for b0 in range(0, n_rows, rows_per_block):
        b1 = min(n_rows, b0 + rows_per_block)
        ii, jj = np.nonzero(grid.mask[b0:b1])
        ii += b0
        pts = grid.origin_rc_um + np.stack([ii, jj], axis=1) * grid.stride_um
        feats = (_features(image, encoder, pts, windows_um, cfg, Progress(), dense=True,
                           cache=False, neighbour_images=neighbour_images)
                 if len(pts) else None)
        for r0 in range(b0, b1, band_rows):
            r1 = min(b1, r0 + band_rows)
            band_vals = np.full((n_genes, r1 - r0, n_cols), np.nan, dtype=np.float32)
            band_std = np.full_like(band_vals, np.nan) if with_std else None
            sel = np.flatnonzero((ii >= r0) & (ii < r1))
            if len(sel):
                nb = (idw_interpolate(rc_um, y, pts[sel], cfg.n_neighbours)
                      if cfg.neighbour_input else None)
                if isinstance(fits, StackedModel):
                    for c0 in range(0, len(sel), BLEND_BLOCK_LOCATIONS):
                        part = sel[c0:c0 + BLEND_BLOCK_LOCATIONS]
                        mean, sd, _ = _stacked_predict(
                            fits, feats[part], None if nb is None else nb[c0:c0 + len(part)],
                            pts[part], cfg)
                        band_vals[:, ii[part] - r0, jj[part]] = mean.T
                        if with_std:
                            band_std[:, ii[part] - r0, jj[part]] = sd.T
                else:
                    with cpu_threads(cfg.threads):
                        mean, sd = predict_ensemble([f.model for f in fits], feats[sel], nb,
                                                    device=cfg.device)
                    band_vals[:, ii[sel] - r0, jj[sel]] = mean.T
                    if with_std:
                        band_std[:, ii[sel] - r0, jj[sel]] = sd.T
            values[:, r0:r1, :] = band_vals
            if with_std:
                std[:, r0:r1, :] = band_std
            progress.advance()


def map_gene_weights(fits: list | StackedModel, genes: list[str], cfg: RunConfig
                     ) -> GeneWeights:
    """Return the per-gene weights of the factorised maps of ``fits``.

    ``fits`` are the network fits, or a :class:`StackedModel`. The weights are the networks'
    output layers and skip weights, and with the blend, the ridge coefficients, the blend
    weights, the measured spots' expression and with the detail transfer the spots' level.
    """
    stacked = fits if isinstance(fits, StackedModel) else None
    models = [f.model for f in (stacked.fits if stacked is not None else fits)]
    names = list(stacked.blend.names) if stacked is not None else ["network"]
    weights = GeneWeights(gene_names=list(genes), candidates=names)
    if "network" in names and models:
        configs = {(m.config.output_activation, m.config.neighbour_skip) for m in models}
        if len(configs) != 1:
            raise ValueError("the networks differ in output activation or skip path")
        activation, skip = configs.pop()
        weights.activation = activation
        last = [m.decoder[-1] for m in models]
        weights.network_weight = np.stack([
            lay.weight.detach().cpu().numpy().astype(np.float32) for lay in last])
        weights.network_bias = np.stack([
            lay.bias.detach().cpu().numpy().astype(np.float32) for lay in last])
        if skip:
            weights.skip_k = int(cfg.n_neighbours)
            weights.network_skip = np.stack([
                m.skip_weight.detach().cpu().numpy().astype(np.float32) for m in models])
            weights.network_neighbour_mean = np.stack([
                m.neighbour_mean.detach().cpu().numpy().astype(np.float32) for m in models])
    if stacked is not None:
        blend = stacked.blend
        weights.blend_weights = np.asarray(blend.weights, dtype=np.float64)
        weights.candidate_mean = np.asarray(blend.candidate_mean, dtype=np.float64)
        weights.target_mean = np.asarray(blend.target_mean, dtype=np.float64)
        if stacked.ridge is not None:
            weights.ridge_coef = np.asarray(stacked.ridge.model.coef_, dtype=np.float64
                                            ).reshape(len(genes), -1)
            weights.ridge_intercept = np.broadcast_to(np.asarray(
                stacked.ridge.model.intercept_, dtype=np.float64), (len(genes),)).copy()
    if weights.knn_ks() and stacked is not None:
        weights.spots_expression = np.asarray(stacked.src_y, dtype=np.float32)
        if stacked.spots_level is not None:
            weights.spots_level = np.asarray(stacked.spots_level, dtype=np.float32)
    return weights


def map_factor_model(fits: list | StackedModel, weights: GeneWeights, cfg: RunConfig
                     ) -> FactorModel:
    """Return what computes the factors of a map location from its stored inputs.

    The networks of ``fits`` (up to their last hidden layer), the ridge head's
    standardisation, and the neighbour input (kNN of the spots' expression,
    ``cfg.n_neighbours`` neighbours) when the run uses one.
    """
    stacked = fits if isinstance(fits, StackedModel) else None
    models = ([f.model for f in (stacked.fits if stacked is not None else fits)]
              if "network" in weights.candidates else [])
    return FactorModel(networks=models, ridge=None if stacked is None else stacked.ridge,
                       neighbour_k=int(cfg.n_neighbours) if cfg.neighbour_input else None,
                       image_input=bool(cfg.image_input), device=cfg.device,
                       threads=cfg.threads)


def _location_inputs(factor_model: FactorModel, weights: GeneWeights, feats,
                     pts: np.ndarray, src_rc_um: np.ndarray) -> LocationFactors:
    """Return what the store keeps of map locations ``pts`` (features ``feats``).

    Their kNN weights over the spots ``src_rc_um`` and their image features.
    """
    from ..neighbours import idw_weights

    out = LocationFactors(features=(np.asarray(feats, dtype=np.float32)
                                    if factor_model.image_input else None))
    for k in factor_model.knn_ks(weights):
        idx, w = idw_weights(src_rc_um, pts, k)
        out.knn[k] = (idx.astype(np.int32), w)
    return out


def _predict_factor_maps(fits, image, encoder, rc_um, y, windows_um, grid, cfg, *, genes,
                         progress, store_path, map_path, factor_dtype, overwrite, band_rows,
                         neighbour_images=None) -> FactorMaps:
    """:func:`predict_maps` with ``factorised=True``."""
    weights = map_gene_weights(fits, genes, cfg)
    factor_model = map_factor_model(fits, weights, cfg)
    if factor_model.knn_ks(weights) and weights.spots_expression is None:
        weights.spots_expression = np.asarray(y, dtype=np.float32)
    src_rc_um = fits.src_rc_um if isinstance(fits, StackedModel) else rc_um
    writer = MapStoreWriter(store_path, weights, grid.mask, grid.stride_um, grid.origin_rc_um,
                            overwrite=overwrite, factor_dtype=factor_dtype,
                            factor_model=factor_model)
    n_rows, n_cols = grid.shape
    rows_per_block = feature_block_rows(n_cols, n_windows=len(windows_um), n_genes=len(genes),
                                        embed_dim=getattr(encoder, "embed_dim", 1024))
    progress.stage("maps", total=int(np.ceil(n_rows / rows_per_block)))
    try:
        for b0 in range(0, n_rows, rows_per_block):
            b1 = min(n_rows, b0 + rows_per_block)
            ii, jj = np.nonzero(grid.mask[b0:b1])
            if len(ii):
                pts = grid.origin_rc_um + np.stack([ii + b0, jj], axis=1) * grid.stride_um
                feats = _features(image, encoder, pts, windows_um, cfg, Progress(), dense=True,
                                  cache=False, neighbour_images=neighbour_images)
                for c0 in range(0, len(pts), FACTOR_BLOCK_LOCATIONS):
                    sl = slice(c0, c0 + FACTOR_BLOCK_LOCATIONS)
                    writer.append(_location_inputs(factor_model, weights, feats[sl], pts[sl],
                                                   src_rc_um))
            progress.advance()
        maps = writer.finalize()
    except BaseException:
        writer.abort()
        raise
    if map_path is not None:
        from ..io.map_store import materialise_ome_zarr

        materialise_ome_zarr(maps, map_path, overwrite=overwrite)
    return maps


#: map locations whose inputs (kNN weights) are computed at once: one chunk of the store, so
#: the writer copies nothing
FACTOR_BLOCK_LOCATIONS = LOCATION_CHUNK


#: values (genes x spots x disk pixels) of the spots' footprints computed in one call of a
#: factorised map's ``values_at`` (256 MB of float32), which runs the networks once per call
FOOTPRINT_VALUES = 64 * 2**20


#: the map-to-spot consistency check averages each spot's disk over map pixels this far apart
#: (every pixel of a map at this pixel size or coarser; every k-th along rows and columns of a
#: finer one): a 2 um map's disks would otherwise run the networks at most of its locations
CONSISTENCY_SPACING_UM = 8.0


def map_footprint_means(maps: DenseMaps, rc_um: np.ndarray, spot_diameter_um: float, *,
                        spacing_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average the dense map over each spot's disk (``spot_diameter_um`` at ``rc_um``).

    Returns the means (spots, genes; NaN for a spot whose disk holds no map pixel inside the
    map's mask) and, per spot, the share of its disk's pixels that lie inside the mask.
    ``spacing_um``: the disk's pixels are taken every k-th along rows and columns, k the
    largest that keeps them at most this far apart (from the pixel nearest the centre);
    None: every pixel.
    """
    k = 1 if spacing_um is None else max(1, int(spacing_um / maps.stride_um + 1e-9))
    offs = geometry.disk_offsets_um(spot_diameter_um, k * maps.stride_um)
    idx = np.rint((rc_um[:, None, :] + offs[None] - maps.origin_rc_um) / maps.stride_um).astype(int)
    n_rows, n_cols = maps.mask.shape
    inside = ((idx[..., 0] >= 0) & (idx[..., 0] < n_rows) & (idx[..., 1] >= 0)
              & (idx[..., 1] < n_cols))
    idx = np.clip(idx, 0, [n_rows - 1, n_cols - 1])
    valid = inside & maps.mask[idx[..., 0], idx[..., 1]]
    n_valid = valid.sum(axis=1)
    means = np.full((len(rc_um), len(maps.gene_names)), np.nan, dtype=np.float64)
    some = n_valid > 0
    rows, cols, ok = idx[some, :, 0], idx[some, :, 1], valid[some]
    values_at = getattr(maps, "values_at", None)  # factorised maps: only these pixels
    # factorised maps compute the locations' factors (the networks) once per call: as many
    # genes per call as FOOTPRINT_VALUES allows (all of a her2st section's)
    step = 64 if values_at is None else max(64, FOOTPRINT_VALUES // max(1, rows.size))
    for g0 in range(0, len(maps.gene_names), step):
        if values_at is not None:
            vals = values_at(range(g0, min(len(maps.gene_names), g0 + step)), rows, cols)
        else:
            vals = np.asarray(maps.values[g0:g0 + step])[:, rows, cols]  # (g, spots, k)
        vals = np.where(ok[None], vals, 0.0)
        means[some, g0:g0 + step] = (vals.sum(axis=2) / n_valid[some][None]).T
    return means, valid.mean(axis=1)


def map_spot_consistency(maps: DenseMaps, rc_um: np.ndarray, y: np.ndarray,
                         spot_diameter_um: float) -> dict[str, float]:
    """Score how well the dense map, averaged over each measured spot's disk, reproduces the spots.

    Mean per-gene PCC (and MSE) between the two, over the spots the map covers; the disks
    are averaged over map pixels :data:`CONSISTENCY_SPACING_UM` apart.
    """
    from ..metrics import per_gene_pcc

    means, coverage = map_footprint_means(maps, rc_um, spot_diameter_um,
                                          spacing_um=CONSISTENCY_SPACING_UM)
    covered = coverage >= 0.5
    if covered.sum() < 3:
        return {"pcc_mean": float("nan"), "mse": float("nan"), "n_spots": int(covered.sum())}
    agg = means[covered]
    pcc = per_gene_pcc(agg, y[covered])
    return {"pcc_mean": float(np.nanmean(pcc)), "mse": float(((agg - y[covered]) ** 2).mean()),
            "n_spots": int(covered.sum())}
