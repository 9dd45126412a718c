"""Cells: nuclei from the H&E (or the user's), grown into cells, with per-cell expression.

Each cell's expression is the enhanced maps averaged over its area.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import geometry, nuclei
from ..errors import TrihrgeInputError
from ..progress import Progress, ensure_progress
from ._store import store_result

#: what the cells of a slide without measured spots (a bare H&E) say about their expression
NO_SPOTS_NOTE = ("no measured spots on this slide: each cell's expression is the model's "
                 "prediction from the H&E alone, with no spot-aggregation constraint (nothing "
                 "measured here for the cells to agree with); obs['spot'] is empty")


@dataclass
class CellsResult:
    """Cells of a sample: the cells AnnData and the label images.

    ``cells``: one row per cell (obs: ``cell_id``, centroid ``row_um``/``col_um`` and
    ``x_px``/``y_px`` in full-resolution pixels, ``area_um2``, ``nucleus_area_um2``, nuclear
    shape and ``hematoxylin_od``, ``spot`` (the measured spot whose disk holds the centroid, ''
    if none); ``obsm['spatial']`` x/y full-resolution px; X the predicted log-normalised
    expression averaged over the cell, var the per-gene trust columns). ``nuclei`` and
    ``cell_labels``: int32 label images on the H&E's pixel grid (``um_per_px``); cell ``k`` is
    label ``k`` in both.
    """

    cells: AnnData
    nuclei: np.ndarray
    cell_labels: np.ndarray
    um_per_px: float
    metrics: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)


def cell_map_weights(cell_labels: np.ndarray, um_per_px: float, maps: Any, *,
                     tile_um: float = nuclei.TILE_UM) -> sparse.csr_matrix:
    """Build the sparse (cells, map pixels) matrix of each cell's area share per map pixel.

    Every image pixel goes to its nearest map pixel centre; only map pixels with a value
    (``maps.mask``) count, and a cell that covers none has an empty row.
    """
    px = float(um_per_px)
    n_rows, n_cols = maps.mask.shape
    tile_px = max(64, int(round(tile_um / px)))
    n_cells = nuclei.labels_max(cell_labels, tile_px=tile_px)
    parts = []
    for core, _ in nuclei.tiles(cell_labels.shape, tile_px, 0):
        lab = np.asarray(cell_labels[core])
        if not lab.any():
            continue
        rr, cc = np.nonzero(lab)
        ids = lab[rr, cc].astype(np.int64)
        rc_um = np.stack([rr + core[0].start, cc + core[1].start], axis=1) * px
        ij = np.rint((rc_um - np.asarray(maps.origin_rc_um)) / float(maps.stride_um)).astype(
            np.int64)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < n_rows) & (ij[:, 1] >= 0) & (ij[:, 1] < n_cols)
        ids, ij = ids[ok], ij[ok]
        ok = maps.mask[ij[:, 0], ij[:, 1]]
        key = ids[ok] * (n_rows * n_cols) + ij[ok, 0] * n_cols + ij[ok, 1]
        uniq, counts = np.unique(key, return_counts=True)
        parts.append((uniq // (n_rows * n_cols), uniq % (n_rows * n_cols), counts))
    if parts:
        cell = np.concatenate([p[0] for p in parts]) - 1
        pix = np.concatenate([p[1] for p in parts])
        cnt = np.concatenate([p[2] for p in parts]).astype(np.float64)
    else:
        cell = pix = np.zeros(0, dtype=np.int64)
        cnt = np.zeros(0)
    w = sparse.csr_matrix((cnt, (cell, pix)), shape=(n_cells, n_rows * n_cols))
    total = np.asarray(w.sum(axis=1)).ravel()
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    return sparse.diags(scale) @ w


def average_maps_over_cells(weights: sparse.csr_matrix, maps: Any, *,
                            genes_per_block: int = 16) -> np.ndarray:
    """Average every gene's map over each cell: (cells, genes) float32.

    ``weights``: from :func:`cell_map_weights`. NaN for a cell the map does not cover. Reads
    the maps a block of genes at a time, only the map pixels some cell touches.
    """
    weights = weights.tocsc()
    used = np.flatnonzero(np.diff(weights.indptr))
    w_used = weights[:, used].tocsr()
    n_rows, n_cols = maps.mask.shape
    ui, uj = used // n_cols, used % n_cols
    n_genes = len(maps.gene_names)
    out = np.empty((weights.shape[0], n_genes), dtype=np.float32)
    for g0 in range(0, n_genes, genes_per_block):
        block = np.asarray(maps.values[g0:g0 + genes_per_block], dtype=np.float64)
        vals = block[:, ui, uj].T  # (used pixels, genes)
        vals = np.nan_to_num(vals, nan=0.0)
        out[:, g0:g0 + genes_per_block] = (w_used @ vals).astype(np.float32)
    empty = np.asarray(weights.sum(axis=1)).ravel() <= 0
    out[empty] = np.nan
    return out


def cell_spot_consistency(adata: AnnData, cells: AnnData, *, min_cells: int = 3
                          ) -> dict[str, float]:
    """How well the cells of each measured spot agree with it on average.

    For every spot holding at least ``min_cells`` cells (``cells.obs['spot']``), the mean of
    its cells' predicted expression against the spot's measured log-normalised expression:
    mean per-gene PCC over those spots (``pcc_mean``, a constant gene counting as 0), with the
    number of spots. The same check the maps get (``tl.map_spot_consistency``), for cells.
    """
    from ..metrics import fair_pcc
    from ..pp import gene_expression

    genes = [g for g in cells.var_names if g in adata.var_names]
    spot = cells.obs["spot"].astype(str).to_numpy()
    names, counts = np.unique(spot[spot != ""], return_counts=True)
    names = names[counts >= min_cells]
    if len(names) < 3 or not genes:
        return {"pcc_mean": float("nan"), "n_spots": int(len(names))}
    x = np.asarray(cells[:, genes].X, dtype=np.float64)
    pos = pd.Index(names).get_indexer(spot)
    inside = pos >= 0
    sums = np.zeros((len(names), len(genes)))
    np.add.at(sums, pos[inside], np.nan_to_num(x[inside]))
    mean = sums / np.bincount(pos[inside], minlength=len(names))[:, None]
    measured = gene_expression(adata, genes).loc[names].to_numpy(dtype=np.float64)
    pcc = fair_pcc(mean, measured)
    return {"pcc_mean": float(np.nanmean(pcc)), "n_spots": int(len(names))}


def read_labels(source: Any, shape_px: tuple[int, int], *, what: str = "the label image"
                ) -> np.ndarray:
    """Read a user's segmentation as int32 labels on the H&E's pixel grid ``shape_px``.

    ``source``: an array, a ``.npy`` file, a TIFF or an OME-Zarr labels image (path). A shape
    that differs from the H&E is refused with both shapes named; labels are renumbered 1..n.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise TrihrgeInputError(f"{what} not found: {path}", "check the path")
        name = path.name.lower()
        if name.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        elif name.endswith((".tif", ".tiff")):
            import tifffile

            arr = tifffile.imread(path)
        elif name.endswith(".zarr") or path.is_dir():
            arr = _read_zarr_labels(path)
        else:
            raise TrihrgeInputError(f"{what} {path.name} is not a .npy, TIFF or OME-Zarr file",
                                    "save the labels as .npy, .tif or .ome.zarr (or pass a "
                                    "QuPath GeoJSON of cells)")
        what = f"{what} {path.name}"
    else:
        arr = np.asarray(source)
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise TrihrgeInputError(f"{what} has shape {arr.shape}; a label image is 2-D",
                                "pass one 2-D integer image, 0 = background")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if not np.all(np.mod(arr, 1) == 0):
            raise TrihrgeInputError(f"{what} holds non-integer values ({arr.dtype})",
                                    "pass integer labels, 0 = background")
    if tuple(arr.shape) != tuple(shape_px):
        raise TrihrgeInputError(
            f"{what} has shape {arr.shape[0]} x {arr.shape[1]} px but the H&E is "
            f"{shape_px[0]} x {shape_px[1]} px",
            "segment the same full-resolution H&E the sample uses (labels on its pixel grid)")
    if arr.min() < 0:
        raise TrihrgeInputError(f"{what} holds negative labels", "use 0 for background")
    return _relabel_sequential(arr.astype(np.int64))


