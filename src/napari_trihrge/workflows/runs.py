"""End-to-end runs: run a task on a sample and write the run folder. The CLI, the cohort runner,
the napari Train widget (through its worker) and Python users share these: :func:`run_task` is
the one path (it returns the result too, for the widget's layers); :func:`run_recovery` and
:func:`run_enhance` are its folder-writing forms that return the summary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from .. import geometry
from .._atomic import refuse_overwrite
from ..device import resolve_device
from ..errors import TrihrgeInputError
from ..io.cell_formats import check_cell_formats
from ..io.map_store import (
    STORE_NAME,
    for_display,
)
from ..io.outputs import (
    mark_complete,
    peak_rss_mb,
    run_folder,
    write_enhance,
    write_json,
    write_recovery,
)
from ..progress import Progress, ensure_progress
from ..tl import RunConfig, enhance, recovery, sample_geometry, trust_summary
from ..tl._maps import display_cache_bytes, displayed_maps
from ..tl._reference import split_references

if TYPE_CHECKING:
    from ..tl.inference import TrainedModel

#: the tasks :func:`run_task` runs
TASKS = ("recovery", "enhance")


@dataclasses.dataclass
class RunOutput:
    """A finished run: the task's result (RecoveryResult or EnhanceResult), and the summary and
    run folder written (both None when no folder was asked for)."""

    result: Any
    summary: dict[str, Any] | None = None
    out_dir: Path | None = None


def run_task(task: str, adata: AnnData, out_dir: str | Path | None = None, *,
             config: RunConfig | None = None, progress: Progress | None = None,
             overwrite: bool = False, prepare_maps: bool = False, **task_kwargs: Any
             ) -> RunOutput:
    """Run ``task`` ('recovery' or 'enhance') on ``adata``. With ``out_dir`` the run folder is
    written as by ``trihrge recovery`` / ``trihrge enhance`` (aside, swapped in when complete;
    enhance streams its maps there); without, nothing is written. ``prepare_maps``: compute
    the per-location factors of the maps a viewer shows
    (:func:`~napari_trihrge.tl._maps.displayed_maps`: every n-th pixel of a map too large to
    compute at once) before returning (:meth:`FactorMaps.warm`), so a viewer then shows any
    gene at once; each of those locations' networks runs once (for maps shown whole, the
    consistency check and the overview compute whole chunks, kept for the viewer within a
    share of the available memory, :func:`~napari_trihrge.io.map_store.for_display`, and the
    maps keep them when the run folder is swapped in). ``task_kwargs`` are
    :func:`run_recovery`'s or :func:`run_enhance`'s keyword arguments."""
    if task not in TASKS:
        raise TrihrgeInputError(f"unknown task {task!r}", f"use one of: {', '.join(TASKS)}")
    progress = ensure_progress(progress)
    with for_display(display_cache_bytes() if prepare_maps else None):
        output = _run_task(task, adata, out_dir, config=config, progress=progress,
                           overwrite=overwrite, **task_kwargs)
        maps = getattr(output.result, "maps", None)
        if prepare_maps and hasattr(maps, "warm"):
            displayed_maps(maps).warm(progress=progress)
    return output


def _run_task(task: str, adata: AnnData, out_dir: str | Path | None, *,
              config: RunConfig | None, progress: Progress | None, overwrite: bool,
              **task_kwargs: Any) -> RunOutput:
    cfg = config or RunConfig()
    progress = ensure_progress(progress)
    if task == "enhance" and (task_kwargs.get("spatialdata_store")
                              or task_kwargs.get("into_input")):
        if out_dir is None:
            raise TrihrgeInputError("SpatialData output needs a run folder",
                                    "give an output folder")
        check_spatialdata_output(adata, bool(task_kwargs.get("into_input")))
    if out_dir is None:
        task_kwargs.pop("summary_extra", None)
        if task == "recovery":
            return RunOutput(recovery(adata, config=cfg, progress=progress, **task_kwargs))
        for key in ("spatialdata_store", "into_input"):
            task_kwargs.pop(key, None)
        output = RunOutput(enhance(adata, config=cfg, progress=progress, **task_kwargs))
    else:
        into = _recovery_into if task == "recovery" else _enhance_into
        if task == "enhance":
            task_kwargs["overwrite"] = overwrite
        with run_folder(out_dir, overwrite, inputs=adata) as out:
            output = into(out, adata, config=cfg, progress=progress, **task_kwargs)
        if task == "enhance":
            repoint_maps(output.result, out_dir)
        output.out_dir = Path(out_dir)
    return output


def write_run_model(out: Path, result, cfg: RunConfig, task: str) -> Path:
    """The run's model as a self-describing model folder ``out/model`` (usable by predict)."""
    from ..tl.inference import save_run_model

    return save_run_model(out / "model", result, cfg, task)


