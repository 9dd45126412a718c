"""The cells run folder (``trihrge cells``, ``--cells`` of enhance and predict): nuclei, cells
and each cell's expression from a run's maps, with QuPath regions in and GeoJSON out."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from ..errors import TrihrgeInputError
from ..io.cell_formats import check_cell_formats
from ..io.outputs import (
    mark_complete,
    run_folder,
    write_json,
)
from ..progress import Progress, ensure_progress
from .map_export import read_run_maps


def run_cells(adata: AnnData, out_dir: str | Path, *, run_dir: str | Path | None = None,
              nuclei_labels: Any = None, cell_labels: Any = None, expand_um: float | None = None,
              options: Any = None, regions: str | Path | None = None,
              geojson_genes: Sequence[str] | None = None, formats: Sequence[str] = (),
              progress: Progress | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the cells of a sample as a run folder ``out_dir``.

    Nuclei are segmented from the sample's H&E (or given: label images, or a QuPath GeoJSON of
    cells/detections), grown into cells and, with ``run_dir`` (a finished enhance/predict run
    with maps), given the enhanced expression averaged over each cell. Writes ``cells.h5ad``,
    ``nuclei.tif`` / ``cells.tif`` (int32 labels on the H&E's pixel grid), with
    ``geojson_genes`` (possibly empty) ``cells.geojson`` for QuPath, and ``summary.json``.
    ``regions``: a QuPath GeoJSON of annotations; each cell gets ``obs['region']``.
    ``formats``: also ``'ome-zarr'`` (``labels.ome.zarr``: OME-Zarr labels ``nuclei`` and
    ``cells``) and/or ``'spatialdata'`` (``cells.spatialdata.zarr``: both labels and the cells
    table annotating the ``cells`` labels).
    """

    import pandas as pd

    from .. import nuclei as nuc
    from ..io import geojson
    from ..io.outputs import read_run
    from ..io.sample import get_image
    from ..tl import cells

    progress = ensure_progress(progress)
    check_cell_formats(formats)
    um_per_px = float(adata.uns.get("trihrge", {}).get("um_per_px", 0) or 0)
    image = get_image(adata)
    shape = image.shape_px
    to_grid = um_per_px / image.um_per_px  # full-resolution px -> the H&E grid
    given_regions = None
    if regions is not None:  # checked before any heavy work
        full_shape = (shape[0] / to_grid, shape[1] / to_grid)
        given_regions = geojson.read_regions(regions, um_per_px, image_shape_px=full_shape)
    labels_kw: dict[str, Any] = {"nuclei_labels": nuclei_labels, "cell_labels": cell_labels}
    for key, src in list(labels_kw.items()):
        if src is not None and str(src).lower().endswith((".geojson", ".json")):
            outline, inner = geojson.labels_from_geojson(src, shape, px_per_fullres_px=to_grid)
            labels_kw[key] = outline
            if key == "cell_labels" and inner is not None and nuclei_labels is None:
                labels_kw["nuclei_labels"] = inner
    maps = trust = None
    if run_dir is not None:
        run = read_run(run_dir)
        _check_run_matches_sample(run["summary"], adata, run_dir)
        maps = read_run_maps(run_dir)  # materialised maps are read, store genes computed
        enhanced = run.get("enhanced")
        if enhanced is not None:
            from ..metrics import TRUST_COLUMNS

            trust = enhanced.var[[c for c in TRUST_COLUMNS if c in enhanced.var.columns]]
    if geojson_genes and maps is not None:
        missing = [g for g in geojson_genes if g not in maps.gene_names]
        if missing:
            raise TrihrgeInputError(f"{len(missing)} gene(s) are not in the run's maps, e.g. "
                                    f"{missing[0]!r}", "choose genes of the enhanced run")
    elif geojson_genes:
        raise TrihrgeInputError("genes for the GeoJSON need the expression of a run",
                                "pass the enhance/predict run folder with --run")
    kwargs = {} if expand_um is None else {"expand_um": float(expand_um)}
    with run_folder(out_dir, overwrite) as out:
        result = cells(adata, maps=maps, trust=trust, options=options, progress=progress,
                       **labels_kw, **kwargs)
        table = result.cells
        if given_regions is not None:
            from ..regions import points_in_regions

            inside = points_in_regions(given_regions, table.obs[["row_um", "col_um"]].to_numpy())
            first = np.where(inside.any(axis=0), inside.argmax(axis=0), -1)
            names = np.array([r.name for r in given_regions] + [""], dtype=object)
            table.obs["region"] = pd.Categorical(names[first])
        progress.stage("writing", total=1)
        from ..io.writers import write_h5ad_atomic

        write_h5ad_atomic(table, out / "cells.h5ad")
        import tifffile

        for name, lab in (("nuclei", result.nuclei), ("cells", result.cell_labels)):
            tifffile.imwrite(out / f"{name}.tif", lab, compression="zlib",
                             metadata={"axes": "YX"})
        files = {"cells": "cells.h5ad", "nuclei_labels": "nuclei.tif",
                 "cell_labels": "cells.tif"}
        if geojson_genes is not None:
            feats = geojson.cells_to_features(table, result.cell_labels, result.um_per_px,
                                              um_per_px, nuclei=result.nuclei,
                                              genes=list(geojson_genes))
            geojson.write_geojson(out / "cells.geojson", feats)
            files["geojson"] = "cells.geojson"
        if "ome-zarr" in formats:
            from ..io.cell_formats import write_labels_ome_zarr

            write_labels_ome_zarr(out / "labels.ome.zarr", {"nuclei": result.nuclei,
                                                            "cells": result.cell_labels},
                                  result.um_per_px)
            files["ome_zarr_labels"] = "labels.ome.zarr"
        if "spatialdata" in formats:
            from ..io.cell_formats import write_cells_spatialdata

            write_cells_spatialdata(out / "cells.spatialdata.zarr", table, result.nuclei,
                                    result.cell_labels, result.um_per_px)
            files["spatialdata"] = "cells.spatialdata.zarr"
        progress.advance()
        summary = {"task": "cells", "sample": adata.uns.get("trihrge", {}).get("sample"),
                   "source": adata.uns.get("trihrge", {}).get("source"),
                   "read_from": adata.uns.get("trihrge", {}).get("read_from"),
                   "run": None if run_dir is None else str(run_dir),
                   "metrics": {k: v for k, v in result.metrics.items() if k != "timings_s"},
                   "genes": [str(g) for g in table.var_names],
                   "timings_s": result.timings_s, "outputs": files,
                   "nucleus_options": dataclasses.asdict(options or nuc.NucleusOptions())}
        if given_regions is not None:
            summary["cells_per_region"] = {
                str(k): int(v) for k, v in table.obs["region"].value_counts().items()}
        write_json(out / "summary.json", json.loads(json.dumps(summary, default=float)))
        mark_complete(out)
    return summary


def _check_run_matches_sample(summary: dict[str, Any], adata: AnnData, run_dir: Any) -> None:
    """Refuse a run that was made on another sample (other spots or another pixel size)."""
    n_spots = summary.get("n_spots")
    run_px = summary.get("um_per_px")
    px = adata.uns.get("trihrge", {}).get("um_per_px")
    same_spots = n_spots is None or int(n_spots) == adata.n_obs
    same_px = run_px is None or px is None or abs(float(run_px) - float(px)) <= 1e-6 * float(px)
    if not (same_spots and same_px):
        raise TrihrgeInputError(
            f"the run {run_dir} was made on another sample ({n_spots} spots at {run_px} um/px; "
            f"this sample has {adata.n_obs} spots at {px} um/px)",
            "pass the sample the run was made on (--sample PATH with a run folder)")
