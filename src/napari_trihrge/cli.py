"""The ``trihrge`` command line: ``demo``, ``recovery``, ``enhance``, ``cohort``, ``encoders``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import Cancelled, TrihrgeError

EPILOG = """\
PATH is a Space Ranger outs/ folder, an .h5ad file (scanpy/squidpy convention), a her2st-style
section folder (<id>.tsv.gz, <id>_selection.tsv, <id>_HE.jpg), or a counts table (tsv/csv, .gz,
spots x genes) given with --positions and --image.

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
    g.add_argument("--spot-diameter-um", type=_positive, help="spot diameter in micrometres "
                   "(default 55 for Visium, 100 for legacy ST)")
    g.add_argument("--platform", choices=["visium", "st", "generic"], help="spot platform "
                   "(sets the known spot diameter and lattice)")


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
                   help="train N models with different seeds; writes the mean and the spread")
    g.add_argument("--max-epochs", type=_whole_number, default=None, metavar="N",
                   help="upper bound on training epochs (early stopping usually stops sooner)")
    g.add_argument("--no-neighbours", action="store_true",
                   help="do not give the model the expression of nearby measured spots "
                   "(image-only ablation)")
    g.add_argument("--no-image", action="store_true",
                   help="do not use the image (neighbour-only ablation)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run the encoder and the network (default: GPU if present)")
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
    parser = argparse.ArgumentParser(
        prog="trihrge", description="TriHRGE: high-resolution gene expression from H&E and "
        "spatial transcriptomics spots.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded synthetic sample",
                       description="Recovery (50 %% hidden) and enhancement (4x virtual spots and "
                       "an 8 um dense map scored against the known truth) on the embedded "
                       "synthetic sample.", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("trihrge-demo"),
                   help="output folder (default ./trihrge-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--encoder", default="stain-texture", help="image encoder (default stain-texture)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ensemble", type=_whole_number, default=3, metavar="N",
                   help="models in the ensemble (mean and spread maps; default 3)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--factor", type=int, default=4, choices=[2, 4, 8],
                   help="density of virtual spots relative to the measured lattice (default 4)")
    p.add_argument("--stride-um", type=_positive, default=None, metavar="UM",
                   help="also write dense per-gene maps at this pixel size in micrometres "
                   "(e.g. 8 or 16)")
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
    p.add_argument("--factor", type=int, default=4, choices=[2, 4, 8],
                   help="enhance: density of virtual spots relative to the measured lattice")
    p.add_argument("--stride-um", type=_positive, default=None, metavar="UM",
                   help="enhance: also write dense maps at this pixel size in micrometres")
    p.add_argument("--holdout", type=_fraction, default=0.5, metavar="FRACTION",
                   help="recovery: fraction of spots hidden (default 0.5)")
    p.add_argument("--encoder", default="stain-texture", help="image encoder (see `trihrge "
                   "encoders`)")
    p.add_argument("--genes", type=_whole_number, default=1000, metavar="N",
                   help="number of highly variable genes (default 1000)")

    sub.add_parser("encoders", help="list the image encoders that can be named with --encoder")
    return parser


def _read(args):
    from .io import read

    kwargs = {k: getattr(args, k) for k in ("positions", "image", "um_per_px", "spot_diameter_px",
                                             "spot_diameter_um", "platform")
              if getattr(args, k, None) is not None}
    return read(args.path, **kwargs)


def _config(args):
    from .tasks import RunConfig

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
    sr = summary.get("superres")
    if sr:
        print(f"Dense map vs truth: PCC {fmt(sr['pcc_mean'])} (interpolated spots "
              f"{fmt(sr['baseline_interp_pcc_mean'])}), SSIM {fmt(sr['ssim_mean'])} "
              f"({fmt(sr['baseline_interp_ssim_mean'])}), RMSE {fmt(sr['rmse'])}")
    cons = summary.get("consistency")
    if cons:
        print(f"Map averaged over each spot vs the measured spot: PCC {fmt(cons['pcc_mean'])}")
    t = summary.get("timings_s", {})
    print(f"Time {t.get('total', 0):.1f} s, peak memory {summary.get('peak_rss_mb', 0):.0f} MiB")
    print(f"Outputs in {out.resolve()}: " + ", ".join(str(v) for v in
                                                       summary.get("outputs", {}).values()))


def _limit_cpu_threads() -> None:
    """On small CPUs (<= 4 cores) run one OpenMP thread unless the user chose otherwise: the
    BLAS and torch thread pools otherwise compete for the cores and training gets ~10x slower
    (DLPFC full run: 904 s -> 81 s on 2 cores, docs/benchmarks.md). Must run before torch loads."""
    import os

    if "torch" not in sys.modules and (os.cpu_count() or 1) <= 4:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    _limit_cpu_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .progress import TqdmProgress

    progress = TqdmProgress(disable=getattr(args, "quiet", False))
    try:
        if args.command == "encoders":
            from .features import list_encoders

            for name, desc in list_encoders().items():
                print(f"{name:16s} {desc}")
            return 0
        if args.command == "demo":
            from .runs import run_demo
            from .tasks import RunConfig

            cfg = RunConfig(encoder=args.encoder, device=args.device, ensemble=args.ensemble,
                            seed=args.seed)
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
                                             "holdout_fraction": args.holdout},
                                config_kwargs={"encoder": args.encoder, "n_top_genes": args.genes})
            print(report.to_string(index=False))
            return 0 if (report["status"] != "failed").all() else 1
        from .tasks import check_writable_folder, validate_config

        cfg = _config(args)
        validate_config(cfg)  # every option before reading or any heavy work
        if args.out is not None:
            from .outputs import check_out_dir

            check_out_dir(args.out, args.overwrite)
            check_writable_folder(args.out, "the output folder", "--out")
        adata = _read(args)
        sample = adata.uns.get("trihrge", {}).get("sample", args.path.stem)
        out = args.out or Path("trihrge_out") / f"{args.command}-{sample}"
        check_writable_folder(out, "the output folder", "--out")
        if args.out is None:
            from .outputs import check_out_dir

            check_out_dir(out, args.overwrite)
        annotation = getattr(args, "annotation", None)
        if annotation and annotation not in adata.obs.columns and not Path(annotation).is_file():
            from .errors import TrihrgeInputError

            raise TrihrgeInputError(f"--annotation {annotation}: neither a file nor a column of "
                                    "the sample's obs", "pass a barcode -> label file (tab or "
                                    "comma separated) or an obs column name")
        if args.command == "enhance" and args.stride_um is not None:
            from .tasks import check_map_size

            check_map_size(adata, args.stride_um, n_genes=min(cfg.n_top_genes, adata.n_vars)
                           + len(cfg.extra_genes), ensemble=cfg.ensemble)
        if args.command == "recovery":
            from .runs import run_recovery

            summary = run_recovery(adata, out, holdout_fraction=args.holdout, seed=args.seed,
                                   annotation=args.annotation, config=cfg, progress=progress,
                                   overwrite=args.overwrite)
        else:
            from .runs import run_enhance

            summary = run_enhance(adata, out, factor=args.factor, stride_um=args.stride_um,
                                  config=cfg, progress=progress, overwrite=args.overwrite)
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
