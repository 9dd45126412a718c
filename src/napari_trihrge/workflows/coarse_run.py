"""``trihrge validate-coarse``: the coarse-to-fine validation written as a run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._atomic import atomic_path
from ..geometry import DEFAULT_BLOCK_SIZE
from ..io.outputs import mark_complete, peak_rss_mb, run_folder, write_h5ad, write_json
from ..progress import Progress, ensure_progress
from ..tl import RunConfig
from ..tl.coarse_validation import DEFAULT_STRIDE_UM, validate_coarse
from .runs import _base_summary, enhance_map_path, repoint_maps

#: the files a validate-coarse run folder holds (besides enhance's map, ``maps.ome.zarr``)
COARSE_OUTPUTS = {"coarse": "coarse.h5ad", "spots": "spots.h5ad",
                  "per_gene": "validate_coarse_genes.csv"}


def run_validate_coarse(adata: AnnData, out_dir: str | Path, *, factor: int = DEFAULT_BLOCK_SIZE,
                        stride_um: float = DEFAULT_STRIDE_UM, config: RunConfig | None = None,
                        progress: Progress | None = None, overwrite: bool = False,
                        annotation=None, split_counts: bool = False,
                        reference=None, reference_weight: float | None = None
                        ) -> dict[str, Any]:
    """Run :func:`napari_trihrge.tl.validate_coarse` and write its run folder: ``coarse.h5ad``
    (the pseudo-spots: summed raw counts of every gene), ``spots.h5ad`` (one row per real spot
    scored: the map averaged over its footprint, the measurement, every baseline),
    ``validate_coarse_genes.csv``, enhance's map of the coarse sample (``maps.ome.zarr``) and
    ``summary.json`` (``validate_coarse``: the scores). ``annotation``: labels of the spots for
    the marker genes class; ``split_counts``: pseudo-spots from one binomial half of the
    counts, scored against the other. Returns the summary."""
    cfg = config or RunConfig()
    progress = ensure_progress(progress)
    with run_folder(out_dir, overwrite) as out:  # appears only when complete
        t0 = time.perf_counter()
        res = validate_coarse(adata, factor=factor, stride_um=stride_um, config=cfg,
                              progress=progress, map_path=enhance_map_path(out, stride_um),
                              annotation=annotation, split_counts=split_counts,
                              reference=reference, reference_weight=reference_weight)
        t1 = time.perf_counter()
        progress.stage("writing", 1)
        write_h5ad(res.coarse, out / COARSE_OUTPUTS["coarse"])
        write_h5ad(res.spots, out / COARSE_OUTPUTS["spots"])
        with atomic_path(out / COARSE_OUTPUTS["per_gene"]) as tmp:
            res.per_gene.to_csv(tmp)
        summary = _base_summary(adata, cfg, res.spots.n_vars)
        summary["validate_coarse"] = res.metrics
        summary["outputs"] = {**COARSE_OUTPUTS, "maps": "maps.ome.zarr"}
        summary["timings_s"] = {**res.timings_s, "writing": time.perf_counter() - t1,
                                "total": time.perf_counter() - t0}
        summary["peak_rss_mb"] = peak_rss_mb()
        write_json(out / "summary.json", summary)
        mark_complete(out)
        progress.advance()
    repoint_maps(res.enhance, out_dir)
    return summary

