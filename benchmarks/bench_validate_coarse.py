"""Coarse-to-fine validation on real sections: enhance's map of coarse pseudo-spots vs the real spots.

For each section the measured spots are summed into pseudo-spots that tile it (Visium: 7-spot
hexagons, legacy ST: 2 x 2 blocks; ``--factor`` for larger), ``workflows.coarse_run.
run_validate_coarse`` runs enhance on them with its defaults and the real image, and the map
averaged over each real spot's footprint is scored against the real spots (fair score) next to
the pseudo-spot's own value, kNN interpolation of the pseudo-spots (the better of k = 6 / 12),
an image-only ridge and the nearest virtual spot; the noise ceiling of the real spots and the
fraction of it each row reaches sit beside them. her2st C5 is reported on its own line.
``--split-counts``: pseudo-spots from one binomial half of the counts, scored against the other
(rows named '<section> split'); ``--merge`` adds scores introduced after a run from its saved
``spots.h5ad`` / ``coarse.h5ad``.

    OMP_NUM_THREADS=1 python benchmarks/bench_validate_coarse.py --threads 1 --stride-um 32 \\
        --only her2st/C2 --seeds 1 --json c2_seed1.json
    python benchmarks/bench_validate_coarse.py --merge c2_seed1.json dlpfc_seed1.json ...

Any other section (a folder ``trihrge`` reads; rows named 'unseen/<folder name>'), e.g. the
sections no tuning has seen of docs/benchmarks.md; ``--download-hint`` prints where to get them
(nothing is downloaded here):

    python benchmarks/bench_validate_coarse.py --sample path/to/outs --sample her2st_B4 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, limit_threads, load_sample, mean_sd, measure, print_table  # noqa: E402

#: sections kept out of every tuning decision (reported separately)
UNTOUCHED = ("her2st/C5",)


#: where the sections never seen of docs/benchmarks.md come from (printed by --download-hint)
DOWNLOAD_HINT = """\
Sections no tuning has seen (docs/benchmarks.md, 'Sections never seen'); public GitHub
repositories, nothing is downloaded by this script. Put each in a folder of its own, outside
the project:

  10x Visium CytAssist, mouse embryo (Space Ranger 3.0.0, MIT licence; commit 38b3bdd; the
  runs used the lowres image only: copy it without tissue_hires_image.png to repeat them):
    git clone https://github.com/Perik-Zavodskii/CoexpressDeconvolve && cd CoexpressDeconvolve
    mkdir -p ../coexpress_visium/spatial && cp -r filtered_feature_bc_matrix ../coexpress_visium/
    cp spatial/scalefactors_json.json spatial/tissue_positions.csv \\
        spatial/tissue_lowres_image.png ../coexpress_visium/spatial/ && cd ..
  legacy ST, HER2+ breast cancer patient B, section B4 (Andersson et al. 2021; commit 85df741):
    git clone --depth 1 https://github.com/almaan/her2st
    mkdir her2st_B4 && cp her2st/data/ST-cnts/B4.tsv.gz her2st/data/ST-spotfiles/B4_selection.tsv \\
        her2st/res/ST-cluster/lbl/B4-cluster-annotation.tsv.gz her2st_B4/ \\
        && cp her2st/data/ST-imgs/B/B4/BT10737_D2_HE.jpg her2st_B4/B4_HE.jpg
  legacy ST, the same study, patient C section C6: likewise, with C6 for B4 and
    her2st/data/ST-imgs/C/C6/5714_HE_BT_E2.jpg as C6_HE.jpg

