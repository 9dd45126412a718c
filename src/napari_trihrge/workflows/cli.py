"""The ``trihrge`` command line: ``demo``, ``recovery``, ``enhance``, ``validate-hd``, ``cohort``,
``train``, ``predict``, ``encoders``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import Cancelled, TrihrgeError
from ..geometry import DEFAULT_DENSITY_FACTOR, DENSITY_FACTORS

EPILOG = """\
PATH is a Space Ranger outs/ folder (Visium, or Visium HD: one bin size, --bin-um), a SpatialData
.zarr store (needs `pip install "napari-trihrge[spatialdata]"`), an .h5ad file (scanpy/squidpy
convention), a her2st-style section folder (<id>.tsv.gz, <id>_selection.tsv, <id>_HE.jpg), or a
counts table (tsv/csv, .gz, spots x genes) given with --positions and --image.

Hugging Face access (for --encoder uni / uni2-h): request access on the model page, then set the
HF_TOKEN environment variable or run `huggingface-cli login`. Tokens are never accepted on the
command line (they would show in the process list) and never written anywhere.
"""


def _whole_number(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _windows(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated positive micrometres, e.g. '112,336'."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected window sizes in micrometres, e.g. 112,336")
    return tuple(_positive(t) for t in parts)


def default_cache_dir() -> Path:
    """The user's cache folder for features (platformdirs), never next to the outputs."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-trihrge")) / "features"
TRUST_HELP = ("skip the per-gene trust estimate: by default a model is first trained on 75 %% "
              "of the spots and scored on the other 25 %% next to kNN interpolation, so the "
              "outputs say which genes beat interpolation; skipping saves that training, and "
              "the outputs then carry no trust columns")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="the sample (see below)")
    g = p.add_argument_group("input details (only when they cannot be read from PATH)")
    g.add_argument("--positions", type=Path, help="spot positions table (x/y in image pixels) "
                   "for a counts table")
    g.add_argument("--image", type=Path, help="full-resolution H&E image (TIFF, OME-TIFF, SVS, "
                   "JPEG, PNG); for Space Ranger folders this adds the full-resolution image")
    g.add_argument("--um-per-px", type=_positive, help="full-resolution pixel size in micrometres "
                   "per pixel (default: fitted on the spot lattice, else from the spot diameter)")
    g.add_argument("--spot-diameter-px", type=_positive,
                   help="spot diameter in full-resolution pixels")
    from ..geometry import PLATFORMS

    g.add_argument("--spot-diameter-um", type=_positive, help="spot diameter in micrometres "
                   f"(default {PLATFORMS['visium']['spot_diameter_um']:g} for Visium, "
                   f"{PLATFORMS['st']['spot_diameter_um']:g} for legacy ST)")
    g.add_argument("--platform", choices=["visium", "st", "generic"], help="spot platform "
                   "(sets the known spot diameter and lattice)")
    _add_store_args(g)


#: options of SpatialData stores / Visium HD folders -> reader keyword
STORE_OPTIONS = {"table": "table", "image_element": "image_element",
                 "coordinate_system": "coordinate_system", "bin_um": "bin_size_um"}


