"""The ``trihrge`` command line, as a table of subcommands (:data:`SUBCOMMANDS`).

Each subcommand is one :class:`Subcommand` row: its name and help, a function that adds its
options and a function that runs it (``run(args, progress) -> exit code``). Adding a subcommand is
one more row and its two functions. Options take their defaults from the API they call
(:class:`~napari_trihrge.tl.RunConfig`, the task functions' keyword defaults,
:data:`~napari_trihrge.geometry.DENSITY_FACTORS`) and check their values with the shared
validators; both live in :mod:`._cli_options`, the final printout in :mod:`._cli_report`.
Errors of the engine end as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Cancelled, TrihrgeError, TrihrgeInputError
from ..geometry import PLATFORMS
from ..progress import TqdmProgress
from . import _cli_options as opt
from ._cli_report import print_model_summary, print_run_summary

EPILOG = """\
PATH is a Space Ranger outs/ folder (Visium, or Visium HD: one bin size, --bin-um), a SpatialData
.zarr store (needs `pip install "napari-trihrge[spatialdata]"`), an .h5ad file (scanpy/squidpy
convention), a her2st-style section folder (<id>.tsv.gz, <id>_selection.tsv, <id>_HE.jpg), or a
counts table (tsv/csv, .gz, spots x genes) given with --positions and --image.