then: python benchmarks/bench_validate_coarse.py --sample coexpress_visium --sample her2st_B4
"""


def _sections(data_dir: Path, only: list[str] | None,
              samples: list[Path] | None = None) -> dict[str, Path]:
    from _common import shared_samples

    if samples:  # any folder: named after it
        missing = [str(p) for p in samples if not Path(p).exists()]
        if missing:
            raise SystemExit(f"not found: {', '.join(missing)} (--download-hint says where "
                             "to get the sections of docs/benchmarks.md)")
        return {f"unseen/{Path(p).resolve().name}": Path(p) for p in samples}
    found = shared_samples(data_dir)
    if only:
        missing = [s for s in only if s not in found]
        if missing:
            raise SystemExit(f"not found under {data_dir}: {', '.join(missing)}")
        found = {s: found[s] for s in only}
    return found


def section_labels(path: Path):
    """Spot labels for the marker genes class: DLPFC's layer annotation (``*_truth.txt``),
    her2st's expression clusters (``*-cluster-annotation.tsv.gz``, ids ``<x>x<y>``); None."""
    import pandas as pd
    from _common import annotation_file

    truth = annotation_file(path)
    if truth is not None:
        return str(truth)
    found = sorted(Path(path).glob("*-cluster-annotation.tsv*"))
    if not found:
        return None
    table = pd.read_csv(found[0], sep="\t")
    return pd.Series(table["label"].astype(str).to_numpy(),
                     index=[f"{x}x{y}" for x, y in zip(table["x"], table["y"], strict=True)])


def add_later_scores(record: dict, path: Path) -> None:
    """For a run made before they existed, from its ``spots.h5ad`` / ``coarse.h5ad``: the marker
    genes class (spot labels) and the pseudo-spot without the spot's own counts."""
    import anndata as ad
    import pandas as pd

    from napari_trihrge.metrics import spot_scores
    from napari_trihrge.tl._shared import _annotation_labels
    from napari_trihrge.tl.coarse_validation import (
        _class_scores,
        gene_classes,
        pseudo_spot_without_self,
    )

    scores, classes = record["scores"], record["scores"]["by_gene_class"]
    labels = section_labels(path)
    if ("markers" in classes or labels is None) and \
            "baseline_pseudo_spot_others_pcc_mean" in scores:
        return
    run = Path(record["out"])
    spots = ad.read_h5ad(run / "spots.h5ad")
    genes = list(spots.var_names)
    measured = spots.layers["measured"]
    per_gene = pd.DataFrame(spots.var)
    if "baseline_pseudo_spot_others_pcc_mean" not in scores:
        others = pseudo_spot_without_self(load_sample(path), ad.read_h5ad(run / "coarse.h5ad"),
                                          spots.obs["coarse_id"], genes)
        summary, table = spot_scores(others, measured, genes)
        scores["baseline_pseudo_spot_others_pcc_mean"] = summary["pcc_mean"]
        per_gene["pcc_pseudo_spot_others"] = table["pcc"].reindex(per_gene.index).to_numpy()
    aligned = _annotation_labels(spots, labels).to_numpy() if labels is not None else None
    for cls, row in _class_scores(gene_classes(measured, aligned), per_gene, genes).items():
        classes[cls] = {**classes.get(cls, {}), **row}


def run(args) -> list[dict]:
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.coarse_run import run_validate_coarse

    records = []
    work = Path(tempfile.mkdtemp(prefix="bench-coarse-"))
    for name, path in _sections(args.data, args.only, args.sample).items():
        adata = load_sample(path)
        for seed in args.seeds:
            cfg = RunConfig(seed=seed, cache_dir=str(args.cache_dir) if args.cache_dir else None,
                            **args.set)
            split = "_split" if args.split_counts else ""
            out = work / f"{name.replace('/', '_')}_f{args.factor}_s{seed}{split}"
            with measure() as m:
                summary = run_validate_coarse(adata, out, factor=args.factor,
                                              stride_um=args.stride_um, config=cfg,
                                              annotation=section_labels(path),
                                              split_counts=args.split_counts)
            records.append({"section": name + (" split" if args.split_counts else "")
                            + "".join(f" {k}={v}" for k, v in args.set.items()),
                            "seed": seed, "factor": args.factor,
                            "stride_um": args.stride_um, "wall_s": m.wall_s,
                            "scores": summary["validate_coarse"], "out": str(out)})
            print(f"{name} seed {seed}: map {summary['validate_coarse']['pcc_mean']:.3f}, "
                  f"{m.wall_s:.0f} s", flush=True)
            if args.json:  # after every run: a long benchmark keeps what it has measured
                args.json.write_text(json.dumps(records, indent=1, default=str))
    return records


