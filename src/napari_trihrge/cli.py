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


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="the sample (see below)")
    g = p.add_argument_group("input details (only when they cannot be read from PATH)")
    g.add_argument("--positions", type=Path, help="spot positions table (x/y in image pixels) "
                   "for a counts table")
    g.add_argument("--image", type=Path, help="full-resolution H&E image (TIFF, OME-TIFF, SVS, "
                   "JPEG, PNG); for Space Ranger folders this adds the full-resolution image")
    g.add_argument("--um-per-px", type=float, help="full-resolution pixel size in micrometres "
                   "per pixel (default: derived from the spot diameter)")
    g.add_argument("--spot-diameter-px", type=float, help="spot diameter in full-resolution pixels")
    g.add_argument("--spot-diameter-um", type=float, help="spot diameter in micrometres "
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
    g.add_argument("--genes", type=int, default=1000, metavar="N",
                   help="number of highly variable genes (seurat_v3 on raw counts; default 1000)")
    g.add_argument("--extra-genes", default="", metavar="G1,G2",
                   help="genes to include whatever their variability, e.g. ERBB2,ESR1")
    g.add_argument("--windows-um", default="112,336", metavar="UM,UM",
                   help="window sizes around each location in micrometres (default 112,336 = "
                   "224 and 672 px at 0.5 um/px)")
    g.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train N models with different seeds; writes the mean and the spread")
    g.add_argument("--max-epochs", type=int, default=None, metavar="N",
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
                   help="folder for the feature cache (default: <out>/../.trihrge_cache)")
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
    p.add_argument("--ensemble", type=int, default=3, metavar="N",
                   help="models in the ensemble (mean and spread maps; default 3)")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_arg(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("recovery", help="hide spots, predict them, score against the measurement",
                       description="Hide a fraction of the spots at random, train on the rest, "
                       "predict the hidden ones and score them (hidden spots only) next to the "
                       "image-free kNN baseline.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input_args(p)
    p.add_argument("--holdout", type=float, default=0.5, metavar="FRACTION",
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
    p.add_argument("--stride-um", type=float, default=None, metavar="UM",
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
    p.add_argument("--stride-um", type=float, default=None, metavar="UM",
                   help="enhance: also write dense maps at this pixel size in micrometres")
    p.add_argument("--holdout", type=float, default=0.5, metavar="FRACTION",
                   help="recovery: fraction of spots hidden (default 0.5)")
    p.add_argument("--encoder", default="stain-texture", help="image encoder (see `trihrge "
                   "encoders`)")
    p.add_argument("--genes", type=int, default=1000, metavar="N",
                   help="number of highly variable genes (default 1000)")
    p.add_argument("--threads", type=_threads_arg, default=None, metavar="N",
                   help="CPU threads per worker for training and prediction (default: the "
                   "usable cores shared among the LocalCluster's workers)")

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
    if getattr(args, "max_epochs", None):
        train["max_epochs"] = args.max_epochs
    extra = tuple(g.strip() for g in getattr(args, "extra_genes", "").split(",") if g.strip())
    windows = tuple(float(w) for w in getattr(args, "windows_um", "112,336").split(","))
    return RunConfig(encoder=args.encoder, encoder_architecture=getattr(args, "encoder_arch", None),
                     n_top_genes=getattr(args, "genes", 1000),
                     extra_genes=extra, windows_um=windows,
                     ensemble=getattr(args, "ensemble", 1), seed=args.seed, device=args.device,
                     neighbour_input=not getattr(args, "no_neighbours", False),
                     image_input=not getattr(args, "no_image", False),
                     threads=getattr(args, "threads", None),
                     cache_dir=str(args.cache_dir) if getattr(args, "cache_dir", None) else None,
                     train=train)


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


def _threads_arg(value: str) -> int | None:
    """``--threads``: a positive count, or 'auto' (choose from the cores free at the time)."""
    from .errors import TrihrgeInputError
    from .threads import parse_threads

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
        from .threads import cpu_threads

        with cpu_threads(args.threads):
            return _run_command(args)
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
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
                                             "holdout_fraction": args.holdout},
                                config_kwargs={"encoder": args.encoder, "n_top_genes": args.genes,
                                               "threads": args.threads})
            print(report.to_string(index=False))
            return 0 if (report["status"] != "failed").all() else 1
        adata = _read(args)
        cfg = _config(args)
        sample = adata.uns.get("trihrge", {}).get("sample", args.path.stem)
        out = args.out or Path("trihrge_out") / f"{args.command}-{sample}"
        if cfg.cache_dir is None:
            cfg.cache_dir = str(Path(out).resolve().parent / ".trihrge_cache")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
