"""The options the ``trihrge`` subcommands share: argparse value types (a wrong value is a
usage error, exit code 2), the defaults read from the API, the option groups, and turning
parsed options into a :class:`~napari_trihrge.tl.RunConfig` and a sample."""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TrihrgeInputError
from ..geometry import DEFAULT_DENSITY_FACTOR, DENSITY_FACTORS, PLATFORMS

#: where the encoder and the network may run
DEVICES = ("auto", "cpu", "cuda")


# -------------------------------------------------------------------------------------------
# Option values: argparse types (a wrong value is a usage error, exit code 2)
# -------------------------------------------------------------------------------------------
def whole_number(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def fraction_or_zero(text: str) -> float:
    """argparse type: 0 (none) or a number between 0 and 1."""
    return 0.0 if _number(text) == 0 else fraction(text)


def window_sizes_um(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated positive micrometres, e.g. '112,336'."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected window sizes in micrometres, e.g. 112,336")
    return tuple(positive_number(t) for t in parts)


def thread_count(value: str) -> int | None:
    """``--threads``: a positive count, or 'auto' (choose from the cores free at the time)."""
    from ..threads import parse_threads

    try:
        return parse_threads(value, "--threads")
    except TrihrgeInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


# -------------------------------------------------------------------------------------------
# Defaults: read from the API, never written here again
# -------------------------------------------------------------------------------------------
def run_defaults():
    """A default :class:`~napari_trihrge.tl.RunConfig`: the defaults of every run option."""
    from ..tl import RunConfig

    return RunConfig()


def keyword_default(func: Callable[..., Any], name: str) -> Any:
    """The default of keyword ``name`` of an API function (``tl.recovery``'s holdout...)."""
    return inspect.signature(func).parameters[name].default


def _um_list(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def default_cache_dir() -> Path:
    """The user's cache folder for features (platformdirs), never next to the outputs."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-trihrge")) / "features"


def trust_help() -> str:
    from ..tl import TRUST_HOLDOUT_FRACTION

    return (f"skip the per-gene trust estimate: by default a model is first trained on "
            f"{100 * (1 - TRUST_HOLDOUT_FRACTION):g} %% of the spots and scored on the other "
            f"{100 * TRUST_HOLDOUT_FRACTION:g} %% next to kNN interpolation, so the outputs say "
            "which genes beat interpolation; skipping saves that training, and the outputs then "
            "carry no trust columns")


# -------------------------------------------------------------------------------------------
# Option groups shared by several subcommands
# -------------------------------------------------------------------------------------------
def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="the sample (see below)")
    g = p.add_argument_group("input details (only when they cannot be read from PATH)")
    g.add_argument("--positions", type=Path, help="spot positions table (x/y in image pixels) "
                   "for a counts table")
    g.add_argument("--image", type=Path, help="full-resolution H&E image (TIFF, OME-TIFF, SVS, "
                   "JPEG, PNG); for Space Ranger folders this adds the full-resolution image")
    g.add_argument("--um-per-px", type=positive_number, help="full-resolution pixel size in micrometres "
                   "per pixel (default: fitted on the spot lattice, else from the spot diameter)")
    g.add_argument("--spot-diameter-px", type=positive_number,
                   help="spot diameter in full-resolution pixels")
    g.add_argument("--spot-diameter-um", type=positive_number, help="spot diameter in micrometres "
                   f"(default {PLATFORMS['visium']['spot_diameter_um']:g} for Visium, "
                   f"{PLATFORMS['st']['spot_diameter_um']:g} for legacy ST)")
    g.add_argument("--platform", choices=["visium", "st", "generic"], help="spot platform "
                   "(sets the known spot diameter and lattice)")
    add_store_args(g)


#: options of SpatialData stores / Visium HD folders -> reader keyword
STORE_OPTIONS = {"table": "table", "image_element": "image_element",
                 "coordinate_system": "coordinate_system", "bin_um": "bin_size_um"}


def add_store_args(g) -> None:
    g.add_argument("--table", default=None, metavar="NAME",
                   help="SpatialData store: the table of spots to read (when there are several)")
    g.add_argument("--image-element", default=None, metavar="NAME",
                   help="SpatialData store: the H&E image element (default: the finest RGB one)")
    g.add_argument("--coordinate-system", default=None, metavar="NAME",
                   help="SpatialData store: the coordinate system holding spots and image")
    g.add_argument("--bin-um", type=int, default=None, metavar="UM",
                   help="Visium HD: the bin size in micrometres to read (2, 8 or 16; default 8)")


def add_reference_args(p: argparse.ArgumentParser) -> None:
    """``--with OTHER [OTHER ...]`` and ``--reference-weight`` (recovery and enhance)."""
    g = p.add_argument_group("learning from other sections of the study")
    g.add_argument("--with", nargs="+", type=Path, default=None, dest="references",
                   metavar="OTHER", help="other sections of the same study (same platform and "
                   "tissue; sample folders as for PATH) whose spots join the training of the "
                   "image parts (network, ridge head); kNN and the blend weights stay within "
                   "PATH's own spots. A trained model folder (trihrge train) joins the blend "
                   "as one more candidate instead")
    g.add_argument("--reference-weight", type=positive_number, default=None, metavar="W",
                   help="with --with: the other sections' spots count at most W times the "
                   "section's own training spots (drawn at random; default: every spot)")


def reference_kwargs(args) -> dict:
    """``reference`` and ``reference_weight`` of a run from ``--with`` / ``--reference-weight``."""
    return {"reference": read_references(args), "reference_weight": args.reference_weight}


def read_references(args) -> list | None:
    """Read the sections given with ``--with`` (None without); a model folder stays a path."""
    from ..errors import TrihrgeInputError
    from ..io import read
    from ..tl._reference import is_model_reference

    if not getattr(args, "references", None):
        return None
    refs = []
    for path in args.references:
        if Path(path).resolve() == Path(args.path).resolve():
            raise TrihrgeInputError(f"--with {path} is the sample itself",
                                    "pass other sections of the study")
        refs.append(path if is_model_reference(path) else read(path))
    return refs


def add_run_args(p: argparse.ArgumentParser) -> None:
    run = run_defaults()
    g = p.add_argument_group("model and run")
    g.add_argument("--encoder", default=run.encoder, help=f"image encoder: '{run.encoder}' "
                   "(default; no download, fast on CPU), 'uni', 'uni2-h', 'hf-hub:ORG/NAME', a "
                   "timm model name, or a local checkpoint file/folder (see `trihrge encoders`)")
    g.add_argument("--encoder-arch", default=run.encoder_architecture, metavar="NAME",
                   help="architecture of a local checkpoint given with --encoder PATH when it "
                   "cannot be recognised: 'uni', 'uni2-h' or a timm model name")
    g.add_argument("--genes", type=whole_number, default=run.n_top_genes, metavar="N",
                   help="number of highly variable genes (seurat_v3 on raw counts; default "
                   f"{run.n_top_genes})")
    g.add_argument("--extra-genes", default="", metavar="G1,G2",
                   help="genes to include whatever their variability, e.g. ERBB2,ESR1")
    windows_px = " and ".join(f"{w / 0.5:g}" for w in run.windows_um)
    g.add_argument("--windows-um", type=window_sizes_um, default=tuple(run.windows_um), metavar="UM,UM",
                   help="window sizes around each location in micrometres (default "
                   f"{_um_list(run.windows_um)} = {windows_px} px at 0.5 um/px)")
    g.add_argument("--ensemble", type=whole_number, default=run.ensemble, metavar="N",
                   help="train N networks with different seeds (per fold of the blend); writes "
                   "the mean and the spread")
    g.add_argument("--max-epochs", type=whole_number, default=None, metavar="N",
                   help="upper bound on training epochs (early stopping usually stops sooner)")
    g.add_argument("--no-neighbours", action="store_true",
                   help="do not give the model the expression of nearby measured spots "
                   "(image-only ablation)")
    g.add_argument("--no-image", action="store_true",
                   help="do not use the image (neighbour-only ablation)")
    g.add_argument("--device", default=run.device, choices=DEVICES,
                   help="where to run the encoder and the network (default: GPU if present)")
    add_threads_arg(g)
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="folder for the feature cache (default: the user cache folder, "
                   "e.g. ~/.cache/napari-trihrge/features on Linux)")
    g.add_argument("--seed", type=int, default=run.seed, help=f"random seed (default {run.seed})")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="output folder (default trihrge_out/"
                   "<task>-<sample>)")
    add_overwrite_quiet(o)


def marker_panel_name(text: str) -> str | None:
    """argparse type: a marker panel name, or 'none' (the variable genes alone)."""
    from ..pp.markers import MARKER_PANEL_CHOICES

    if text == "none":
        return None
    if text not in MARKER_PANEL_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown marker panel {text!r} (choose from "
                                         f"{', '.join(MARKER_PANEL_CHOICES)}, none)")
    return text


def add_marker_panel_arg(p) -> None:
    """``--marker-panel`` of the tasks that make maps (enhance, train for predict)."""
    from ..pp.markers import MARKER_PANEL_CHOICES

    default = run_defaults().marker_panel
    p.add_argument("--marker-panel", type=marker_panel_name, default=default, metavar="NAME",
                   help="marker genes mapped as well as the variable genes: "
                   f"{', '.join(MARKER_PANEL_CHOICES)} or none (default {default or 'none'}; "
                   "panel genes the sample lacks or detects in under 1 %% of its spots are "
                   "skipped with a note; the panels are listed in docs/user-guide.md)")


def add_map_method_arg(p) -> None:
    """``--map-method`` of the tasks whose enhance makes maps (enhance, validate-coarse)."""
    from ..tl._config import MAP_METHODS

    default = run_defaults().map_method
    p.add_argument("--map-method", choices=MAP_METHODS, default=default,
                   help="how virtual spots and maps combine interpolation and the image "
                   f"(default {default}): 'residual' = interpolation of the measured spots plus "
                   "the image models' detail between them (keeps every measured spot's level); "
                   "'blend' = the per-gene blend recovery uses")


def cell_formats(text: str) -> tuple[str, ...]:
    """``'ome-zarr,spatialdata'`` -> the cells' extra output formats (checked by the run,
    before any work: :func:`napari_trihrge.io.cell_formats.check_cell_formats`)."""
    return tuple(f.strip() for f in text.split(",") if f.strip())


def add_cell_formats_arg(p, option: str = "--formats") -> None:
    """The cells' extra outputs (OME-Zarr labels, a SpatialData store)."""
    p.add_argument(option, type=cell_formats, default=(), metavar="ome-zarr,spatialdata",
                   help="also write the cell labels as OME-Zarr (labels.ome.zarr) and/or a "
                   "SpatialData store of both labels and the cells table annotating them "
                   "(cells.spatialdata.zarr)")


def add_cells_arg(p, what: str) -> None:
    """``--cells`` (and ``--cell-formats``) of a run that writes maps: enhance, predict."""
    p.add_argument("--cells", action="store_true",
                   help="also segment the nuclei, grow them into cells and give each cell the "
                   f"{what} (<out>/cells/, as `trihrge cells`; needs --stride-um)")
    add_cell_formats_arg(p, "--cell-formats")


def add_overwrite_quiet(p) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_factor_arg(p, relative_to: str = "the measured lattice", prefix: str = "") -> None:
    p.add_argument("--factor", type=int, default=DEFAULT_DENSITY_FACTOR, choices=DENSITY_FACTORS,
                   help=f"{prefix}density of virtual spots relative to {relative_to} "
                   f"(default {DEFAULT_DENSITY_FACTOR})")


def add_threads_arg(p) -> None:
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="CPU threads for training and prediction (default 'auto': the cores "
                   "that other programs leave free, measured when the run starts; also "
                   "settable with the TRIHRGE_THREADS environment variable)")