def _setting(text: str) -> tuple[str, object]:
    """'field=value' -> (field, value); the value read as a Python literal when it is one."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def tables(records: list[dict]) -> None:
    by_section: dict[str, list[dict]] = {}
    for r in records:
        by_section.setdefault(r["section"], []).append(r)
    order = sorted(by_section, key=lambda s: (s.split(" ")[0] in UNTOUCHED, s))
    rows, class_rows = [], []
    for section in order:
        runs = by_section[section]
        s = [r["scores"] for r in runs]
        label = section + (" (untouched)" if section.split(" ")[0] in UNTOUCHED
                           else "")

        def col(key, runs_scores=s):
            return mean_sd([x[key] for x in runs_scores])

        def frac(key, runs_scores=s):
            return mean_sd([_ratio(x[key], x["noise_ceiling_pcc_mean"]) for x in runs_scores],
                           2)

        rows.append({
            "section": label, "seeds": ",".join(str(r["seed"]) for r in runs),
            "real spots": s[0]["n_spots_scored"], "pseudo-spots": s[0]["n_pseudo_spots"],
            "map (footprint mean)": col("pcc_mean"),
            "nearest virtual spot": col("nearest_virtual_pcc_mean"),
            "pseudo-spot value": col("baseline_pseudo_spot_pcc_mean"),
            "pseudo-spot without the spot": col("baseline_pseudo_spot_others_pcc_mean"),
            "better kNN": col("baseline_knn_pcc_mean"),
            "image-only ridge": col("baseline_ridge_image_pcc_mean"),
            "x better of pseudo-spot / kNN": mean_sd([x["x_better_simple"] for x in s], 2),
            "noise ceiling": col("noise_ceiling_pcc_mean"),
            "map / ceiling": frac("pcc_mean"),
            "better simple / ceiling": frac("baseline_simple_pcc_mean"),
            "wall s / seed": f"{sum(r['wall_s'] for r in runs) / len(runs):.0f}"})
        for cls in s[0]["by_gene_class"]:
            c = [x["by_gene_class"][cls] for x in s]
            class_rows.append({
                "section": label, "genes": cls, "n": c[0]["n_genes"],
                **{name: mean_sd([x.get(name, float("nan")) for x in c])
                   for name in ("map", "nearest_virtual", "pseudo_spot", "pseudo_spot_others",
                                "knn6", "knn12", "ridge_image", "noise_ceiling")}})
    print_table(rows, title="coarse-to-fine validation: fair PCC at the real spots "
                            "(mean ± sd over seeds)")
    print_table(class_rows, title="per gene class (top100: most expressed; sparse: detected "
                                  "in < 10 % of the real spots; markers: the 5 genes most above "
                                  "the rest per label: DLPFC layers, her2st expression "
                                  "clusters)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    ap.add_argument("--only", type=lambda s: s.split(","), default=None,
                    help="comma-separated sections, e.g. her2st/C2,dlpfc_151673")
    ap.add_argument("--sample", type=Path, action="append", default=[], metavar="PATH",
                    help="any section folder instead of the shared ones (repeat for several; "
                         "rows named 'unseen/<folder name>')")
    ap.add_argument("--download-hint", action="store_true",
                    help="print where to get the sections never seen of docs/benchmarks.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--stride-um", type=float, default=32.0)
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache")
    ap.add_argument("--split-counts", action="store_true", help="pseudo-spots from one binomial "
                    "half of the counts, scored against the other (rows named '<section> split')")
    ap.add_argument("--set", type=_setting, nargs="+", default=[], metavar="FIELD=VALUE",
                    help="RunConfig fields for enhance, e.g. target_smoothing=0.25 loss=poisson "
                         "(the levers of docs/benchmarks.md; rows named after them)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="print the tables of earlier --json files")
    args = ap.parse_args(argv)
    args.set = dict(args.set)
    if args.download_hint:
        print(DOWNLOAD_HINT)
        return
    if args.merge:
        records = [r for p in args.merge for r in json.loads(p.read_text())]
        found = _sections(args.data, None)
        for r in records:  # runs made before some scores existed: from their run folders
            section = r["section"].removesuffix(" split")
            if section in found and Path(r["out"]).is_dir():
                add_later_scores(r, found[section])
    else:
        limit_threads(args.threads)
        records = run(args)
    tables(records)


if __name__ == "__main__":
    main()