def _base_summary(adata: AnnData, cfg: RunConfig, n_genes: int) -> dict[str, Any]:
    meta = adata.uns.get("trihrge", {})
    return {"sample": meta.get("sample", "sample"), "source": meta.get("source"),
            "read_from": meta.get("read_from"), "platform": meta.get("platform"),
            "encoder": cfg.encoder,
            "n_spots": int(adata.n_obs), "n_genes": int(n_genes),
            "device": str(resolve_device(cfg.device)), "um_per_px": meta.get("um_per_px"),
            "config": cfg.public_dict()}


def _overview(out: Path, adata: AnnData, result_spots: AnnData, genes: list[str], *, maps=None,
              virtual=None, title: str = "") -> None:
    from ..io import get_image
    from ..pl import overview_figure

    rc_um, um_per_px, diameter_um = sample_geometry(result_spots)
    truth = None
    if "truth" in adata.uns and maps is not None:
        from ..evaluation import truth_on_grid

        truth = truth_on_grid(adata, maps, genes)
    virtual_rc = virtual_x = None
    if virtual is not None:
        virtual_rc = geometry.xy_px_to_rc_um(virtual.obsm["spatial"], um_per_px)
        virtual_x = np.asarray(virtual[:, list(result_spots.var_names)].X)
    overview_figure(get_image(adata), rc_um, np.asarray(result_spots.X), list(result_spots.var_names),
                    genes, spot_diameter_um=diameter_um, maps=maps, virtual_rc_um=virtual_rc,
                    virtual_expr=virtual_x, truth_maps=truth, title=title,
                    path=out / "overview.png")


def _overview_genes(adata: AnnData, genes: list[str], cfg: RunConfig, n: int = 3) -> list[str]:
    chosen = [g for g in cfg.extra_genes if g in genes]
    if "gene_class" in adata.var:  # the synthetic sample: one gene of each informative class
        for cls in ("marker", "density", "gradient", "noise"):
            cand = [g for g in genes if adata.var["gene_class"].get(g) == cls and g not in chosen]
            if cand:
                chosen.append(cand[0])
    chosen += [g for g in genes if g not in chosen]
    return chosen[:max(n, len([g for g in cfg.extra_genes if g in genes]))]


def _finish_summary(out: Path, summary: dict[str, Any], result, files: dict[str, str],
                    t0: float, t1: float) -> None:
    """Add timings, memory, outputs and training record, then write ``summary.json``."""
    summary["timings_s"] = {**result.timings_s, "writing": time.perf_counter() - t1,
                            "total": time.perf_counter() - t0}
    summary["peak_rss_mb"] = peak_rss_mb()
    summary["outputs"] = files
    summary["training"] = [{"best_epoch": f.best_epoch, "epochs_run": len(f.history)}
                           for f in result.fits]
    write_json(out / "summary.json", summary)