def run_config(args):
    """The :class:`~napari_trihrge.tl.RunConfig` of the parsed options (defaults for those a
    subcommand does not have)."""
    from ..tl import RunConfig

    run = run_defaults()
    train = {}
    if getattr(args, "max_epochs", None) is not None:
        train["max_epochs"] = args.max_epochs
    extra = tuple(g.strip() for g in getattr(args, "extra_genes", "").split(",") if g.strip())
    cache_dir = getattr(args, "cache_dir", None)
    return RunConfig(encoder=args.encoder,
                     encoder_architecture=getattr(args, "encoder_arch", run.encoder_architecture),
                     n_top_genes=getattr(args, "genes", run.n_top_genes), extra_genes=extra,
                     marker_panel=getattr(args, "marker_panel", run.marker_panel),
                     map_method=getattr(args, "map_method", run.map_method),
                     windows_um=tuple(getattr(args, "windows_um", run.windows_um)),
                     ensemble=getattr(args, "ensemble", run.ensemble), seed=args.seed,
                     device=args.device,
                     neighbour_input=not getattr(args, "no_neighbours", False),
                     image_input=not getattr(args, "no_image", False),
                     threads=getattr(args, "threads", None),
                     cache_dir=str(cache_dir or default_cache_dir()), train=train)