def _element_labels(adata: AnnData, source: Any, shape_px: tuple[int, int],
                    label_um_per_px: float) -> Any:
    """Read a SpatialData element reference (``STORE.zarr::ELEMENT``) as labels on the grid.

    Any other source is returned as it is.
    """
    from ..io.cell_formats import is_element_reference, read_segmentation_element

    if not is_element_reference(source):
        return source
    info = adata.uns.get("trihrge", {})
    fullres_um_per_px = float(info.get("um_per_px", label_um_per_px))
    store_info = info.get("spatialdata") or {}
    return read_segmentation_element(source, shape_px,
                                     px_per_fullres_px=fullres_um_per_px / label_um_per_px,
                                     coordinate_system=store_info.get("coordinate_system"))


def _label_stores(path: str | Path, shape_px: tuple[int, int]) -> dict[str, Any]:
    """Create zero-filled on-disk int32 arrays ``nuclei`` and ``cells`` (a new zarr folder)."""
    import zarr

    path = Path(path)
    if path.exists():
        raise TrihrgeInputError(f"{path} already exists",
                                "give a new folder for the label images (labels_store)")
    root = zarr.open_group(str(path), mode="w")
    chunks = (min(2048, shape_px[0]), min(2048, shape_px[1]))
    return {name: root.create_array(name, shape=tuple(shape_px), chunks=chunks, dtype="int32",
                                    fill_value=0) for name in ("nuclei", "cells")}


