"""Where and why TESLA's colour-weighted averaging beats our model: measured diagnostics.

Runs in the project's environment after ``score.py`` (which writes the per-gene CSVs):

    python benchmarks/peers/why_tesla.py --sections dlpfc_151673,her2st/C3,her2st/C5 --seeds 1,2,3

Prints four tables:

1. Section: spots, training (visible) spots, centre-to-centre spacing, depth (median UMIs and
   detected genes per spot, share of zeros among the 1000 HVGs).
2. Per-gene PCC by expression quartile (mean measured log-expression of the hidden spots):
   our model, TESLA, TESLA without colour (``s=0``) and the reference code where run, kNN k=12;
   share of genes where TESLA beats our model, and where neither ours nor TESLA beats kNN k=12
   (per gene, seeds pooled; also over all genes).
3. Collapsed genes: how many genes each method (ours, TESLA, the reference code where run)
   predicts as one constant over the hidden spots (scored 0 by the fair score), the constant's
   value, and our model's score when those genes take the kNN k=12 prediction instead (a
   fallback chosen without looking at the hidden truth: a constant prediction is visible before
   scoring).
4. What the colour carries: 5-fold cross-validated R² (ridge) of the first three expression PCs
   of all spots from (a) the mean grey value of the H&E in a 25 um window at the spot centre (the
   scalar TESLA's colour distance uses), (b) our default-encoder features (the network's image
   input), (c) both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import SHARED_DATA, limit_threads, print_table, shared_samples  # noqa: E402
from export_inputs import section_dir  # noqa: E402


def section_stats(name: str, path: Path, seed: int) -> dict:
    from scipy.spatial import cKDTree

    from napari_trihrge import io

    adata = io.read(path)
    counts = adata.X
    totals = np.asarray(counts.sum(axis=1)).ravel()
    detected = np.asarray((counts > 0).sum(axis=1)).ravel()
    inp = np.load(section_dir(name) / f"inputs_seed{seed}.npz")
    x = inp["X"]
    spacing = cKDTree(inp["rc_um"]).query(inp["rc_um"], k=2)[0][:, 1]
    return {"section": name, "spots": int(len(x)), "training spots": int(len(inp["visible"])),
            "spacing um": f"{np.median(spacing):.0f}",
            "median UMIs / spot": f"{np.median(totals):.0f}",
            "median genes / spot": f"{np.median(detected):.0f}",
            "zeros in 1000 HVGs": f"{(x == 0).mean():.0%}"}


def by_quartile(name: str, seeds: list[int]) -> list[dict]:
    frames = []
    for s in seeds:
        f = section_dir(name) / f"per_gene_seed{s}.csv"
        if f.exists():
            frames.append(pd.read_csv(f, index_col=0).assign(seed=s))
    if not frames:
        return []
    t = pd.concat(frames).dropna(subset=["mean_measured"])
    t = t[np.isfinite(t.get("pcc_ours", np.nan))] if "pcc_ours" in t else t
    t["quartile"] = t.groupby("seed")["mean_measured"].transform(
        lambda v: pd.qcut(v.rank(method="first"), 4, labels=["Q1 (lowest)", "Q2", "Q3", "Q4 (highest)"]))
    rows = []
    groups = list(t.groupby("quartile", observed=True)) + [("all genes", t)]
    for q, sub in groups:
        row = {"section": name, "expression quartile": str(q),
               "mean log-expr": f"{sub['mean_measured'].mean():.2f}"}
        for col, label in (("pcc_ours", "ours"), ("pcc_tesla", "TESLA"),
                           ("pcc_tesla_s0", "TESLA s=0"), ("pcc_spamcaf", "reference code"),
                           ("pcc_knn12", "kNN k=12")):
            if col in sub:
                row[label] = f"{sub[col].mean():.3f}"
        if "pcc_tesla" in sub and "pcc_ours" in sub:
            row["TESLA > ours"] = f"{(sub['pcc_tesla'] > sub['pcc_ours']).mean():.0%}"
            nothing = (sub["pcc_ours"] <= sub["pcc_knn12"]) & (sub["pcc_tesla"] <= sub["pcc_knn12"])
            row["neither > kNN k=12"] = f"{nothing.mean():.0%}"
        rows.append(row)
    return rows


def collapsed_genes(name: str, seed: int) -> dict | None:
    from napari_trihrge.metrics import spot_scores
    from napari_trihrge.neighbours import idw_interpolate

    d = section_dir(name)
    if not (d / f"ours_seed{seed}.npz").exists():
        return None
    inp = np.load(d / f"inputs_seed{seed}.npz")
    x, hidden, visible, rc = inp["X"], inp["hidden"], inp["visible"], inp["rc_um"]
    genes = [str(g) for g in inp["genes"]]
    true = x[hidden]
    knn12 = idw_interpolate(rc[visible], x[visible], rc[hidden], 12)
    ours = np.load(d / f"ours_seed{seed}.npz")["pred_hidden"]
    constant = np.ptp(ours, axis=0) <= 0
    fallback = np.where(constant[None, :], knn12, ours)
    row = {"section": name, "seed": seed,
           "ours: constant genes": int(constant.sum()),
           "their value": (f"{ours[0, constant].min():.2f}..{ours[0, constant].max():.2f}"
                           if constant.any() else ""),
           "ours": spot_scores(ours, true, genes)[0]["pcc_mean"],
           "ours, constant genes -> kNN12": spot_scores(fallback, true, genes)[0]["pcc_mean"],
           "kNN k=12": spot_scores(knn12, true, genes)[0]["pcc_mean"]}
    for key, label in (("tesla", "TESLA"), ("spamcaf", "reference code")):
        if (d / f"{key}_seed{seed}.npz").exists():
            pred = np.load(d / f"{key}_seed{seed}.npz")["pred_hidden"]
            row[f"{label}: constant genes"] = int((np.ptp(pred, axis=0) <= 0).sum())
            row[label] = spot_scores(pred, true, genes)[0]["pcc_mean"]
    return row


def colour_content(name: str, seed: int, window_um: float = 25.0) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    d = section_dir(name)
    inp = np.load(d / f"inputs_seed{seed}.npz")
    img = np.load(d / "image.npy", mmap_mode="r")
    half = int(round(window_um / float(inp["image_um_per_px"]) / 2))
    grey = []
    for r, c in np.round(inp["rc_px_image"]).astype(int):
        patch = np.asarray(img[max(0, r - half):r + half + 1, max(0, c - half):c + half + 1])
        grey.append(patch.mean())
    grey = np.asarray(grey)[:, None]
    feats = np.load(d / "features.npy").reshape(len(grey), -1)
    pcs = PCA(n_components=3, random_state=0).fit_transform(inp["X"] - inp["X"].mean(axis=0))
    out = {"section": name}
    cv = KFold(5, shuffle=True, random_state=0)
    for label, f in (("grey 25 um", grey), ("our features", feats),
                     ("both", np.hstack([grey, feats]))):
        z = StandardScaler().fit_transform(f)
        r2 = []
        for j in range(3):
            pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), z, pcs[:, j], cv=cv)
            r2.append(1 - ((pred - pcs[:, j]) ** 2).sum() / ((pcs[:, j] - pcs[:, j].mean()) ** 2).sum())
        out[f"R² PC1/2/3 from {label}"] = " / ".join(f"{v:.2f}" for v in r2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA))
    ap.add_argument("--sections", default="dlpfc_151673,her2st/C3,her2st/C5")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    limit_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    samples = shared_samples(args.data)
    names = args.sections.split(",")
    print_table([section_stats(n, samples[n], seeds[0]) for n in names], title="Sections")
    print_table([r for n in names for r in by_quartile(n, seeds)],
                title="Per-gene PCC by expression quartile (hidden spots, seeds pooled)")
    rows = [collapsed_genes(n, s) for n in names for s in seeds]
    print_table([r for r in rows if r], title="Collapsed genes (hidden spots)")
    print_table([colour_content(n, seeds[0]) for n in names],
                title="What the colour carries: cross-validated R² of expression PCs (all spots)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
