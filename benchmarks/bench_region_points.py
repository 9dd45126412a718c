"""How long does the Region explorer take to compare a region on a run's maps and cells?

On a finished run folder (``trihrge enhance ... --stride-um 8``): the enhanced points of its
factorised map store for every gene (a sub-sampled grid of map pixels, every gene computed at
those pixels only, the networks run once), against the way before (each gene's whole map, then
the grid's pixels: timed for a few genes and given per gene); then the statistics of one
rectangle on those points and, with ``--cells`` (the folder ``trihrge cells`` wrote), on the
cells. Prints a table.

    python benchmarks/bench_region_points.py RUN --cells CELLS \\
        --rect-um 1500 2500 2500 3500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, print_table, timed  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with maps.store.zarr")
    ap.add_argument("--cells", type=Path, help="the folder `trihrge cells` wrote (cells.h5ad)")
    ap.add_argument("--rect-um", type=float, nargs=4, default=(1500, 2500, 2500, 3500),
                    metavar=("ROW0", "ROW1", "COL0", "COL1"),
                    help="the region, micrometres from the image's top-left")
    ap.add_argument("--old-genes", type=int, default=5,
                    help="genes timed the way before (whole maps), given per gene")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    limit_threads(args.threads)

    from napari_trihrge import regions as R
    from napari_trihrge.io.map_store import STORE_NAME, open_map_store

    maps = open_map_store(args.run / STORE_NAME)
    r0, r1, c0, c1 = args.rect_um
    box = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)
    rows = []
    points, m = timed(R.maps_expression_set, maps)
    rows.append({"step": "map points, every gene (one pass at the grid's pixels)",
                 "points": len(points.points_rc_um), "genes": len(points.genes),
                 "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb})
    step = max(1, int(round(np.diff(np.unique(points.points_rc_um[:, 0])).min()
                            / maps.stride_um)))  # the grid's pixels, every step-th
    t0 = time.perf_counter()
    for g in range(args.old_genes):  # the way before: the whole map of each gene
        whole = maps.compute([g])[0][0]
        whole[::step, ::step].copy()
    per_gene = (time.perf_counter() - t0) / max(1, args.old_genes)
    rows.append({"step": f"before: whole map per gene ({args.old_genes} timed)",
                 "points": len(points.points_rc_um), "genes": len(points.genes),
                 "wall_s": per_gene * len(points.genes)})
    stats, m = timed(R.region_statistics, [box], None, points, top_n=None)
    rows.append({"step": "statistics of the region on the map points",
                 "points": int(stats.summary.loc[0, "enhanced_points_inside"]),
                 "genes": len(points.genes), "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb})
    if args.cells is not None:
        import anndata as ad

        cells = R.cells_expression_set(ad.read_h5ad(args.cells / "cells.h5ad"))
        stats, m = timed(R.region_statistics, [box], cells, None, top_n=None)
        rows.append({"step": "statistics of the region on the cells (rank-sum test)",
                     "points": len(cells.points_rc_um), "genes": len(cells.genes),
                     "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb})
    print_table(rows, ["step", "points", "genes", "wall_s", "peak_rss_mb"],
                title=f"Region explorer on {args.run} (the 'before' row: per gene x genes)")


if __name__ == "__main__":
    main()