def run_recovery(adata: AnnData, out_dir: str | Path, *, holdout_fraction: float = 0.5,
                 seed: int = 0, annotation=None, config: RunConfig | None = None,
                 progress: Progress | None = None, overwrite: bool = False,
                 reference=None, reference_weight: float | None = None) -> dict[str, Any]:
    """Recovery end to end; returns the summary (also written to ``out_dir/summary.json``).
    The run folder appears only when complete (:func:`napari_trihrge.io.outputs.run_folder`).
    ``reference`` / ``reference_weight``: other sections as extra training data
    (:func:`napari_trihrge.tl.recovery`)."""
    return run_task("recovery", adata, out_dir, holdout_fraction=holdout_fraction, seed=seed,
                    annotation=annotation, config=config, progress=progress,
                    overwrite=overwrite, reference=reference,
                    reference_weight=reference_weight).summary


def _recovery_into(out: Path, adata: AnnData, *, config: RunConfig, progress: Progress,
                   **kwargs: Any) -> RunOutput:
    t0 = time.perf_counter()
    result = recovery(adata, config=config, progress=progress, **kwargs)
    return RunOutput(result, save_recovery_run(out, adata, result, config, progress=progress,
                                               started=t0))


def save_recovery_run(out: Path, adata: AnnData, result, cfg: RunConfig, *,
                      progress: Progress | None = None, started: float | None = None
                      ) -> dict[str, Any]:
    """Write a finished recovery into the run folder ``out`` (predictions, model, summary);
    ``started`` is the ``time.perf_counter()`` of the run's start (for the total time)."""
    progress = ensure_progress(progress)
    t1 = time.perf_counter()
    progress.stage("writing", 3)
    files = write_recovery(out, result)
    progress.advance()
    write_run_model(out, result, cfg, "recovery")
    files["model"] = "model"
    progress.advance()
    summary = _base_summary(adata, cfg, result.predictions.n_vars)
    summary["recovery"] = result.metrics
    summary["trust"] = trust_summary(result.metrics)
    _finish_summary(out, summary, result, files, t1 if started is None else started, t1)
    mark_complete(out)
    progress.advance()
    return summary


def run_enhance(adata: AnnData, out_dir: str | Path, *,
                factor: int = geometry.DEFAULT_DENSITY_FACTOR,
                stride_um: float | None = None, config: RunConfig | None = None,
                progress: Progress | None = None, overwrite: bool = False,
                summary_extra: dict[str, Any] | None = None, trust: bool = True,
                spatialdata_store: bool = False, into_input: bool = False,
                map_store: bool = True, materialise_maps: bool = False, reference=None,
                reference_weight: float | None = None) -> dict[str, Any]:
    """Enhance end to end (virtual spots, dense maps); ``trust``: measure per gene whether the
    model beats interpolation (:func:`napari_trihrge.tl.enhance`).
    The dense maps are written as the factorised map store ``maps.store.zarr``
    (:mod:`napari_trihrge.io.map_store`; ``trihrge export-maps`` materialises genes later);
    ``materialise_maps=True`` also writes every gene's map as ``maps.ome.zarr``, and
    ``map_store=False`` writes only that (every gene predicted directly, the older layout).
    ``reference``/``reference_weight``: other sections that join the training (as in
    :func:`napari_trihrge.tl.enhance`).
    The run folder appears only when complete (:func:`napari_trihrge.io.outputs.run_folder`).

    ``spatialdata_store=True`` also writes the sample and the results as a self-contained
    SpatialData store ``<out>/spatialdata.zarr``; ``into_input=True`` adds the results to the
    SpatialData store the sample was read from (needs the ``spatialdata`` extra).
    ``reference`` / ``reference_weight``: other sections as extra training data
    (:func:`napari_trihrge.tl.enhance`)."""
    return run_task("enhance", adata, out_dir, factor=factor, stride_um=stride_um,
                    config=config, progress=progress, overwrite=overwrite,
                    summary_extra=summary_extra, trust=trust,
                    spatialdata_store=spatialdata_store, into_input=into_input,
                    map_store=map_store, materialise_maps=materialise_maps,
                    reference=reference, reference_weight=reference_weight).summary