Hugging Face access (for --encoder uni / uni2-h): request access on the model page, then set the
HF_TOKEN environment variable or run `huggingface-cli login`. Tokens are never accepted on the
command line (they would show in the process list) and never written anywhere.
"""


# -------------------------------------------------------------------------------------------
# The subcommands: options and what each runs
# -------------------------------------------------------------------------------------------
def _demo_args(p: argparse.ArgumentParser) -> None:
    run = opt.run_defaults()
    p.add_argument("--out", type=Path, default=Path("trihrge-demo"),
                   help="output folder (default ./trihrge-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--encoder", default=run.encoder,
                   help=f"image encoder (default {run.encoder})")
    p.add_argument("--device", default=run.device, choices=opt.DEVICES)
    p.add_argument("--ensemble", type=opt.whole_number, default=run.ensemble, metavar="N",
                   help=f"networks per fold of the blend (default {run.ensemble}: the blend's "
                   "fold networks already give the mean and spread maps)")
    p.add_argument("--seed", type=int, default=run.seed)
    opt.add_threads_arg(p)
    p.add_argument("--quiet", action="store_true")


def _run_demo(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from ..tl import RunConfig
    from .runs import run_demo

    cfg = RunConfig(encoder=args.encoder, device=args.device, ensemble=args.ensemble,
                    seed=args.seed, threads=args.threads)
    summary = run_demo(args.out, seed=args.seed, config=cfg, progress=progress,
                       overwrite=args.overwrite)
    progress.close()
    print_run_summary(summary, args.out)
    return 0


def _recovery_args(p: argparse.ArgumentParser) -> None:
    from ..tl import recovery

    opt.add_input_args(p)
    holdout = opt.keyword_default(recovery, "holdout_fraction")
    p.add_argument("--holdout", type=opt.fraction, default=holdout, metavar="FRACTION",
                   help=f"fraction of spots hidden (default {holdout:g})")
    p.add_argument("--annotation", default=None, metavar="FILE",
                   help="barcode -> label file (or an obs column name) for the ARI of k-means "
                   "clusters against it")
    opt.add_reference_args(p)
    opt.add_run_args(p)


def _run_recovery(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from .runs import run_recovery

    cfg, adata, out = opt.prepare_sample_run(args)
    summary = run_recovery(adata, out, holdout_fraction=args.holdout, seed=args.seed,
                           annotation=args.annotation, config=cfg, progress=progress,
                           overwrite=args.overwrite, **opt.reference_kwargs(args))
    progress.close()
    print_run_summary(summary, Path(out))
    return 0


def _enhance_args(p: argparse.ArgumentParser) -> None:
    opt.add_input_args(p)
    opt.add_factor_arg(p)
    p.add_argument("--stride-um", type=opt.positive_number, default=None, metavar="UM",
                   help="also write dense per-gene maps at this pixel size in micrometres "
                   "(e.g. 8 or 16)")
    p.add_argument("--no-trust", action="store_true", help=opt.trust_help())
    p.add_argument("--format", choices=["folder", "spatialdata"], default="folder",
                   dest="output_format", help="'spatialdata': also write the sample and the "
                   "results as a self-contained SpatialData store <out>/spatialdata.zarr (H&E, "
                   "spots, virtual spots and maps in micrometres; needs the spatialdata extra)")
    p.add_argument("--into-input", action="store_true",
                   help="add the results (trihrge_* elements) to the SpatialData store given as "
                   "PATH; existing trihrge_* elements are replaced only with --overwrite")
    _map_output_args(p)
    opt.add_cells_arg(p, "map's expression")
    opt.add_marker_panel_arg(p)
    opt.add_map_method_arg(p)
    opt.add_reference_args(p)
    opt.add_run_args(p)


def _map_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--materialise-maps", action="store_true",
                   help="with --stride-um: also write every gene's map as maps.ome.zarr (the "
                   "run writes the factorised map store maps.store.zarr, every gene's map "
                   "computed on demand, exactly; `trihrge export-maps` materialises chosen "
                   "genes later)")
    p.add_argument("--map-store", action="store_true",
                   help="the factorised map store maps.store.zarr (the default; kept for older "
                   "scripts)")


def _run_enhance(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from .runs import run_enhance

    if args.output_format == "spatialdata" or args.into_input:
        from ..io.spatialdata import require_spatialdata

        require_spatialdata()  # before reading and training
    if (args.map_store or args.materialise_maps) and args.stride_um is None:
        flag = "--materialise-maps" if args.materialise_maps else "--map-store"
        raise TrihrgeInputError(f"{flag} is about dense maps, which need --stride-um",
                                f"add --stride-um (for example 8 or 16) or leave out {flag}")
    if args.cells and args.stride_um is None:
        raise TrihrgeInputError("--cells needs the dense maps", "add --stride-um, e.g. 8")
    if args.cells:
        from ..io.cell_formats import check_cell_formats

        check_cell_formats(args.cell_formats)
    cfg, adata, out = opt.prepare_sample_run(args)
    if args.stride_um is not None:
        from ..tl import check_map_size

        check_map_size(adata, args.stride_um, n_genes=cfg.most_genes(adata.n_vars), ensemble=cfg.ensemble)
    summary = run_enhance(adata, out, factor=args.factor, stride_um=args.stride_um,
                          config=cfg, progress=progress, overwrite=args.overwrite,
                          trust=not args.no_trust,
                          spatialdata_store=args.output_format == "spatialdata",
                          into_input=args.into_input,
                          materialise_maps=args.materialise_maps,
                          **opt.reference_kwargs(args))
    if args.cells:
        from .cells_run import run_cells

        cells = run_cells(adata, Path(out) / "cells", run_dir=out, progress=progress,
                          formats=args.cell_formats)
        summary.setdefault("outputs", {})["cells"] = "cells/"
        summary["cells"] = cells["metrics"]
    progress.close()
    print_run_summary(summary, Path(out))
    if args.cells:
        _print_cells_line(summary["cells"], Path(out) / "cells")
    return 0


def _export_maps_args(p: argparse.ArgumentParser) -> None:
    from ..io.map_store import MATERIALISED_DTYPES
    from .map_export import EXPORT_FORMATS

    p.add_argument("run", type=Path, help="a run folder written by enhance or predict, or its "
                   "maps.store.zarr")
    p.add_argument("--genes", nargs="+", default=None, metavar="GENE",
                   help="the genes to write (default: every gene of the model)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default=EXPORT_FORMATS[0],
                   dest="output_format", help="'ome-zarr': a multiscale OME-Zarr map (and its "
                   "spread, <name>_std.ome.zarr); 'spatialdata': a SpatialData store with the "
                   "maps as images, in micrometres (needs the spatialdata extra)")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: beside "
                   "the run folder, <run>_maps.ome.zarr or <run>_maps.spatialdata.zarr)")
    p.add_argument("--dtype", choices=MATERIALISED_DTYPES, default=MATERIALISED_DTYPES[0],
                   help="the maps' number type: float16 halves the bytes, rounded to 11 "
                   "significant bits (within 0.001 below 4 log units; OME has no float16 "
                   "pixel type, so some tools may not read it)")
    p.add_argument("--window-um", nargs=4, type=float, default=None,
                   metavar=("ROW0", "ROW1", "COL0", "COL1"),
                   help="only the maps inside this rectangle, in micrometres as napari's status "
                   "bar shows them (rows ROW0 to ROW1, columns COL0 to COL1): a region of a "
                   "fine map (2 um) in seconds to minutes instead of the whole section")
    opt.add_overwrite_quiet(p)


def _run_export_maps(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from .map_export import export_maps

    written = export_maps(args.run, args.out, genes=args.genes, fmt=args.output_format,
                          dtype=args.dtype, overwrite=args.overwrite,
                          window_um=args.window_um, progress=progress)
    progress.close()
    for path in written:
        print(f"wrote {path}")
    return 0


def _validate_hd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="Visium HD outs/ folder, a square_XXXum folder, or a "
                   "SpatialData store made from one")
    g = p.add_argument_group("input details")
    g.add_argument("--um-per-px", type=opt.positive_number, help="full-resolution pixel size in "
                   "micrometres per pixel (default: Space Ranger's microns_per_pixel, checked on "
                   "the lattice)")
    opt.add_store_args(g)
    opt.add_factor_arg(p, "the pseudo-spot lattice")
    opt.add_run_args(p)


def _run_validate_hd(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from .runs import run_validate_hd

    cfg, adata, out = opt.prepare_sample_run(args, read=opt.read_hd_bins)
    summary = run_validate_hd(adata, out, factor=args.factor, config=cfg, progress=progress,
                              overwrite=args.overwrite)
    progress.close()
    print_run_summary(summary, Path(out))
    return 0


def _validate_coarse_args(p: argparse.ArgumentParser) -> None:
    from ..tl.coarse_validation import DEFAULT_STRIDE_UM, validate_coarse

    opt.add_input_args(p)
    factor = opt.keyword_default(validate_coarse, "factor")
    p.add_argument("--factor", type=opt.whole_number, default=factor,
                   help=f"block size of the pseudo-spots (default {factor}: 7-spot hexagons on "
                   "Visium, 2 x 2 spots on legacy ST; 3: 19-spot hexagons or 3 x 3)")
    p.add_argument("--stride-um", type=opt.positive_number, default=DEFAULT_STRIDE_UM,
                   metavar="UM", help="pixel size of enhance's map in micrometres (default "
                   f"{DEFAULT_STRIDE_UM:g})")
    p.add_argument("--annotation", default=None, metavar="FILE",
                   help="barcode -> label file (or an obs column name: layers, tumour / "
                   "stroma): the scores are also given for each label's marker genes")
    p.add_argument("--split-counts", action="store_true",
                   help="split each spot's counts in two random halves: pseudo-spots from one, "
                   "scored against the other (a pseudo-spot otherwise holds the counting noise "
                   "of the spot it is scored against)")
    opt.add_map_method_arg(p)
    opt.add_reference_args(p)
    opt.add_run_args(p)


def _run_validate_coarse(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from .coarse_run import run_validate_coarse

    cfg, adata, out = opt.prepare_sample_run(args)
    summary = run_validate_coarse(adata, out, factor=args.factor, stride_um=args.stride_um,
                                  config=cfg, progress=progress, overwrite=args.overwrite,
                                  annotation=args.annotation, split_counts=args.split_counts,
                                  **opt.reference_kwargs(args))
    progress.close()
    print_run_summary(summary, Path(out))
    return 0


def _cohort_args(p: argparse.ArgumentParser) -> None:
    from ..tl import recovery

    run = opt.run_defaults()
    p.add_argument("paths", nargs="+", type=Path, help="samples (Space Ranger folders, .h5ad, "
                   "her2st-style folders)")
    p.add_argument("--task", choices=["enhance", "recovery"], default="enhance")
    p.add_argument("--out", type=Path, default=Path("trihrge_cohort"),
                   help="output folder; one subfolder per sample")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of an existing dask scheduler (default: a LocalCluster)")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: "
                   "one per GPU, else 2)")
    p.add_argument("--retries", type=int, default=1, help="retries per failed sample (default 1)")
    opt.add_factor_arg(p, prefix="enhance: ")
    p.add_argument("--stride-um", type=opt.positive_number, default=None, metavar="UM",
                   help="enhance: also write dense maps at this pixel size in micrometres")
    holdout = opt.keyword_default(recovery, "holdout_fraction")
    p.add_argument("--holdout", type=opt.fraction, default=holdout, metavar="FRACTION",
                   help=f"recovery: fraction of spots hidden (default {holdout:g})")
    p.add_argument("--no-trust", action="store_true", help="enhance: " + opt.trust_help())
    p.add_argument("--encoder", default=run.encoder, help="image encoder (see `trihrge "
                   "encoders`)")
    p.add_argument("--genes", type=opt.whole_number, default=run.n_top_genes, metavar="N",
                   help=f"number of highly variable genes (default {run.n_top_genes})")
    p.add_argument("--threads", type=opt.thread_count, default=None, metavar="N",
                   help="CPU threads per worker for training and prediction (default: the "
                   "usable cores shared among the LocalCluster's workers)")


def _run_cohort(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from .cohort import run_cohort

    report = run_cohort(args.paths, args.out, task=args.task, scheduler=args.scheduler,
                        n_workers=args.workers, retries=args.retries,
                        task_kwargs={"factor": args.factor, "stride_um": args.stride_um,
                                     "holdout_fraction": args.holdout,
                                     "trust": not args.no_trust},
                        config_kwargs={"encoder": args.encoder, "n_top_genes": args.genes,
                                       "threads": args.threads})
    print(report.to_string(index=False))
    return 0 if (report["status"] != "failed").all() else 1


def _train_args(p: argparse.ArgumentParser) -> None:
    from ..tl import train

    p.add_argument("paths", nargs="+", type=Path, help="the training sections (see below)")
    p.add_argument("--image-only", action="store_true",
                   help="no neighbour input: the model needs no spots at prediction time "
                   "(for H&E slides that were never sequenced)")
    trust = opt.keyword_default(train, "trust_fraction")
    p.add_argument("--trust-fraction", type=opt.fraction_or_zero, default=trust, metavar="FRACTION",
                   help="fraction of each section's spots held out of training and scored "
                   f"against kNN interpolation (default {trust:g}; 0 trains on every spot)")
    opt.add_marker_panel_arg(p)
    opt.add_run_args(p)


def _run_train(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from . import runs

    cfg = opt.run_config(args)
    adatas = []
    for path in args.paths:
        args.path = path
        adatas.append(opt.read_sample(args))
    out = args.out or Path("trihrge_out") / f"model-{args.paths[0].stem}"
    summary = runs.run_train(adatas, out, image_only=args.image_only, config=cfg,
                             trust_fraction=args.trust_fraction, progress=progress,
                             overwrite=args.overwrite)
    summary["outputs"] = {"model": str(out)}
    progress.close()
    print_model_summary(summary)
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    from ..tl.inference import DEFAULT_IMAGE_STRIDE_UM

    run = opt.run_defaults()
    p.add_argument("model_dir", type=Path, help="the model folder")
    opt.add_input_args(p)
    opt.add_factor_arg(p, "the spot lattice")
    p.add_argument("--stride-um", type=opt.positive_number, default=None, metavar="UM",
                   help="dense map pixel size in micrometres (default: none for a sample, "
                   f"{DEFAULT_IMAGE_STRIDE_UM:g} for a bare image)")
    p.add_argument("--encoder", default=None, help="only checked: must be the model's encoder")
    p.add_argument("--windows-um", type=opt.window_sizes_um, default=None, metavar="UM,UM",
                   help="only checked: must be the model's windows")
    p.add_argument("--device", default=run.device, choices=opt.DEVICES)
    p.add_argument("--cache-dir", type=Path, default=None, help="folder for the feature cache")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default trihrge_out/predict-<target>)")
    _map_output_args(p)
    opt.add_cells_arg(p, "predicted map's expression; on a bare H&E there is no spot to agree "
                      "with")
    opt.add_overwrite_quiet(p)


def _run_predict(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from ..tl import inference
    from . import runs

    target = args.path if inference.is_image_path(args.path) else opt.read_sample(args)
    out = args.out or Path("trihrge_out") / f"predict-{args.path.name.split('.')[0]}"
    cache = str(args.cache_dir or opt.default_cache_dir())
    summary = runs.run_predict(args.model_dir, target, out, factor=args.factor,
                               stride_um=args.stride_um, um_per_px=args.um_per_px,
                               encoder=args.encoder, windows_um=args.windows_um,
                               device=args.device, cache_dir=cache, progress=progress,
                               overwrite=args.overwrite,
                               materialise_maps=args.materialise_maps, cells=args.cells,
                               cell_formats=args.cell_formats)
    progress.close()
    print_model_summary(summary)
    if args.cells:
        _print_cells_line(summary["cells"], Path(out) / "cells")
    return 0


def _print_cells_line(metrics: dict, folder: Path) -> None:
    """Print the one line that says how many cells a run found, and where."""
    spots = ("" if metrics.get("spot_constraint", True)
             else "; no measured spots: predicted from the H&E alone, no spot constraint")
    print(f"Cells: {metrics['n_cells']} ({metrics['cells_per_mm2_tissue']:.0f} per mm2 of "
          f"tissue), in {folder}{spots}")


def _encoders_args(p: argparse.ArgumentParser) -> None:
    """No options."""


def _run_encoders(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from ..features import list_encoders

    for name, desc in list_encoders().items():
        print(f"{name:16s} {desc}")
    return 0


def _cells_args(p: argparse.ArgumentParser) -> None:
    from ..nuclei import EXPAND_UM, NucleusOptions

    nuc = NucleusOptions()
    opt.add_input_args(p)
    p.add_argument("--sample", type=Path, default=None,
                   help="the sample of the run given as PATH (default: the one it was run on)")
    p.add_argument("--run", type=Path, default=None,
                   help="an enhance or predict run folder with dense maps (--stride-um) whose "
                   "expression the cells get")
    g = p.add_argument_group("segmentation (lengths in micrometres)")
    g.add_argument("--nuclei", type=Path, default=None, metavar="FILE",
                   help="your own nuclei: labels on the H&E's pixel grid (.npy, .tif, "
                   ".ome.zarr) or a QuPath GeoJSON of detections")
    g.add_argument("--cells", type=Path, default=None, metavar="FILE", dest="cell_file",
                   help="your own cells: labels or a QuPath GeoJSON of cells (their "
                   "nucleusGeometry gives the nuclei)")
    g.add_argument("--expand-um", type=float, default=EXPAND_UM, metavar="UM",
                   help=f"grow nuclei into cells by this much (default {EXPAND_UM:g})")
    g.add_argument("--threshold", default=nuc.threshold, metavar="otsu|local|OD",
                   help="hematoxylin threshold: 'otsu' (default), 'local' or an optical density")
    g.add_argument("--smooth-um", type=opt.positive_number, default=nuc.smooth_um, metavar="UM",
                   help=f"smoothing of the hematoxylin channel (default {nuc.smooth_um:g})")
    g.add_argument("--min-distance-um", type=opt.positive_number, default=nuc.min_distance_um,
                   metavar="UM", help="closest two nucleus centres (default "
                   f"{nuc.min_distance_um:g})")
    g.add_argument("--min-area-um2", type=float, default=nuc.min_area_um2, metavar="UM2",
                   help=f"smallest nucleus kept (default {nuc.min_area_um2:g})")
    g.add_argument("--max-area-um2", type=opt.positive_number, default=nuc.max_area_um2,
                   metavar="UM2", help=f"largest nucleus kept (default {nuc.max_area_um2:g})")
    o = p.add_argument_group("output")
    o.add_argument("--regions", type=Path, default=None, metavar="FILE.geojson",
                   help="QuPath annotations (GeoJSON): each cell gets the region it lies in")
    o.add_argument("--geojson", default=None, metavar="G1,G2", nargs="?", const="",
                   help="also write cells.geojson for QuPath, with these genes' predicted "
                   "values as measurements (none: outlines and areas only)")
    opt.add_cell_formats_arg(o)
    o.add_argument("--out", type=Path, default=None,
                   help="output folder (default <run>/cells, or trihrge_out/cells-<sample>)")
    opt.add_overwrite_quiet(p)


def _run_cells(args: argparse.Namespace, progress: TqdmProgress) -> int:
    from ..errors import TrihrgeInputError
    from ..io.outputs import check_out_dir, is_complete_run
    from ..nuclei import NucleusOptions
    from .cells_run import run_cells

    run_dir = args.run
    if is_complete_run(args.path):
        if run_dir is not None:
            raise TrihrgeInputError("PATH is already a run folder; --run names another",
                                    "pass either a run folder, or a sample with --run")
        run_dir = args.path
        args.path = args.sample or _run_sample_path(run_dir)
    elif args.sample is not None:
        raise TrihrgeInputError("--sample only goes with a run folder as PATH",
                                "pass the sample as PATH (and the run with --run)")
    threshold = args.threshold
    if threshold not in ("otsu", "local"):
        threshold = opt.positive_number(threshold)
    options = NucleusOptions(smooth_um=args.smooth_um, threshold=threshold,
                             min_distance_um=args.min_distance_um,
                             min_area_um2=args.min_area_um2, max_area_um2=args.max_area_um2)
    genes = None if args.geojson is None else [g for g in args.geojson.split(",") if g]
    formats = list(args.formats)
    from ..io.cell_formats import check_cell_formats

    check_cell_formats(formats)
    if args.out is not None:
        check_out_dir(args.out, args.overwrite)
    adata = _synthetic_or_read(args)
    sample = adata.uns.get("trihrge", {}).get("sample", Path(args.path).stem)
    out = args.out or (Path(run_dir) / "cells" if run_dir is not None
                       else Path("trihrge_out") / f"cells-{sample}")
    summary = run_cells(adata, out, run_dir=run_dir, nuclei_labels=args.nuclei,
                             cell_labels=args.cell_file, expand_um=args.expand_um,
                             options=options, regions=args.regions, geojson_genes=genes,
                             formats=formats, progress=progress, overwrite=args.overwrite)
    progress.close()
    m = summary["metrics"]
    expression = (f"the expression of {len(summary['genes'])} genes" if summary["genes"]
                  else "no expression (pass an enhance run with --run)")
    print(f"{m['n_cells']} cells ({m['segmentation']} segmentation, "
          f"{m['cells_per_mm2_tissue']:.0f} per mm2 of tissue), {expression}")
    print(f"outputs in {out}: {', '.join(summary['outputs'].values())}")
    return 0


def _run_sample_path(run_dir: Path) -> Path | str:
    """Where a run's sample can be read again from (:func:`io.outputs.run_sample_path`)."""
    import json

    from ..errors import TrihrgeInputError
    from ..io.outputs import run_sample_path

    source = run_sample_path(json.loads((Path(run_dir) / "summary.json").read_text()))
    if source and str(source).startswith("napari_trihrge.datasets.synthetic_sample"):
        return str(source)
    if not source or not Path(str(source)).exists():
        raise TrihrgeInputError(f"the sample of the run {run_dir} is not found ({source})",
                                "pass it with --sample PATH")
    return Path(str(source))


