"""The noise ceiling of the shared sections: the best fair PCC the counting noise allows.

``metrics.noise_ceiling`` on the spots recovery hides (50 %, ``np.random.default_rng(seed)``, the
split of ``tl.recovery`` and ``bench_accuracy.py``) and on every spot, over the 1000 genes
recovery selects (seurat_v3 on raw counts), the mean over the genes that vary as the fair score
averages them. No model is trained: seconds per section.

    python benchmarks/bench_noise_ceiling.py --seeds 1234 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, load_sample, mean_sd, print_table, shared_samples  # noqa: E402

UNTOUCHED = ("her2st/C5",)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    ap.add_argument("--genes", type=int, default=1000)
    args = ap.parse_args(argv)

    from napari_trihrge.metrics import noise_ceiling
    from napari_trihrge.pp import prepare_expression
    from napari_trihrge.tl._shared import _holdout_split

    rows = []
    samples = shared_samples(args.data)
    for name in sorted(samples, key=lambda s: (s in UNTOUCHED, s)):
        adata = load_sample(samples[name])
        expr = prepare_expression(adata, n_top_genes=args.genes)
        genes = list(expr.var_names)
        hidden_scores = []
        for seed in args.seeds:
            hidden, _ = _holdout_split(expr.n_obs, 0.5, seed)
            hidden_scores.append(noise_ceiling(adata, genes, spots=expr.obs_names[hidden])[0])
        every, _ = noise_ceiling(adata, genes, spots=expr.obs_names)
        rows.append({
            "section": name + (" (untouched)" if name in UNTOUCHED else ""),
            "spots": expr.n_obs, "genes scored (hidden)": hidden_scores[0]["noise_ceiling_n_genes"],
            "ceiling, hidden spots": mean_sd([s["noise_ceiling_pcc_mean"] for s in hidden_scores]),
            "top-100, hidden": mean_sd([s["noise_ceiling_pcc_top100"] for s in hidden_scores]),
            "median gene, hidden": mean_sd([s["noise_ceiling_pcc_median"]
                                            for s in hidden_scores]),
            "ceiling, every spot": f"{every['noise_ceiling_pcc_mean']:.3f}",
            "top-100, every spot": f"{every['noise_ceiling_pcc_top100']:.3f}"})
    print_table(rows, title=f"noise ceiling (binomial split p=0.5, seed 0; Spearman-Brown; "
                            f"{args.genes} HVGs; hidden spots of seeds "
                            f"{', '.join(map(str, args.seeds))}, mean ± sd)")


if __name__ == "__main__":
    main()