def _enhance_into(out: Path, adata: AnnData, *, factor: int, stride_um: float | None,
                  config: RunConfig, progress: Progress,
                  summary_extra: dict[str, Any] | None = None, trust: bool = True,
                  spatialdata_store: bool = False, into_input: bool = False,
                  overwrite: bool = False, map_store: bool = True,
                  materialise_maps: bool = False, reference=None,
                  reference_weight: float | None = None) -> RunOutput:
    t0 = time.perf_counter()
    # a trained model as a reference: its maps are materialised (tl.enhance)
    store = map_store and stride_um is not None and not split_references(reference)[1]
    result = enhance(adata, factor=factor, stride_um=stride_um, config=config,
                     progress=progress, trust=trust, reference=reference,
                     reference_weight=reference_weight,
                     map_path=run_map_path(out, stride_um, store, materialise_maps),
                     map_store=str(Path(out) / STORE_NAME) if store else False)
    summary = save_enhance_run(out, adata, result, config, progress=progress, started=t0,
                               summary_extra=summary_extra)
    if spatialdata_store or into_input:
        summary["outputs"].update(write_spatialdata_outputs(
            out, adata, result, new_store=spatialdata_store, into_input=into_input,
            overwrite=overwrite))
        write_json(out / "summary.json", summary)
        mark_complete(out)  # again: the marker lists the store too
    return RunOutput(result, summary)


#: the SpatialData store a run writes into its folder (``--format spatialdata``)
SPATIALDATA_STORE = "spatialdata.zarr"


def check_spatialdata_output(adata: AnnData, into_input: bool) -> None:
    """Fail before any heavy work when SpatialData output cannot be written."""
    from ..errors import TrihrgeInputError
    from ..io.spatialdata import require_spatialdata

    require_spatialdata()
    if into_input and not (adata.uns.get("trihrge", {}) or {}).get("spatialdata"):
        raise TrihrgeInputError("--into-input needs a sample read from a SpatialData store",
                                "pass a SpatialData .zarr store as PATH, or use "
                                "--format spatialdata alone for a new store")
    if into_input:
        from ..io.spatialdata import check_store_writable

        check_store_writable(adata.uns["trihrge"]["spatialdata"]["store"])


def write_spatialdata_outputs(out: Path, adata: AnnData, result, *, new_store: bool = True,
                              into_input: bool = False, overwrite: bool = False
                              ) -> dict[str, str]:
    """Write an enhance result as SpatialData: a new store in the run folder and/or into the
    input store. Returns the entries for ``summary['outputs']``."""
    from ..io.spatialdata import write_into_input, write_spatialdata

    files = {}
    if new_store:
        write_spatialdata(Path(out) / SPATIALDATA_STORE, adata, result, overwrite=overwrite)
        files["spatialdata"] = SPATIALDATA_STORE
    if into_input:
        files["spatialdata_input"] = str(write_into_input(adata, result, overwrite=overwrite))
    return files


def enhance_map_path(out: Path, stride_um: float | None) -> str | None:
    """Where an enhance run into ``out`` streams its dense maps (None without maps)."""
    return str(Path(out) / "maps.ome.zarr") if stride_um is not None else None


def run_map_path(out: Path, stride_um: float | None, store: bool, materialise: bool
                 ) -> str | None:
    """Where a run writes materialised maps: without the store, or with it when asked."""
    return enhance_map_path(out, stride_um) if materialise or not store else None