# -------------------------------------------------------------------------------------------
# Reading the sample named by the options
# -------------------------------------------------------------------------------------------
def read_sample(args):
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


def read_hd_bins(args):
    """The bins for validate-hd: a Visium HD folder (--bin-um, default 8) or a store (the
    table square_0XXum of that bin size unless --table says otherwise)."""
    from ..io import is_spatialdata_store

    if is_spatialdata_store(args.path) and args.table is None:
        args.table = f"square_{args.bin_um or 8:03d}um"
        args.bin_um = None
    return read_sample(args)


def prepare_sample_run(args: argparse.Namespace,
                        read: Callable[[argparse.Namespace], Any] | None = None
                        ) -> tuple[Any, Any, Path]:
    """For the subcommands that run on one sample: check every option and the output folder
    before reading, then read the sample; returns ``(config, adata, out)``."""
    from ..io.outputs import check_out_dir
    from ..tl import check_writable_folder, validate_config

    cfg = run_config(args)
    validate_config(cfg)  # every option before reading or any heavy work
    if args.out is not None:
        check_out_dir(args.out, args.overwrite)
        check_writable_folder(args.out, "the output folder", "--out")
    adata = (read or read_sample)(args)
    sample = adata.uns.get("trihrge", {}).get("sample", args.path.stem)
    out = args.out or Path("trihrge_out") / f"{args.command}-{sample}"
    check_writable_folder(out, "the output folder", "--out")
    if args.out is None:
        check_out_dir(out, args.overwrite)
    annotation = getattr(args, "annotation", None)
    if annotation and annotation not in adata.obs.columns and not Path(annotation).is_file():
        raise TrihrgeInputError(f"--annotation {annotation}: neither a file nor a column of "
                                "the sample's obs", "pass a barcode -> label file (tab or "
                                "comma separated) or an obs column name")
    return cfg, adata, out