def _add_store_args(g) -> None:
    g.add_argument("--table", default=None, metavar="NAME",
                   help="SpatialData store: the table of spots to read (when there are several)")
    g.add_argument("--image-element", default=None, metavar="NAME",
                   help="SpatialData store: the H&E image element (default: the finest RGB one)")
    g.add_argument("--coordinate-system", default=None, metavar="NAME",
                   help="SpatialData store: the coordinate system holding spots and image")
    g.add_argument("--bin-um", type=int, default=None, metavar="UM",
                   help="Visium HD: the bin size in micrometres to read (2, 8 or 16; default 8)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and run")
    g.add_argument("--encoder", default="stain-texture", help="image encoder: 'stain-texture' "
                   "(default; no download, fast on CPU), 'uni', 'uni2-h', 'hf-hub:ORG/NAME', a "
                   "timm model name, or a local checkpoint file/folder (see `trihrge encoders`)")
    g.add_argument("--encoder-arch", default=None, metavar="NAME",
                   help="architecture of a local checkpoint given with --encoder PATH when it "
                   "cannot be recognised: 'uni', 'uni2-h' or a timm model name")
    g.add_argument("--genes", type=_whole_number, default=1000, metavar="N",
                   help="number of highly variable genes (seurat_v3 on raw counts; default 1000)")
    g.add_argument("--extra-genes", default="", metavar="G1,G2",
                   help="genes to include whatever their variability, e.g. ERBB2,ESR1")
    g.add_argument("--windows-um", type=_windows, default=(112.0, 336.0), metavar="UM,UM",
                   help="window sizes around each location in micrometres (default 112,336 = "
                   "224 and 672 px at 0.5 um/px)")
    g.add_argument("--ensemble", type=_whole_number, default=1, metavar="N",
                   help="train N networks with different seeds (per fold of the blend); writes "
                   "the mean and the spread")
    g.add_argument("--max-epochs", type=_whole_number, default=None, metavar="N",
                   help="upper bound on training epochs (early stopping usually stops sooner)")
    g.add_argument("--no-neighbours", action="store_true",
                   help="do not give the model the expression of nearby measured spots "
                   "(image-only ablation)")
    g.add_argument("--no-image", action="store_true",
                   help="do not use the image (neighbour-only ablation)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run the encoder and the network (default: GPU if present)")
    _add_threads_arg(g)
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="folder for the feature cache (default: the user cache folder, "
                   "e.g. ~/.cache/napari-trihrge/features on Linux)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="output folder (default trihrge_out/"
                   "<task>-<sample>)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    o.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from ..geometry import PLATFORMS

    visium = PLATFORMS["visium"]
    parser = argparse.ArgumentParser(
        prog="trihrge", description="TriHRGE: high-resolution gene expression from H&E and "
        "spatial transcriptomics spots.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded synthetic sample",
                       description="Recovery (50 % hidden) and enhancement (4x virtual spots and "
                       "an 8 um dense map scored against the known truth) on the embedded "
                       "synthetic sample.", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("trihrge-demo"),
                   help="output folder (default ./trihrge-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--encoder", default="stain-texture", help="image encoder (default stain-texture)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ensemble", type=_whole_number, default=1, metavar="N",
                   help="networks per fold of the blend (default 1: the blend's fold networks "
                   "already give the mean and spread maps)")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_arg(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("recovery", help="hide spots, predict them, score against the measurement",
                       description="Hide a fraction of the spots at random, train on the rest, "
                       "predict the hidden ones and score them (hidden spots only) next to the "
                       "image-free kNN baseline.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input_args(p)
    p.add_argument("--holdout", type=_fraction, default=0.5, metavar="FRACTION",
                   help="fraction of spots hidden (default 0.5)")
    p.add_argument("--annotation", default=None, metavar="FILE",
                   help="barcode -> label file (or an obs column name) for the ARI of k-means "
                   "clusters against it")
    _add_run_args(p)

    p = sub.add_parser("enhance", help="predict a denser grid of virtual spots and dense maps",
                       description="Train on all spots, then predict (a) a 2x/4x/8x denser "
                       "lattice of virtual spots and (b) with --stride-um a dense map inside the "
                       "tissue.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input_args(p)
    p.add_argument("--factor", type=int, default=DEFAULT_DENSITY_FACTOR, choices=DENSITY_FACTORS,
                   help="density of virtual spots relative to the measured lattice (default 4)")
    p.add_argument("--stride-um", type=_positive, default=None, metavar="UM",
                   help="also write dense per-gene maps at this pixel size in micrometres "
                   "(e.g. 8 or 16)")
    p.add_argument("--no-trust", action="store_true", help=TRUST_HELP)
    p.add_argument("--format", choices=["folder", "spatialdata"], default="folder",
                   dest="output_format", help="'spatialdata': also write the sample and the "
                   "results as a self-contained SpatialData store <out>/spatialdata.zarr (H&E, "
                   "spots, virtual spots and maps in micrometres; needs the spatialdata extra)")
    p.add_argument("--into-input", action="store_true",
                   help="add the results (trihrge_* elements) to the SpatialData store given as "
                   "PATH; existing trihrge_* elements are replaced only with --overwrite")
    _add_run_args(p)

    p = sub.add_parser("validate-hd", help="score enhancement against measured Visium HD bins",
                       description="From Visium HD bins (8 um by default), build pseudo-Visium "
                       f"spots ({visium['spot_diameter_um']:g} um disks, "
                       f"{visium['spot_spacing_um']:g} um hexagonal lattice, counts summed), enhance "
                       "them into a map with the bin size as its stride, and score the map "
                       "against the measured bins inside the tissue (per-gene PCC with a "
                       "constant map counting as 0, SSIM, RMSE) next to interpolated spots.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, help="Visium HD outs/ folder, a square_XXXum folder, or a "
                   "SpatialData store made from one")
    g = p.add_argument_group("input details")
    g.add_argument("--um-per-px", type=float, help="full-resolution pixel size in micrometres "
                   "per pixel (default: Space Ranger's microns_per_pixel, checked on the lattice)")
    _add_store_args(g)
    p.add_argument("--factor", type=int, default=DEFAULT_DENSITY_FACTOR, choices=DENSITY_FACTORS,
                   help="density of virtual spots relative to the pseudo-spot lattice")
    _add_run_args(p)

    p = sub.add_parser("cohort", help="process many samples on dask.distributed",
                       description="Run enhance (or recovery) on many samples, one sample per "
                       "dask worker; finished samples are skipped on rerun, failures retried "
                       "and reported.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--factor", type=int, default=DEFAULT_DENSITY_FACTOR, choices=DENSITY_FACTORS,
                   help="enhance: density of virtual spots relative to the measured lattice")
    p.add_argument("--stride-um", type=_positive, default=None, metavar="UM",
                   help="enhance: also write dense maps at this pixel size in micrometres")
    p.add_argument("--holdout", type=_fraction, default=0.5, metavar="FRACTION",
                   help="recovery: fraction of spots hidden (default 0.5)")
    p.add_argument("--no-trust", action="store_true", help="enhance: " + TRUST_HELP)
    p.add_argument("--encoder", default="stain-texture", help="image encoder (see `trihrge "
                   "encoders`)")
    p.add_argument("--genes", type=_whole_number, default=1000, metavar="N",
                   help="number of highly variable genes (default 1000)")
    p.add_argument("--threads", type=_threads_arg, default=None, metavar="N",
                   help="CPU threads per worker for training and prediction (default: the "
                   "usable cores shared among the LocalCluster's workers)")

    _add_inference_parsers(sub)
    _add_cells_parser(sub)
    sub.add_parser("encoders", help="list the image encoders that can be named with --encoder")
    return parser


def _add_inference_parsers(sub) -> None:
    """`trihrge train` (one model from one or several sections) and `trihrge predict`."""
    p = sub.add_parser("train", help="train one model on one or several sections and save it",
                       description="Train one model on the given sections (genes highly "
                       "variable over the pooled sections, image features standardised per "
                       "section) and write a self-describing model folder for `trihrge "
                       "predict`.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="the training sections (see below)")
    p.add_argument("--image-only", action="store_true",
                   help="no neighbour input: the model needs no spots at prediction time "
                   "(for H&E slides that were never sequenced)")
    p.add_argument("--trust-fraction", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of each section's spots held out of training and scored "
                   "against kNN interpolation (default 0.1; 0 trains on every spot)")
    _add_run_args(p)

    p = sub.add_parser("predict", help="apply a trained model to a sample or a bare H&E image",
                       description="Apply a model folder (from `trihrge train` or the model/ of "
                       "a run) to TARGET: a sample of any supported layout (predictions at its "
                       "measured spots keep their barcodes and are scored against the "
                       "measurement) or an H&E image (TIFF/OME-TIFF/SVS/JPEG/PNG; an image-only "
                       "model then predicts a dense map over the tissue). Writes the same run "
                       "folder as `enhance`.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="the model folder")
    _add_input_args(p)
    p.add_argument("--factor", type=int, default=DEFAULT_DENSITY_FACTOR, choices=DENSITY_FACTORS,
                   help="density of virtual spots relative to the spot lattice (default 4)")
    p.add_argument("--stride-um", type=float, default=None, metavar="UM",
                   help="dense map pixel size in micrometres (default: none for a sample, 16 "
                   "for a bare image)")
    p.add_argument("--encoder", default=None, help="only checked: must be the model's encoder")
    p.add_argument("--windows-um", default=None, metavar="UM,UM",
                   help="only checked: must be the model's windows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cache-dir", type=Path, default=None, help="folder for the feature cache")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default trihrge_out/predict-<target>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_cells_parser(sub) -> None:
    """`trihrge cells SAMPLE_OR_RUN`: nuclei, cells and per-cell expression."""
    from ..nuclei import (
        EXPAND_UM,
        MAX_AREA_UM2,
        MIN_AREA_UM2,
        MIN_DISTANCE_UM,
        SMOOTH_UM,
    )

    p = sub.add_parser("cells", help="segment nuclei, grow them into cells and give each cell "
                       "the enhanced expression",
                       description="Segment the nuclei of the H&E (classical: hematoxylin, "
                       "threshold, distance watershed; no downloaded weights), or take your "
                       "own segmentation, grow nuclei into cells and, given an enhance/predict "
                       "run with dense maps, average the predicted expression over each cell. "
                       "PATH is such a run folder (its sample is read again from where it "
                       "came from, or from --sample) or a sample (then --run names the run). "
                       "Writes cells.h5ad, nuclei.tif, cells.tif and optionally cells.geojson "
                       "for QuPath.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input_args(p)
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
    g.add_argument("--threshold", default="otsu", metavar="otsu|local|OD",
                   help="hematoxylin threshold: 'otsu' (default), 'local' or an optical density")
    g.add_argument("--smooth-um", type=_positive, default=SMOOTH_UM, metavar="UM",
                   help=f"smoothing of the hematoxylin channel (default {SMOOTH_UM:g})")
    g.add_argument("--min-distance-um", type=_positive, default=MIN_DISTANCE_UM, metavar="UM",
                   help=f"closest two nucleus centres (default {MIN_DISTANCE_UM:g})")
    g.add_argument("--min-area-um2", type=float, default=MIN_AREA_UM2, metavar="UM2",
                   help=f"smallest nucleus kept (default {MIN_AREA_UM2:g})")
    g.add_argument("--max-area-um2", type=_positive, default=MAX_AREA_UM2, metavar="UM2",
                   help=f"largest nucleus kept (default {MAX_AREA_UM2:g})")
    o = p.add_argument_group("output")
    o.add_argument("--regions", type=Path, default=None, metavar="FILE.geojson",
                   help="QuPath annotations (GeoJSON): each cell gets the region it lies in")
    o.add_argument("--geojson", default=None, metavar="G1,G2", nargs="?", const="",
                   help="also write cells.geojson for QuPath, with these genes' predicted "
                   "values as measurements (none: outlines and areas only)")
    o.add_argument("--out", type=Path, default=None,
                   help="output folder (default <run>/cells, or trihrge_out/cells-<sample>)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    o.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_cells(args, progress) -> tuple[dict, Path]:
    """`trihrge cells`; returns the summary and the output folder."""
    from ..errors import TrihrgeInputError
    from ..io.outputs import is_complete_run
    from ..nuclei import NucleusOptions
    from . import runs

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
        threshold = _positive(threshold)
    options = NucleusOptions(smooth_um=args.smooth_um, threshold=threshold,
                             min_distance_um=args.min_distance_um,
                             min_area_um2=args.min_area_um2, max_area_um2=args.max_area_um2)
    genes = None if args.geojson is None else [g for g in args.geojson.split(",") if g]
    if args.out is not None:
        from ..io.outputs import check_out_dir

        check_out_dir(args.out, args.overwrite)
    adata = _synthetic_or_read(args)
    sample = adata.uns.get("trihrge", {}).get("sample", Path(args.path).stem)
    out = args.out or (Path(run_dir) / "cells" if run_dir is not None
                       else Path("trihrge_out") / f"cells-{sample}")
    summary = runs.run_cells(adata, out, run_dir=run_dir, nuclei_labels=args.nuclei,
                             cell_labels=args.cell_file, expand_um=args.expand_um,
                             options=options, regions=args.regions, geojson_genes=genes,
                             progress=progress, overwrite=args.overwrite)
    return summary, out


def _run_sample_path(run_dir: Path) -> Path | str:
    """Where a run's sample came from (its summary's ``source``)."""
    import json

    from ..errors import TrihrgeInputError

    source = json.loads((Path(run_dir) / "summary.json").read_text()).get("source")
    if source and str(source).startswith("napari_trihrge.datasets.synthetic_sample"):
        return str(source)
    if not source or not Path(str(source)).exists():
        raise TrihrgeInputError(f"the sample of the run {run_dir} is not found ({source})",
                                "pass it with --sample PATH")
    return Path(str(source))


def _synthetic_or_read(args):
    import re

    match = re.fullmatch(r"napari_trihrge\.datasets\.synthetic_sample\(seed=(\d+)\)",
                         str(args.path))
    if match:
        from ..datasets import synthetic_sample

        return synthetic_sample(seed=int(match.group(1)))
    return _read(args)


def _run_inference(args, progress) -> dict:
    """`trihrge train` / `trihrge predict`; returns the summary."""
    from ..tl import inference
    from . import runs

    if args.command == "train":
        cfg = _config(args)
        adatas = []
        for path in args.paths:
            args.path = path
            adatas.append(_read(args))
        out = args.out or Path("trihrge_out") / f"model-{args.paths[0].stem}"
        summary = runs.run_train(adatas, out, image_only=args.image_only, config=cfg,
                                 trust_fraction=args.trust_fraction, progress=progress,
                                 overwrite=args.overwrite)
        summary["outputs"] = {"model": str(out)}
        return summary
    target = args.path if inference.is_image_path(args.path) else _read(args)
    out = args.out or Path("trihrge_out") / f"predict-{args.path.name.split('.')[0]}"
    windows = (tuple(float(w) for w in args.windows_um.split(",")) if args.windows_um else None)
    cache = str(args.cache_dir or default_cache_dir())
    return runs.run_predict(args.model_dir, target, out, factor=args.factor,
                            stride_um=args.stride_um, um_per_px=args.um_per_px,
                            encoder=args.encoder, windows_um=windows, device=args.device,
                            cache_dir=cache, progress=progress, overwrite=args.overwrite)


def _read(args):
    from ..io import read

    kwargs = {k: getattr(args, k) for k in ("positions", "image", "um_per_px", "spot_diameter_px",
                                             "spot_diameter_um", "platform")
              if getattr(args, k, None) is not None}
    kwargs.update(_store_kwargs(args))
    return read(args.path, **kwargs)


def _store_kwargs(args) -> dict:
    """Reader keywords of the SpatialData / Visium HD options, checked against PATH."""
    from ..errors import TrihrgeInputError
    from ..io import is_spatialdata_store, is_visium_hd_folder

    given = {k: getattr(args, k) for k in STORE_OPTIONS if getattr(args, k, None) is not None}
    if not given:
        return {}
    if is_spatialdata_store(args.path):
        allowed = {"table", "image_element", "coordinate_system"}
    elif is_visium_hd_folder(args.path):
        allowed = {"bin_um"}
    else:
        allowed = set()
    wrong = sorted(set(given) - allowed)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise TrihrgeInputError(f"{flags} does not apply to {args.path}",
                                "--table, --image-element and --coordinate-system are for "
                                "SpatialData stores, --bin-um for Visium HD folders")
    return {STORE_OPTIONS[k]: v for k, v in given.items()}


def _read_hd_bins(args):
    """The bins for validate-hd: a Visium HD folder (--bin-um, default 8) or a store (the
    table square_0XXum of that bin size unless --table says otherwise)."""
    from ..io import is_spatialdata_store

    if is_spatialdata_store(args.path) and args.table is None:
        args.table = f"square_{args.bin_um or 8:03d}um"
        args.bin_um = None
    return _read(args)


def _config(args):
    from ..tl import RunConfig

    train = {}
    if getattr(args, "max_epochs", None) is not None:
        train["max_epochs"] = args.max_epochs
    extra = tuple(g.strip() for g in getattr(args, "extra_genes", "").split(",") if g.strip())
    windows = tuple(getattr(args, "windows_um", (112.0, 336.0)))
    return RunConfig(encoder=args.encoder, encoder_architecture=getattr(args, "encoder_arch", None),
                     n_top_genes=getattr(args, "genes", 1000),
                     extra_genes=extra, windows_um=windows,
                     ensemble=getattr(args, "ensemble", 1), seed=args.seed, device=args.device,
                     neighbour_input=not getattr(args, "no_neighbours", False),
                     image_input=not getattr(args, "no_image", False),
                     threads=getattr(args, "threads", None),
                     cache_dir=str(args.cache_dir) if getattr(args, "cache_dir", None)
                     else str(default_cache_dir()), train=train)


def _print_summary(summary: dict, out: Path) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(f"\nSample {summary.get('sample')}: {summary.get('n_spots')} spots, "
          f"{summary.get('n_genes')} genes, encoder {summary.get('encoder')}, "
          f"device {summary.get('device')}")
    rec = summary.get("recovery")
    if rec:
        print(f"Recovery ({rec['heldout_fraction']:.0%} hidden; scored on the "
              f"{rec['n_hidden']} hidden spots and the {rec['n_genes_scored']} genes that vary "
              f"among them, a constant prediction counting as PCC 0):")
        print(f"  mean PCC {fmt(rec['pcc_mean'])} vs best kNN interpolation (k="
              f"{rec['baseline_knn_k']}) {fmt(rec['baseline_knn_pcc_mean'])}; 100 most expressed "
              f"genes {fmt(rec['pcc_top100'])} vs {fmt(rec['baseline_knn_pcc_top100'])}")
        line = (f"  {rec['fraction_genes_better_than_baseline']:.0%} of genes better than kNN, "
                f"{rec['n_genes_constant_prediction']} predicted as a constant; "
                f"MSE {fmt(rec['mse'])} (kNN {fmt(rec['baseline_knn_mse'])})")
        if "ari" in rec:
            line += f", ARI {fmt(rec['ari'])} (kNN {fmt(rec['ari_baseline_knn'])})"
        print(line)
    trust = summary.get("trust")
    if "enhance" in summary and trust:
        print(f"Per-gene trust of the enhanced outputs (a model trained like them on "
              f"{trust['n_visible']} spots, scored on the {trust['n_hidden']} held out, same "
              f"score): mean PCC {fmt(trust['pcc_mean'])} vs kNN (k={trust['baseline_knn_k']}) "
              f"{fmt(trust['baseline_knn_pcc_mean'])}")
        print(f"  {trust['n_genes_beating_interpolation']} of {trust['n_genes_scored']} genes beat "
              f"kNN interpolation (var['beats_interpolation']), "
              f"{trust['n_genes_constant_prediction']} predicted as a constant")
    elif "enhance" in summary:
        print("Per-gene trust: not measured (--no-trust); the outputs do not say which genes "
              "beat interpolation")
    sr = summary.get("superres")
    if sr:
        print(f"Dense map vs truth: PCC {fmt(sr['pcc_mean'])} (interpolated spots "
              f"{fmt(sr['baseline_interp_pcc_mean'])}), SSIM {fmt(sr['ssim_mean'])} "
              f"({fmt(sr['baseline_interp_ssim_mean'])}), RMSE {fmt(sr['rmse'])}")
    hd = summary.get("validate_hd")
    if hd:
        print(f"Visium HD check ({hd['n_pseudo_spots']} pseudo-Visium spots from "
              f"{hd['n_bins']} bins of {hd['bin_size_um']:g} um; {hd['n_pixels_scored']} map "
              f"pixels on measured bins): PCC {fmt(hd['pcc_mean'])} (interpolated spots "
              f"{fmt(hd['baseline_interp_pcc_mean'])}), SSIM {fmt(hd['ssim_mean'])} "
              f"({fmt(hd['baseline_interp_ssim_mean'])}), RMSE {fmt(hd['rmse'])} "
              f"({fmt(hd['baseline_interp_rmse'])})")
    cons = summary.get("consistency")
    if cons:
        print(f"Map averaged over each spot vs the measured spot: PCC {fmt(cons['pcc_mean'])}")
    t = summary.get("timings_s", {})
    print(f"Time {t.get('total', 0):.1f} s, peak memory {summary.get('peak_rss_mb', 0):.0f} MiB")
    print(f"Outputs in {out.resolve()}: " + ", ".join(str(v) for v in
                                                       summary.get("outputs", {}).values()))


def _print_inference_summary(summary: dict) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    if summary.get("task") == "train":
        print(f"\nModel ({'image only' if summary['image_only'] else 'image + neighbours'}, "
              f"{summary['n_genes']} genes, encoder {summary['encoder']}) written to "
              f"{summary['model']}")
        for sec in summary["sections"]:
            s = sec.get("scores")
            if s:
                print(f"  {sec['name']}: {sec['n_heldout_spots']} held-out spots, mean PCC "
                      f"{fmt(s['pcc_mean'])} vs kNN (k={s['baseline_knn_k']}) "
                      f"{fmt(s['baseline_knn_pcc_mean'])}")
        return
    pred = summary.get("predict", {})
    spots = pred.get("spots")
    print(f"\n{summary.get('sample')}: predicted {pred.get('n_virtual_spots')} virtual spots"
          + (f" and a {pred.get('map_stride_um'):g} um map ({pred.get('map_locations')} "
             "locations)" if pred.get("map_stride_um") else ""))
    if spots:
        print(f"At the {spots['n_spots']} measured spots ({spots['n_genes_scored']} genes that "
              f"vary): mean PCC {fmt(spots['pcc_mean'])} vs kNN of the other spots "
              f"{fmt(spots['baseline_knn_pcc_mean'])}; MSE {fmt(spots['mse'])} (training mean "
              f"{fmt(spots.get('baseline_train_mean_mse'))})")
    print("Outputs: " + ", ".join(str(v) for v in summary.get("outputs", {}).values()))


def _threads_arg(value: str) -> int | None:
    """``--threads``: a positive count, or 'auto' (choose from the cores free at the time)."""
    from ..errors import TrihrgeInputError
    from ..threads import parse_threads

    try:
        return parse_threads(value, "--threads")
    except TrihrgeInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _add_threads_arg(p) -> None:
    p.add_argument("--threads", type=_threads_arg, default=None, metavar="N",
                   help="CPU threads for training and prediction (default 'auto': the cores "
                   "that other programs leave free, measured when the run starts; also "
                   "settable with the TRIHRGE_THREADS environment variable)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("demo", "recovery", "enhance"):
        # every stage of the run (not only training) with the pools sized to the free cores
        from ..threads import cpu_threads

        with cpu_threads(args.threads):
            return _run_command(args)
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    from ..progress import TqdmProgress

    progress = TqdmProgress(disable=getattr(args, "quiet", False))
    try:
        if args.command == "encoders":
            from ..features import list_encoders

            for name, desc in list_encoders().items():
                print(f"{name:16s} {desc}")
            return 0
        if args.command == "demo":
            from ..tl import RunConfig
            from .runs import run_demo

            cfg = RunConfig(encoder=args.encoder, device=args.device, ensemble=args.ensemble,
                            seed=args.seed, threads=args.threads)
            summary = run_demo(args.out, seed=args.seed, config=cfg, progress=progress,
                               overwrite=args.overwrite)
            progress.close()
            _print_summary(summary, args.out)
            return 0
        if args.command == "cohort":
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
        if args.command == "cells":
            summary, out = _run_cells(args, progress)
            progress.close()
            m = summary["metrics"]
            genes = (f"the expression of {len(summary['genes'])} genes" if summary["genes"]
                     else "no expression (pass an enhance run with --run)")
            print(f"{m['n_cells']} cells ({m['segmentation']} segmentation, "
                  f"{m['cells_per_mm2_tissue']:.0f} per mm2 of tissue), {genes}")
            print(f"outputs in {out}: {', '.join(summary['outputs'].values())}")
            return 0
        if args.command in ("train", "predict"):
            summary = _run_inference(args, progress)
            progress.close()
            _print_inference_summary(summary)
            return 0
        if args.command == "enhance" and (args.output_format == "spatialdata" or args.into_input):
            from ..io.spatialdata import require_spatialdata

            require_spatialdata()  # before reading and training
        from ..tl import check_writable_folder, validate_config

        cfg = _config(args)
        validate_config(cfg)  # every option before reading or any heavy work
        if args.out is not None:
            from ..io.outputs import check_out_dir

            check_out_dir(args.out, args.overwrite)
            check_writable_folder(args.out, "the output folder", "--out")
        adata = _read_hd_bins(args) if args.command == "validate-hd" else _read(args)
        sample = adata.uns.get("trihrge", {}).get("sample", args.path.stem)
        out = args.out or Path("trihrge_out") / f"{args.command}-{sample}"
        check_writable_folder(out, "the output folder", "--out")
        if args.out is None:
            from ..io.outputs import check_out_dir

            check_out_dir(out, args.overwrite)
        annotation = getattr(args, "annotation", None)
        if annotation and annotation not in adata.obs.columns and not Path(annotation).is_file():
            from ..errors import TrihrgeInputError

            raise TrihrgeInputError(f"--annotation {annotation}: neither a file nor a column of "
                                    "the sample's obs", "pass a barcode -> label file (tab or "
                                    "comma separated) or an obs column name")
        if args.command == "enhance" and args.stride_um is not None:
            from ..tl import check_map_size

            check_map_size(adata, args.stride_um, n_genes=min(cfg.n_top_genes, adata.n_vars)
                           + len(cfg.extra_genes), ensemble=cfg.ensemble)
        if args.command == "recovery":
            from .runs import run_recovery

            summary = run_recovery(adata, out, holdout_fraction=args.holdout, seed=args.seed,
                                   annotation=args.annotation, config=cfg, progress=progress,
                                   overwrite=args.overwrite)
        elif args.command == "validate-hd":
            from .runs import run_validate_hd

            summary = run_validate_hd(adata, out, factor=args.factor, config=cfg,
                                      progress=progress, overwrite=args.overwrite)
        else:
            from .runs import run_enhance

            summary = run_enhance(adata, out, factor=args.factor, stride_um=args.stride_um,
                                  config=cfg, progress=progress, overwrite=args.overwrite,
                                  trust=not args.no_trust,
                                  spatialdata_store=args.output_format == "spatialdata",
                                  into_input=args.into_input)
        progress.close()
        _print_summary(summary, Path(out))
        return 0
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