def add_map_summary(out: Path, summary: dict[str, Any], key: str, files: dict[str, str],
                    adata: AnnData, result, cfg: RunConfig, *, score_truth: bool = True) -> None:
    """The dense map's shape, stride and location count in ``summary[key]``; for a sample with
    a known truth (the synthetic sample), the map against it in ``summary['superres']`` and
    ``superres_genes.csv``."""
    maps = result.maps
    summary[key].update({"map_shape": list(maps.mask.shape), "map_stride_um": maps.stride_um,
                         "map_locations": int(maps.mask.sum())})
    if score_truth and "truth" in adata.uns:
        from ..evaluation import superres_scores

        rc_um, _, _ = sample_geometry(result.spots)
        sr, table = superres_scores(adata, maps, rc_um, np.asarray(result.spots.X),
                                    n_neighbours=cfg.n_neighbours)
        summary["superres"] = sr
        table.to_csv(out / "superres_genes.csv")
        files["superres_genes"] = "superres_genes.csv"


def save_enhance_run(out: Path, adata: AnnData, result, cfg: RunConfig, *,
                     progress: Progress | None = None, started: float | None = None,
                     summary_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a finished enhancement into ``out`` (spots, model, scores, overview, summary); the
    maps are already there when the run streamed them (:func:`enhance_map_path`)."""
    progress = ensure_progress(progress)
    t1 = time.perf_counter()
    progress.stage("writing", 3)
    files = write_enhance(out, result)
    write_run_model(out, result, cfg, "enhance")
    files["model"] = "model"
    progress.advance()
    summary = _base_summary(adata, cfg, result.spots.n_vars)
    summary.update(summary_extra or {})
    summary["enhance"] = {k: v for k, v in result.metrics.items() if k != "trust"}
    summary["trust"] = result.metrics.get("trust")
    if result.maps is not None:
        add_map_summary(out, summary, "enhance", files, adata, result, cfg)
        summary["consistency"] = result.metrics.get("consistency")
    progress.advance()
    genes = _overview_genes(result.spots, list(result.spots.var_names), cfg)
    _overview(out, adata, result.spots, genes, maps=result.maps, virtual=result.virtual,
              title=f"{summary['sample']}: enhanced expression ({cfg.encoder})")
    files["overview"] = "overview.png"
    progress.advance()
    _finish_summary(out, summary, result, files, t1 if started is None else started, t1)
    mark_complete(out)
    return summary


def repoint_maps(result, out_dir: str | Path) -> None:
    """After a run folder was swapped in, point the result's streamed maps (written in the
    temporary folder) at their final place in ``out_dir`` (a map store's keep the factors
    they computed: :meth:`~napari_trihrge.io.map_store.FactorMaps.moved_to`)."""
    import zarr

    maps = getattr(result, "maps", None)
    if maps is None:
        return
    if getattr(maps, "path", None) is not None:  # a factorised map store
        result.maps = maps.moved_to(Path(out_dir) / STORE_NAME)
        return
    for attr, name in (("values", "maps.ome.zarr"), ("std", "maps_std.ome.zarr")):
        store = getattr(maps, attr, None)
        if store is not None and hasattr(store, "partial_path"):  # a ZarrMapWriter
            setattr(maps, attr, zarr.open_group(str(Path(out_dir) / name), mode="r")["0"])


def run_train(adatas: Sequence[AnnData], out_dir: str | Path, *, image_only: bool = False,
              config: RunConfig | None = None, trust_fraction: float = 0.1,
              progress: Progress | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train and write the model folder ``out_dir`` (plus ``summary.json`` in it); returns the
    summary."""
    from ..io.outputs import check_outside_inputs, peak_rss_mb, write_json
    from ..tl.inference import train

    out = Path(out_dir)
    check_outside_inputs(out, adatas)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        refuse_overwrite(out, overwrite)
    t0 = time.perf_counter()
    res = train(adatas, image_only=image_only, config=config, trust_fraction=trust_fraction,
                progress=progress)
    ensure_progress(progress).stage("writing", 1)
    res.model.save(out, overwrite=overwrite)
    summary = {"task": "train", "model": str(out), "image_only": res.model.image_only,
               "encoder": res.model.description["encoder"]["name"],
               "n_genes": len(res.model.genes), "sections": res.metrics["sections"],
               "heldout": res.metrics.get("heldout"), "config": res.config,
               "training": [{"best_epoch": f.best_epoch, "epochs_run": len(f.history)}
                            for f in res.fits],
               "timings_s": {**res.timings_s, "total": time.perf_counter() - t0},
               "peak_rss_mb": peak_rss_mb()}
    write_json(out / "summary.json", summary)
    return summary


