"""Score every method on the exported splits with the project's one fair score and print a table.

Runs in the project's environment, after ``export_inputs.py`` and the peers' ``run_*.py``:

    python benchmarks/peers/score.py --sections dlpfc_151673,her2st/C3 --seeds 1
    python benchmarks/peers/score.py ... --run-ours      # also train our model where not cached

Rows per section: our model (``tl.recovery``, default RunConfig, same seed; trained here with
``--run-ours`` and cached as ``ours_seed<seed>.npz``), TESLA and the reference TriHRGE code where
their outputs exist, and the inverse-distance kNN baselines (k=6, k=12). Every method is scored by
``metrics.spot_scores`` on the hidden spots only, on the same genes, with the kNN predictions as
baselines; 'genes > best kNN' is the share of scored genes where the method beats the better kNN
(``metrics.best_baseline``). Per-gene PCCs of every method go to ``.work/<section>/per_gene_seed<seed>.csv``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import SHARED_DATA, limit_threads, mean_sd, measure, print_table, shared_samples  # noqa: E402
from export_inputs import WORK, section_dir  # noqa: E402

UNTOUCHED = {"her2st/C5"}


def run_ours(name: str, path: Path, seed: int, inp) -> None:
    """Our recovery on the same split; predictions of the hidden spots cached."""
    from napari_trihrge import io
    from napari_trihrge.tl import RunConfig, recovery

    adata = io.read(path)
    cpu0 = time.process_time()
    with measure() as m:
        res = recovery(adata, holdout_fraction=float(inp["holdout_fraction"]), seed=seed,
                       config=RunConfig(cache_dir=str(WORK / "feature_cache")))
    pred = res.predictions
    if list(pred.var_names) != [str(g) for g in inp["genes"]] or \
            list(pred.obs_names) != [str(b) for b in inp["barcodes"][inp["hidden"]]]:
        raise SystemExit(f"{name}: recovery's genes or hidden spots differ from the export")
    out = section_dir(name)
    np.savez_compressed(out / f"ours_seed{seed}.npz", pred_hidden=np.asarray(pred.X))
    (out / f"ours_seed{seed}.json").write_text(json.dumps(
        {"method": "this project (recovery, default RunConfig)", "seed": seed,
         "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb,
         "cpu_s_process": time.process_time() - cpu0,
         "epochs": int(sum(len(h) for h in res.history)),
         "pcc_mean_reported": res.metrics["pcc_mean"]}, indent=1))
    print(f"  ours {name} seed {seed}: PCC {res.metrics['pcc_mean']:.4f} ({m.wall_s:.0f} s)",
          flush=True)


def cpu_and_peak(name: str, key: str, seed: int, info: dict) -> tuple[float | None, float | None]:
    """CPU seconds (user + system) and peak resident MiB of a peer's whole child process, from
    its ``/usr/bin/time -v`` log when run_all.sh made one, else from the run's own record."""
    log = WORK / "logs" / f"{key}_{name.replace('/', '_')}_seed{seed}.log"
    if log.exists():
        text = log.read_text(errors="replace")
        user = re.search(r"User time \(seconds\): ([0-9.]+)", text)
        system = re.search(r"System time \(seconds\): ([0-9.]+)", text)
        peak = re.search(r"Maximum resident set size \(kbytes\): ([0-9]+)", text)
        if user and system and peak:
            return float(user.group(1)) + float(system.group(1)), int(peak.group(1)) / 1024
    return info.get("cpu_s_process"), info.get("peak_rss_mb")


METHODS = {"ours": "this project (default recovery)", "tesla": "TESLA 1.2.2",
           "tesla_s0": "TESLA, colour off (s=0; ablation)",
           "spamcaf": "TriHRGE reference code (SpaMCAF)"}


def _method_label(key: str) -> str:
    if key.startswith("spamcaf_e"):
        return "TriHRGE reference code, snapshot"
    return METHODS.get(key, f"kNN k={key[3:]}")


