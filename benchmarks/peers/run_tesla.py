"""Run TESLA 1.2.2 (pip 'teslaforst') on one exported section/seed; runs in TESLA's own environment.

    benchmarks/peers/.envs/tesla/bin/python benchmarks/peers/run_tesla.py her2st_C3 --seed 1

What is called, all of it TESLA's own code, with its tutorial settings:

* ``TESLA.scan_contour`` on every spot's lattice index and pixel position (the tissue outline;
  hexagon for Visium, square for ST). Spot *positions* of hidden spots are known to every method
  (they are the query); their expression is not.
* ``TESLA.imputation(img, raw, cnt, genes, shape, res, s=1, k=2, num_nbs=10)`` with ``raw`` = the
  **visible** spots only (our log-normalised values of the 1000 HVGs, pixel positions in
  ``image.npy``) and ``res`` = the 25 um superpixel in image pixels. It returns one value per
  superpixel on a ``res``-pixel grid inside the outline: an inverse-distance average of the 10
  nearest visible spots in (x, y, scaled colour) space.

Spot-level prediction for a hidden spot = the mean of the superpixels whose centres fall inside
that spot's disk (the nearest superpixel when none does): how a TESLA user reads its map at a spot.
Writes ``tesla_seed<seed>.npz`` (hidden-spot predictions, the superpixel map, wall time, peak
memory) next to the inputs; with ``--s 0`` (colour switched off, an ablation) ``tesla_s0_seed<seed>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("section", help="exported section folder name under .work/, e.g. her2st_C3")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--superpixel-um", type=float, default=25.0)
    ap.add_argument("--s", type=float, default=1.0,
                    help="TESLA's colour scale (tutorial 1; 0 = no colour: spatial distance only)")
    args = ap.parse_args(argv)

    import anndata
    import pandas as pd
    import TESLA

    d = WORK / args.section
    inp = np.load(d / f"inputs_seed{args.seed}.npz")
    img = np.load(d / "image.npy")
    um_per_px = float(inp["image_um_per_px"])
    res_px = args.superpixel_um / um_per_px
    genes = [str(g) for g in inp["genes"]]
    visible, hidden = inp["visible"], inp["hidden"]
    rc_px = inp["rc_px_image"]
    lattice = inp["lattice_rc"]
    platform = str(inp["platform"])

    t0 = time.perf_counter()
    # outline from every spot position (TESLA's pixel_x is the image row, pixel_y the column)
    spots = pd.DataFrame({"array_x": lattice[:, 0], "array_y": lattice[:, 1],
                          "pixel_x": np.round(rc_px[:, 0]).astype(int),
                          "pixel_y": np.round(rc_px[:, 1]).astype(int)})
    shape = "hexagon" if platform == "visium" else "square"
    cnt = TESLA.scan_contour(spots, scan_x=True, shape=shape)
    raw = anndata.AnnData(X=np.asarray(inp["X"][visible], dtype=np.float64),
                          obs=pd.DataFrame({"pixel_x": spots["pixel_x"].to_numpy()[visible],
                                            "pixel_y": spots["pixel_y"].to_numpy()[visible]},
                                           index=[str(b) for b in inp["barcodes"][visible]]),
                          var=pd.DataFrame(index=genes))
    sudo = TESLA.imputation(img=img, raw=raw, cnt=cnt, genes=genes, shape="None", res=res_px,
                            s=args.s, k=2, num_nbs=10)
    wall_impute_s = time.perf_counter() - t0

    # read the superpixel map at the hidden spots
    sp_rc = sudo.obs[["x", "y"]].to_numpy(dtype=np.float64)
    sp_x = np.asarray(sudo.X, dtype=np.float32)
    radius_px = float(inp["spot_diameter_um"]) / 2 / um_per_px
    from scipy.spatial import cKDTree

    tree = cKDTree(sp_rc)
    pred = np.empty((len(hidden), sp_x.shape[1]), dtype=np.float32)
    n_inside = np.zeros(len(hidden), dtype=np.int64)
    for i, centre in enumerate(rc_px[hidden]):
        inside = tree.query_ball_point(centre, radius_px)
        if not inside:
            inside = [int(tree.query(centre)[1])]
        else:
            n_inside[i] = len(inside)
        pred[i] = sp_x[inside].mean(axis=0)
    wall_s = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = usage.ru_maxrss / 1024
    tag = "tesla" if args.s == 1.0 else f"tesla_s{args.s:g}"
    np.savez_compressed(d / f"{tag}_seed{args.seed}.npz", pred_hidden=pred, hidden=hidden,
                        superpixel_rc_px=sp_rc, superpixel_values=sp_x.astype(np.float16),
                        superpixels_per_spot=n_inside)
    info = {"method": "TESLA 1.2.2", "seed": args.seed, "superpixel_um": args.superpixel_um,
            "res_px": res_px, "image_um_per_px": um_per_px, "n_superpixels": int(len(sp_rc)),
            "n_visible": int(len(visible)), "n_hidden": int(len(hidden)),
            "median_superpixels_per_hidden_spot": float(np.median(n_inside)),
            "wall_s": wall_s, "wall_impute_s": wall_impute_s, "peak_rss_mb": peak_mb,
            "cpu_s_process": usage.ru_utime + usage.ru_stime,
            "settings": f"imputation(s={args.s:g}, k=2, num_nbs=10)"}
    (d / f"{tag}_seed{args.seed}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