def run_predict(model: TrainedModel | str | Path, target: AnnData | str | Path,
                out_dir: str | Path, *, factor: int = geometry.DEFAULT_DENSITY_FACTOR,
                stride_um: float | None = None,
                um_per_px: float | None = None, progress: Progress | None = None,
                overwrite: bool = False, map_store: bool = True, materialise_maps: bool = False,
                cells: bool = False, cell_formats: Sequence[str] = (),
                **kwargs: Any) -> dict[str, Any]:
    """Predict and write the run folder as ``enhance`` does (``enhanced.h5ad``, the
    factorised ``maps.store.zarr``, with ``materialise_maps`` also ``maps.ome.zarr`` (only that
    without ``map_store``), ``predict_genes.csv``, ``overview.png``, ``summary.json``). With
    ``cells`` the nuclei of the target's H&E are segmented and grown into cells that get the
    predicted maps (``<out>/cells/``, as :func:`run_cells`; on a bare H&E without any spot
    constraint; ``cell_formats`` as :func:`run_cells`' ``formats``), and the returned summary
    has their metrics under ``'cells'``."""
    from .._atomic import atomic_path
    from ..io.outputs import mark_complete, run_folder, write_enhance
    from ..tl.inference import predict, prediction_inputs

    progress = ensure_progress(progress)
    model, adata, stride_um = prediction_inputs(model, target, stride_um=stride_um,
                                                um_per_px=um_per_px,
                                                encoder=kwargs.pop("encoder", None),
                                                windows_um=kwargs.pop("windows_um", None))
    bare = adata.n_obs == 0
    if cells:  # checked before the prediction
        check_cell_formats(cell_formats)
        from ..io.sample import get_image
        from ..tl._cells import check_segmentable

        if stride_um is None:
            raise TrihrgeInputError("cells need the dense maps", "add --stride-um, e.g. 8")
        check_segmentable(get_image(adata))
    with run_folder(out_dir, overwrite, inputs=(model, adata, target)) as out:
        t0 = time.perf_counter()  # the folder appears only when complete
        store = map_store and stride_um is not None
        result = predict(model, adata, factor=factor, stride_um=stride_um, progress=progress,
                         map_path=run_map_path(out, stride_um, store, materialise_maps),
                         map_store=str(Path(out) / STORE_NAME) if store else False, **kwargs)
        t1 = time.perf_counter()
        progress.stage("writing", 3)
        files = write_enhance(out, result)
        table = result.per_gene if result.per_gene is not None else model.gene_table
        with atomic_path(out / "predict_genes.csv") as tmp:
            table.to_csv(tmp)
        files["per_gene"] = "predict_genes.csv"
        progress.advance()
        cfg = RunConfig(**{k: v for k, v in result.config.items()
                           if k in {f.name for f in dataclasses.fields(RunConfig)}})
        summary = _base_summary(adata, cfg, len(model.genes))
        summary["model"] = {"path": str(model.path) if model.path else None,
                            "image_only": model.image_only,
                            "training_sections": model.description.get("training_sections"),
                            "trust": model.description.get("trust")}
        summary["predict"] = result.metrics
        if result.maps is not None:
            add_map_summary(out, summary, "predict", files, adata, result, cfg,
                                 score_truth=not bare)
        progress.advance()
        genes = _overview_genes(result.virtual if bare else adata, model.genes, cfg)
        _overview(out, adata, result.spots, genes, maps=result.maps, virtual=result.virtual,
                       title=f"{summary['sample']}: predicted expression "
                             f"({'image-only' if model.image_only else 'image + spots'} model)")
        files["overview"] = "overview.png"
        progress.advance()
        _finish_summary(out, summary, result, files, t0, t1)
        mark_complete(out)
    if cells:  # the prediction run is complete: its maps go to the cells
        from .cells_run import run_cells

        found = run_cells(adata, Path(out_dir) / "cells", run_dir=out_dir, progress=progress,
                          formats=cell_formats)
        summary.setdefault("outputs", {})["cells"] = "cells/"
        summary["cells"] = found["metrics"]
    return summary


