"""Dense maps against the synthetic truth: TESLA's superpixel map next to our 8 um map.

Runs in the project's environment, in two steps around TESLA (which runs in its own):

    python benchmarks/peers/dense_synthetic.py export
    benchmarks/peers/.envs/tesla/bin/python benchmarks/peers/run_tesla.py synthetic --seed 0
    python benchmarks/peers/dense_synthetic.py score

``export`` writes the embedded synthetic sample (``datasets.synthetic_sample(seed=0)``) like
``export_inputs.py`` does, with every spot visible (split "seed 0" = no spot hidden: a dense map
is made from all measured spots). ``score`` runs our ``tl.enhance`` (factor 4, 8 um stride,
default RunConfig, as ``trihrge demo``), puts TESLA's 25 um superpixel values on the same 8 um
grid (each grid pixel takes the nearest superpixel's value: TESLA's map as it is drawn), and scores
both with ``evaluation.superres_scores`` (per gene class; the interpolation baseline is the
measured spots, inverse-distance kNN k=6, on the same grid).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import limit_threads, measure, print_table  # noqa: E402
from export_inputs import WORK, lattice_indices  # noqa: E402

OUT = WORK / "synthetic"


def export(image_um_per_px: float = 1.0) -> None:
    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.io import get_image
    from napari_trihrge.pp import prepare_expression
    from napari_trihrge.tl import RunConfig, sample_geometry

    OUT.mkdir(parents=True, exist_ok=True)
    adata = synthetic_sample(seed=0)
    expr = prepare_expression(adata, n_top_genes=RunConfig().n_top_genes)
    rc_um, _, spot_diameter_um = sample_geometry(expr)
    image = get_image(adata)
    arr, exact = image.at_resolution(image_um_per_px, return_um_per_px=True)
    np.save(OUT / "image.npy", arr)
    (OUT / "image.json").write_text(json.dumps({"um_per_px": exact, "native_um_per_px":
                                                image.um_per_px}))
    every = np.arange(expr.n_obs)
    np.savez_compressed(
        OUT / "inputs_seed0.npz", X=np.asarray(expr.X, dtype=np.float32),
        genes=np.asarray(expr.var_names, dtype=str), barcodes=np.asarray(expr.obs_names, dtype=str),
        hidden=every, visible=every, rc_um=rc_um, rc_px_image=rc_um / exact,
        lattice_rc=lattice_indices(expr), image_um_per_px=exact, spot_diameter_um=spot_diameter_um,
        platform="visium", seed=0, holdout_fraction=0.0)
    print(f"synthetic: {expr.n_obs} spots, {expr.n_vars} genes, image {exact:.3f} um/px")


def score(json_path: str | None) -> None:
    from scipy.spatial import cKDTree

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.evaluation import superres_scores
    from napari_trihrge.tl import DenseMaps, RunConfig, enhance

    adata = synthetic_sample(seed=0)
    inp = np.load(OUT / "inputs_seed0.npz")
    tesla = np.load(OUT / "tesla_seed0.npz")
    tesla_info = json.loads((OUT / "tesla_seed0.json").read_text())
    with measure() as m:
        res = enhance(adata, factor=4, stride_um=8.0,
                      config=RunConfig(cache_dir=str(WORK / "feature_cache")))
    maps = res.maps
    genes = list(maps.gene_names)
    exp_genes = [str(g) for g in inp["genes"]]
    gidx = [exp_genes.index(g) for g in genes]
    # TESLA superpixel centres (image px) -> um; nearest superpixel for every map pixel
    sp_rc_um = tesla["superpixel_rc_px"] * float(inp["image_um_per_px"])
    sp_val = np.asarray(tesla["superpixel_values"], dtype=np.float32)[:, gidx]
    mask = np.asarray(maps.mask, dtype=bool)
    ii, jj = np.nonzero(mask)
    pts = maps.origin_rc_um + np.stack([ii, jj], axis=1) * maps.stride_um
    dist, nearest = cKDTree(sp_rc_um).query(pts)
    values = np.full((len(genes),) + mask.shape, np.nan, dtype=np.float32)
    values[:, ii, jj] = sp_val[nearest].T
    tesla_maps = DenseMaps(values=values, stride_um=maps.stride_um, origin_rc_um=maps.origin_rc_um,
                           gene_names=genes, mask=mask)
    rc_um = inp["rc_um"]
    spots = np.asarray(inp["X"], dtype=np.float32)[:, gidx]
    ours, _ = superres_scores(adata, maps, rc_um, spots)
    theirs, _ = superres_scores(adata, tesla_maps, rc_um, spots)
    rows = []
    for cls in ["all"] + sorted(ours.get("by_gene_class", {})):
        o = ours if cls == "all" else ours["by_gene_class"][cls]
        t = theirs if cls == "all" else theirs["by_gene_class"][cls]
        rows.append({"gene class": cls, "genes": o.get("n_genes", len(genes)),
                     "ours PCC": o["pcc_mean"], "TESLA PCC": t["pcc_mean"],
                     "interp PCC": o["baseline_interp_pcc_mean"], "ours SSIM": o["ssim_mean"],
                     "TESLA SSIM": t["ssim_mean"], "interp SSIM": o["baseline_interp_ssim_mean"]})
    print_table(rows, title="Synthetic sample: dense 8 um map vs truth, per gene class")
    info = {"ours_wall_s": m.wall_s, "ours_peak_rss_mb": m.peak_rss_mb,
            "tesla_wall_s": tesla_info["wall_s"], "tesla_peak_rss_mb": tesla_info["peak_rss_mb"],
            "map_pixels": int(mask.sum()), "max_distance_to_superpixel_um": float(dist.max())}
    print(json.dumps(info))
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": rows, **info}, indent=1, default=float))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["export", "score"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    limit_threads(args.threads)
    if args.step == "export":
        export()
    else:
        score(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