def _synthetic_or_read(args: argparse.Namespace):
    """The sample: the embedded synthetic one when the run names its generator, else read."""
    import re

    match = re.fullmatch(r"napari_trihrge\.datasets\.synthetic_sample\(seed=(\d+)\)",
                         str(args.path))
    if match:
        from ..datasets import synthetic_sample

        return synthetic_sample(seed=int(match.group(1)))
    return opt.read_sample(args)


# -------------------------------------------------------------------------------------------
# The table
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subcommand:
    """One ``trihrge`` subcommand: how it is listed, its options and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, TqdmProgress], int]
    description: str | None = None
    epilog: str | None = EPILOG
    #: run inside :func:`napari_trihrge.threads.cpu_threads` (pools sized to the free cores)
    sized_threads: bool = False


_VISIUM = PLATFORMS["visium"]

#: every subcommand, in the order ``trihrge --help`` lists them
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("demo", "run the whole pipeline on the embedded synthetic sample", _demo_args,
               _run_demo, description="Recovery (50 % hidden) and enhancement (4x virtual "
               "spots and an 8 um dense map scored against the known truth) on the embedded "
               "synthetic sample.", epilog=None, sized_threads=True),
    Subcommand("recovery", "hide spots, predict them, score against the measurement",
               _recovery_args, _run_recovery, description="Hide a fraction of the spots at "
               "random, train on the rest, predict the hidden ones and score them (hidden spots "
               "only) next to the image-free kNN baseline.", sized_threads=True),
    Subcommand("enhance", "predict a denser grid of virtual spots and dense maps",
               _enhance_args, _run_enhance, description="Train on all spots, then predict (a) "
               "a 2x/4x/8x/16x denser lattice of virtual spots and (b) with --stride-um a dense map "
               "inside the tissue.", sized_threads=True),
    Subcommand("validate-hd", "score enhancement against measured Visium HD bins",
               _validate_hd_args, _run_validate_hd, description="From Visium HD bins (8 um by "
               f"default), build pseudo-Visium spots ({_VISIUM['spot_diameter_um']:g} um disks, "
               f"{_VISIUM['spot_spacing_um']:g} um hexagonal lattice, counts summed), enhance "
               "them into a map with the bin size as its stride, and score the map against the "
               "measured bins inside the tissue (per-gene PCC with a constant map counting as 0, "
               "SSIM, RMSE) next to interpolated spots."),
    Subcommand("validate-coarse", "check the map's detail on real tissue: enhance coarse "
               "pseudo-spots, score against the measured spots", _validate_coarse_args,
               _run_validate_coarse, description="Sum the measured spots into coarse "
               "pseudo-spots that tile the section (Visium: a spot and its six neighbours; "
               "legacy ST: 2 x 2 spots), enhance them as `trihrge enhance` would (same settings, "
               "the real image), average the map over each real spot and score it against the "
               "measured spots (per-gene PCC, a constant counting as 0) next to the pseudo-spot's "
               "own value, interpolation of the pseudo-spots and an image-only ridge, with the "
               "noise ceiling of the measured spots.", sized_threads=True),
    Subcommand("cohort", "process many samples on dask.distributed", _cohort_args, _run_cohort,
               description="Run enhance (or recovery) on many samples, one sample per dask "
               "worker; finished samples are skipped on rerun, failures retried and reported."),
    Subcommand("train", "train one model on one or several sections and save it", _train_args,
               _run_train, description="Train one model on the given sections (genes highly "
               "variable over the pooled sections, image features standardised per section) and "
               "write a self-describing model folder for `trihrge predict`."),
    Subcommand("predict", "apply a trained model to a sample or a bare H&E image", _predict_args,
               _run_predict, description="Apply a model folder (from `trihrge train` or the "
               "model/ of a run) to TARGET: a sample of any supported layout (predictions at its "
               "measured spots keep their barcodes and are scored against the measurement) or an "
               "H&E image (TIFF/OME-TIFF/SVS/JPEG/PNG; an image-only model then predicts a dense "
               "map over the tissue). Writes the same run folder as `enhance`."),
    Subcommand("export-maps", "materialise maps of chosen genes from a run's map store",
               _export_maps_args, _run_export_maps, description="Compute the maps of the "
               "given genes (all by default) from the factorised map store of an enhance run "
               "and write them as a multiscale OME-Zarr map or a SpatialData "
               "store, for other tools. An existing output is replaced only with --overwrite.",
               epilog=None),
    Subcommand("cells", "segment nuclei, grow them into cells and give each cell the enhanced "
               "expression", _cells_args, _run_cells, description="Segment the nuclei of the "
               "H&E (classical: hematoxylin, threshold, distance watershed; no downloaded "
               "weights), or take your own segmentation, grow nuclei into cells and, given an "
               "enhance/predict run with dense maps, average the predicted expression over each "
               "cell. PATH is such a run folder (its sample is read again from where it came "
               "from, or from --sample) or a sample (then --run names the run). Writes "
               "cells.h5ad, nuclei.tif, cells.tif and optionally cells.geojson for QuPath."),
    Subcommand("encoders", "list the image encoders that can be named with --encoder",
               _encoders_args, _run_encoders, epilog=None),
)


def build_parser(options_of: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``trihrge`` parser: one subparser per row of :data:`SUBCOMMANDS`.

    ``options_of`` names the subcommands whose options are added (default: all). The options
    read their defaults from the API (which imports ``tl``): :func:`main` adds only those of the
    subcommand named on the command line, so ``trihrge --help`` and a mistyped subcommand
    import nothing heavy.
    """
    parser = argparse.ArgumentParser(
        prog="trihrge", description="TriHRGE: high-resolution gene expression from H&E and "
        "spatial transcriptomics spots.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description,
                           epilog=command.epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if options_of is None or command.name in options_of:
            command.add_arguments(p)
    return parser


def _named_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), or None."""
    names = {c.name for c in SUBCOMMANDS}
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in names else None


def main(argv: list[str] | None = None) -> int:
    """Run ``trihrge`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = _named_subcommand(argv)
    args = build_parser(options_of=() if named is None else (named,)).parse_args(argv)
    command = next(c for c in SUBCOMMANDS if c.name == args.command)
    if command.sized_threads:
        # every stage of the run (not only training) with the pools sized to the free cores
        from ..threads import cpu_threads

        with cpu_threads(args.threads):
            return _run_command(command, args)
    return _run_command(command, args)


def _run_command(command: Subcommand, args: argparse.Namespace) -> int:
    progress = TqdmProgress(disable=getattr(args, "quiet", False))
    try:
        return command.run(args, progress)
    except (Cancelled, KeyboardInterrupt):
        progress.close()
        print("trihrge: cancelled", file=sys.stderr)
        return 130
    except TrihrgeError as err:
        progress.close()
        print(f"trihrge: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permissions, a file in the way: one line, not a trace
        progress.close()
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"trihrge: error: {err.strerror or err}{where}. Check that the folder can be "
              "written and that the disk has space", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