def run_validate_hd(bins: AnnData, out_dir: str | Path, *,
                    factor: int = geometry.DEFAULT_DENSITY_FACTOR, config=None,
                    progress=None, overwrite: bool = False, min_coverage: float = 0.5
                    ) -> dict[str, Any]:
    """``trihrge validate-hd``: pseudo-Visium spots from the bins, enhance them with a map at
    the bin size, score the map against the bins; writes the run folder (``summary.json`` with
    ``validate_hd``, ``validate_hd_genes.csv``, the maps and the overview)."""
    from ..io.outputs import mark_complete, run_folder, write_json
    from ..tl.hd_validation import _bin_size_um, pseudo_visium, score_against_bins

    cfg = config or RunConfig()
    progress = ensure_progress(progress)
    bin_um = _bin_size_um(bins)
    pseudo = pseudo_visium(bins, min_coverage=min_coverage)
    with run_folder(out_dir, overwrite, inputs=bins) as out:  # appears only when complete
        t0 = time.perf_counter()
        result = enhance(pseudo, factor=factor, stride_um=bin_um, config=cfg, progress=progress,
                         map_path=enhance_map_path(out, bin_um))
        scores, table = score_against_bins(bins, result, n_neighbours=cfg.n_neighbours)
        table.to_csv(out / "validate_hd_genes.csv")
        summary = save_enhance_run(out, pseudo, result, cfg, progress=progress, started=t0,
                                   summary_extra={"validate_hd": scores})
        summary["outputs"]["validate_hd_genes"] = "validate_hd_genes.csv"
        write_json(out / "summary.json", summary)
        mark_complete(out)
    return summary


def run_demo(out_dir: str | Path = "trihrge-demo", *, seed: int = 0,
             config: RunConfig | None = None, progress: Progress | None = None,
             overwrite: bool = False, stride_um: float = 8.0,
             factor: int = geometry.DEFAULT_DENSITY_FACTOR) -> dict[str, Any]:
    """The whole pipeline on the embedded synthetic sample: recovery (50 % hidden) in
    ``out/recovery/`` and enhancement with a dense 8 um map scored against the known truth in
    ``out/`` itself. Returns the combined summary."""
    from ..datasets import synthetic_sample

    cfg = config or RunConfig()
    progress = ensure_progress(progress)
    with run_folder(out_dir, overwrite) as out:
        adata = synthetic_sample(seed=seed)
        (out / "recovery").mkdir()
        # the ensemble matters for the spread map; recovery scores need one model
        rec = _recovery_into(out / "recovery", adata, holdout_fraction=0.5, seed=seed,
                             annotation="domain", config=dataclasses.replace(cfg, ensemble=1),
                             progress=progress).summary
        summary = _enhance_into(out, adata, factor=factor, stride_um=stride_um, config=cfg,
                                progress=progress,
                                summary_extra={"recovery": rec["recovery"]}).summary
        summary["timings_s"] = {"recovery": rec["timings_s"], **summary["timings_s"]}
        summary["outputs"]["recovery"] = "recovery/"
        write_json(out / "summary.json", summary)
        mark_complete(out)
    return summary