def score_section(name: str, seeds: list[int]) -> list[dict]:
    from napari_trihrge.metrics import best_baseline, spot_scores
    from napari_trihrge.neighbours import idw_interpolate

    d = section_dir(name)
    per_method: dict[str, dict[str, list]] = {}
    extra: dict[str, list[str]] = {}
    for seed in seeds:
        inp = np.load(d / f"inputs_seed{seed}.npz")
        x, hidden, visible = inp["X"], inp["hidden"], inp["visible"]
        rc = inp["rc_um"]
        genes = [str(g) for g in inp["genes"]]
        true = x[hidden]
        knn = {}
        for k in (6, 12):
            with measure() as m:
                knn[f"knn{k}"] = idw_interpolate(rc[visible], x[visible], rc[hidden], k)
            r = per_method.setdefault(f"knn{k}", {"pcc": [], "top": [], "better": [], "wall": [],
                                                  "mem": [], "cpu": [], "seed": []})
            s, _ = spot_scores(knn[f"knn{k}"], true, genes)
            r["pcc"].append(s["pcc_mean"])
            r["top"].append(s["pcc_top100"])
            r["wall"].append(m.wall_s)
            r["mem"].append(None)
            r["cpu"].append(None)
            r["seed"].append(seed)
            r["better"].append(None)
        per_gene = pd.DataFrame(index=pd.Index(genes, name="gene"))
        snapshot_keys = sorted((f.name.split("_seed")[0] for f in d.glob(f"spamcaf_e*_seed{seed}.npz")),
                               key=lambda k: int(k.split("_e")[1]))
        for key in list(METHODS) + snapshot_keys:
            f = d / f"{key}_seed{seed}.npz"
            if not f.exists():
                continue
            pred = np.load(f)["pred_hidden"]
            info = json.loads((d / f"{key}_seed{seed}.json").read_text())
            s, table = spot_scores(pred, true, genes, baselines=knn)
            b = best_baseline(s, table, list(knn), "knn")
            per_gene[f"pcc_{key}"] = table["pcc"].reindex(genes)
            per_gene["pcc_knn6"] = table["pcc_knn6"].reindex(genes)
            per_gene["pcc_knn12"] = table["pcc_knn12"].reindex(genes)
            per_gene["mean_measured"] = table["mean_measured"].reindex(genes)
            r = per_method.setdefault(key, {"pcc": [], "top": [], "better": [], "wall": [],
                                            "mem": [], "cpu": [], "seed": []})
            r["pcc"].append(s["pcc_mean"])
            r["top"].append(s["pcc_top100"])
            r["better"].append(b["fraction_genes_better_than_baseline"])
            cpu, peak = cpu_and_peak(name, key, seed, info) if key != "ours" else (
                info.get("cpu_s_process"), info.get("peak_rss_mb"))
            r["wall"].append(info["wall_s"])
            r["mem"].append(peak)
            r["cpu"].append(cpu)
            r["seed"].append(seed)
            if key == "spamcaf":
                extra.setdefault(key, []).append(f"{info['epochs']}/{info['epochs_default']} epochs")
            elif key.startswith("spamcaf_e"):
                extra.setdefault(key, []).append(
                    f"after epoch {info['epochs']} of a {info['epochs_schedule']}-epoch run")
        per_gene.to_csv(d / f"per_gene_seed{seed}.csv")
    rows = []
    label = name + (" (untouched)" if name in UNTOUCHED else "")
    for key, r in per_method.items():
        mems = [v for v in r["mem"] if v is not None]
        betters = [v for v in r["better"] if v is not None]
        cpus = [v for v in r["cpu"] if v is not None]
        rows.append({
            "section": label, "method": _method_label(key) + (
                f" ({', '.join(sorted(set(extra[key])))})" if key in extra else ""),
            "seeds": ",".join(map(str, r["seed"])), "fair PCC": mean_sd(r["pcc"]),
            "top-100 PCC": mean_sd(r["top"]),
            "genes > best kNN": f"{np.mean(betters):.0%}" if betters else "",
            "wall s / seed": f"{np.mean(r['wall']):.1f}",
            "CPU s / seed": f"{np.mean(cpus):.0f}" if cpus else "",
            "peak MiB": f"{max(mems):.0f}" if mems else "(in-process)",
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA))
    ap.add_argument("--sections", default="dlpfc_151673,her2st/C2,her2st/C3,her2st/C4,her2st/C5")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--run-ours", action="store_true", help="train our model where not cached")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    limit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    samples = shared_samples(args.data)
    rows = []
    for name in args.sections.split(","):
        d = section_dir(name)
        avail = [s for s in seeds if (d / f"inputs_seed{s}.npz").exists()]
        if args.run_ours:
            for s in avail:
                if not (d / f"ours_seed{s}.npz").exists():
                    run_ours(name, samples[name], s, np.load(d / f"inputs_seed{s}.npz"))
        # the kNN rows on the same seeds as the methods (seeds where no method ran are left out)
        avail = [s for s in avail if any((d / f"{k}_seed{s}.npz").exists() for k in METHODS)]
        if avail:
            rows += score_section(name, avail)
    print_table(rows, title="Peers on the same held-out split (50 % hidden, hidden spots only)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