def _read_zarr_labels(path: Any) -> np.ndarray:
    import zarr

    root = zarr.open(str(path), mode="r")
    if isinstance(root, zarr.Array):
        return np.asarray(root)
    # OME-Zarr: the labels group (first label) or the image itself, finest level "0"
    node = root
    if "labels" in node:
        node = node["labels"]
        names = [k for k in node.group_keys()]
        node = node[names[0]] if names else node
    scales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    level = scales[0]["datasets"][0]["path"] if scales else "0"  # the finest level
    if level in node:
        return np.asarray(node[level])
    raise TrihrgeInputError(f"no label array found in {path}",
                            "pass an OME-Zarr labels image (with a level '0' array)")


def _relabel_sequential(arr: np.ndarray) -> np.ndarray:
    ids = np.unique(arr)
    ids = ids[ids > 0]
    if len(ids) and ids[-1] == len(ids):
        return arr.astype(np.int32)
    lut = np.zeros(int(arr.max()) + 1 if arr.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[arr]


def check_segmentable(image: Any) -> None:
    """Refuse an H&E whose pixels are too coarse for the built-in nuclei segmentation."""
    if image.um_per_px > nuclei.MAX_UM_PER_PX:
        raise TrihrgeInputError(
            f"the sample's H&E ({image.source}) has {image.um_per_px:.2g} um pixels, too coarse "
            f"to see nuclei (at most {nuclei.MAX_UM_PER_PX:g} um per pixel)",
            "give the full-resolution H&E (--image / fullres_image=...), or bring your own "
            "segmentation on this image's grid")


def cells(adata: AnnData | str | Path, *, maps: Any = None, trust: pd.DataFrame | None = None,
          nuclei_labels: Any = None, cell_labels: Any = None,
          expand_um: float = nuclei.EXPAND_UM, options: nuclei.NucleusOptions | None = None,
          tile_um: float = nuclei.TILE_UM, um_per_px: float | None = None,
          labels_store: str | Path | None = None, progress: Progress | None = None,
          key_added: str | None = None) -> CellsResult:
    """Find the cells of a sample and give each the enhanced expression over its area.

    Nuclei are segmented from its H&E tile by tile (or given), grown into cells, measured, and
    (with ``maps``) given the enhanced expression averaged over each cell.

    Parameters
    ----------
    adata
        A sample (:func:`napari_trihrge.io.read`); its H&E (:func:`napari_trihrge.io.get_image`)
        is segmented at its own pixel size. Or the path of a sample or of a bare H&E image
        (a slide never sequenced, as :func:`predict` takes it): its cells have no measured
        spot to agree with, which ``uns['trihrge']['cells']['spot_constraint']`` (False) and
        its ``note`` say.
    maps
        :class:`DenseMaps` of :func:`enhance` / :func:`predict` (``result.maps``); without it
        the cells get no expression (X has no genes).
    trust
        Per-gene trust table (``result.trust`` or the enhanced ``var``) for the cells' ``var``.
    nuclei_labels, cell_labels
        Bring your own segmentation: label images on the H&E's pixel grid (arrays or .npy,
        TIFF, OME-Zarr paths), or a SpatialData labels or shapes element
        (``'STORE.zarr::ELEMENT'``; shapes in the sample's full-resolution pixels). Nuclei
        alone are expanded by ``expand_um``; cells alone are used
        as they are (the nucleus is then the cell).
    expand_um
        Distance nuclei are grown into cells, in micrometres.
    um_per_px
        Pixel size of a bare H&E image given as a path (when its file does not say).
    labels_store
        A new zarr folder: the built-in segmentation writes the whole-slide nuclei and cell
        labels there tile by tile instead of into memory (``result.nuclei`` and
        ``result.cell_labels`` are then zarr arrays read on demand), so memory is bounded by
        the tile and the H&E.
    options
        :class:`napari_trihrge.nuclei.NucleusOptions` of the built-in segmentation.
    """
    import time

    from ..io.sample import get_image
    from ..tissue import tissue_mask_for

    if not isinstance(adata, AnnData):
        from ._predict import _as_target

        adata = _as_target(adata, um_per_px)
    progress = ensure_progress(progress)
    timings: dict[str, float] = {}
    fullres_um_per_px = float(adata.uns.get("trihrge", {}).get("um_per_px", 0) or 0)
    if not fullres_um_per_px:
        raise TrihrgeInputError("the sample has no pixel size (uns['trihrge']['um_per_px'])",
                                "read it with napari_trihrge.io.read or pass um_per_px")
    if not float(expand_um) >= 0:
        raise TrihrgeInputError(f"the cell expansion must be >= 0 um, got {expand_um}",
                                f"use for example --expand-um {nuclei.EXPAND_UM}")
    image = get_image(adata)
    px = image.um_per_px
    shape = image.shape_px
    if nuclei_labels is None and cell_labels is None:
        check_segmentable(image)
    t0 = time.perf_counter()
    nuclei_labels, cell_labels = (
        _element_labels(adata, src, shape, px) for src in (nuclei_labels, cell_labels))
    given_nuclei = (read_labels(nuclei_labels, shape, what="the nuclei labels")
                    if nuclei_labels is not None else None)
    given_cells = (read_labels(cell_labels, shape, what="the cell labels")
                   if cell_labels is not None else None)
    threshold = float("nan")
    tissue, tissue_px = tissue_mask_for(image)
    stores = {}
    if given_nuclei is None and given_cells is None:
        if labels_store is not None:
            stores = _label_stores(labels_store, shape)
        seg = nuclei.segment_image(image.array, px, options=options, tissue=tissue,
                                   tile_um=tile_um, progress=progress, out=stores.get("nuclei"))
        given_nuclei, threshold = seg.nuclei, seg.threshold_od
    timings["nuclei"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if given_cells is None:
        cell_lab = nuclei.expand_to_cells(given_nuclei, px, expand_um, tile_um=tile_um,
                                          out=stores.get("cells"))
    else:
        cell_lab = given_cells
        if given_nuclei is None:
            given_nuclei = cell_lab
        else:
            given_nuclei = np.where(given_nuclei > 0, cell_lab, 0).astype(np.int32)
    n_cells = nuclei.labels_max(cell_lab)
    if n_cells == 0 and stores:  # nothing found: no half-done label store left behind
        import shutil

        shutil.rmtree(labels_store, ignore_errors=True)
    if n_cells == 0:
        raise TrihrgeInputError(
            "no nuclei found in the H&E" if nuclei_labels is None and cell_labels is None
            else "the given segmentation holds no labels",
            "check that the image is an H&E with tissue (and its pixel size); set a lower "
            "--threshold for a pale stain, or bring your own labels")
    timings["cells"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    progress.stage("measurements", total=1)
    cell_tab = nuclei.label_measurements(cell_lab, px, tile_um=tile_um)
    nuc_tab = nuclei.label_measurements(given_nuclei, px, image=image.array, tile_um=tile_um)
    progress.advance()
    obs = _cell_obs(adata, cell_tab, nuc_tab, fullres_um_per_px)
    timings["measurements"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {
        "n_cells": n_cells, "um_per_px": px, "expand_um": float(expand_um),
        "segmentation": "given" if (nuclei_labels is not None or cell_labels is not None)
        else "built-in", "threshold_hematoxylin_od": threshold,
        "cells_per_mm2_tissue": float("nan"),
    }
    if maps is not None:
        progress.stage("cell expression", total=1)
        w = cell_map_weights(cell_lab, px, maps, tile_um=tile_um)
        x = average_maps_over_cells(w, maps)
        genes = list(maps.gene_names)
        progress.advance()
        metrics["n_cells_without_map"] = int(np.isnan(x[:, 0]).sum()) if x.shape[1] else 0
        if adata.n_obs:
            agree = cell_spot_consistency(adata, AnnData(X=x, obs=obs, var=pd.DataFrame(
                index=pd.Index(genes, dtype=str))))
            metrics["cells_vs_spot_pcc_mean"] = agree["pcc_mean"]
            metrics["cells_vs_spot_n_spots"] = agree["n_spots"]
    else:
        x = np.zeros((n_cells, 0), dtype=np.float32)
        genes = []
    timings["expression"] = time.perf_counter() - t0
    var = pd.DataFrame(index=pd.Index(genes, dtype=str))
    if trust is not None and len(genes):
        for col in trust.columns:
            var[col] = trust[col].reindex(var.index).to_numpy()
    out = AnnData(X=x, obs=obs, var=var)
    out.obsm["spatial"] = obs[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    cells_info: dict[str, Any] = {"expand_um": float(expand_um), "label_um_per_px": px,
                                  "spot_constraint": bool(adata.n_obs)}
    if not adata.n_obs:
        cells_info["note"] = NO_SPOTS_NOTE
    metrics["spot_constraint"] = bool(adata.n_obs)
    out.uns["trihrge"] = {**{k: v for k, v in adata.uns.get("trihrge", {}).items()
                             if isinstance(v, (str, int, float))}, "cells": cells_info}
    tissue_mm2 = float(tissue.sum()) * (tissue_px / 1000.0) ** 2
    if tissue_mm2:
        metrics["cells_per_mm2_tissue"] = n_cells / tissue_mm2
    metrics["timings_s"] = dict(timings)
    store_result(adata, "cells", metrics={k: v for k, v in metrics.items() if k != "timings_s"},
                 config={"expand_um": float(expand_um), "tile_um": float(tile_um)},
                 key_added=key_added)
    return CellsResult(cells=out, nuclei=given_nuclei, cell_labels=cell_lab, um_per_px=px,
                       metrics=metrics, timings_s=timings)


def _cell_obs(adata: AnnData, cell_tab: pd.DataFrame, nuc_tab: pd.DataFrame,
              fullres_um_per_px: float) -> pd.DataFrame:
    """Build the cells' obs (one row per label, ids ``cell_<k>``)."""
    rc_um = cell_tab[["row_um", "col_um"]].to_numpy()
    xy_px = geometry.rc_um_to_xy_px(rc_um, fullres_um_per_px)
    obs = pd.DataFrame({
        "cell_id": cell_tab.index.to_numpy().astype(np.int64),
        "row_um": rc_um[:, 0], "col_um": rc_um[:, 1], "x_px": xy_px[:, 0], "y_px": xy_px[:, 1],
        "area_um2": cell_tab["area_um2"].to_numpy(),
        "nucleus_area_um2": nuc_tab["area_um2"].reindex(cell_tab.index).fillna(0).to_numpy(),
        "nucleus_major_axis_um": nuc_tab["major_axis_um"].reindex(cell_tab.index).to_numpy(),
        "nucleus_minor_axis_um": nuc_tab["minor_axis_um"].reindex(cell_tab.index).to_numpy(),
        "nucleus_eccentricity": nuc_tab["eccentricity"].reindex(cell_tab.index).to_numpy(),
        "hematoxylin_od": nuc_tab["hematoxylin_od"].reindex(cell_tab.index).to_numpy(),
        "spot": _spot_of(adata, rc_um, fullres_um_per_px),
    }, index=pd.Index([f"cell_{k}" for k in cell_tab.index], dtype=str))
    return obs


def _spot_of(adata: AnnData, rc_um: np.ndarray, fullres_um_per_px: float) -> np.ndarray:
    """Name the measured spot whose disk holds each point ('' when none)."""
    from scipy.spatial import cKDTree

    out = np.full(len(rc_um), "", dtype=object)
    if adata.n_obs == 0 or "spatial" not in adata.obsm:
        return out
    spots = geometry.xy_px_to_rc_um(np.asarray(adata.obsm["spatial"], dtype=np.float64),
                                    fullres_um_per_px)
    radius = float(adata.uns.get("trihrge", {}).get("spot_diameter_um", 55.0)) / 2.0
    ok = np.all(np.isfinite(rc_um), axis=1)
    dist, idx = cKDTree(spots).query(rc_um[ok], k=1)
    names = np.asarray(adata.obs_names, dtype=object)
    out[np.flatnonzero(ok)] = np.where(dist <= radius, names[idx], "")
    return out
