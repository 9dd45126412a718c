"""The Train panel's Enhance at a fine stride, without Qt: what it computes and holds.

Runs the panel's engine path (``workflows.runs.run_task('enhance', ..., prepare_maps=True)``,
as the panel's worker calls it) on a section, then times what the viewer does next with the
maps it shows (every n-th pixel of a map too large to compute at once): the first gene and
the next genes (engine only, no redraw), and a region at full resolution (the Gene explorer's
*Map at full resolution in this view*: ``maps.whole.window``). Prints one table; the run folder
is kept for the screenshot script (``docs/scripts/make_full_resolution_screenshot.py``).

    python benchmarks/bench_fine_map_panel.py ../shared/data/her2st/C3 --stride-um 2 \\
        --out /tmp/c3_2um --region-um 1500 2500 3100 4100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_sample, measure, print_table  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", help="a section folder, or 'synthetic'")
    ap.add_argument("--stride-um", type=float, default=2.0)
    ap.add_argument("--out", type=Path, required=True, help="the run folder (must not exist)")
    ap.add_argument("--genes", nargs="+", default=["ERBB2", "COL1A1", "MUCL1", "CD74"])
    ap.add_argument("--region-um", type=float, nargs=4, default=None,
                    metavar=("ROW0", "ROW1", "COL0", "COL1"),
                    help="a region to compute at full resolution, micrometres")
    ap.add_argument("--trust", action="store_true", help="with the trust check (default: off)")
    args = ap.parse_args(argv)

    from napari_trihrge.geometry import DEFAULT_DENSITY_FACTOR
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.tl._maps import display_cache_bytes, displayed_maps
    from napari_trihrge.workflows.runs import run_task

    adata = load_sample(args.sample)
    rows = []
    with measure() as m:
        out = run_task("enhance", adata, args.out, config=RunConfig(), prepare_maps=True,
                       factor=DEFAULT_DENSITY_FACTOR, stride_um=args.stride_um,
                       trust=args.trust)
    whole = out.result.maps
    shown = displayed_maps(whole)
    timings = getattr(out.result, "timings_s", None) or {}
    consistency = out.result.metrics.get("consistency") or {}
    rows.append({"step": "run_task(prepare_maps=True)", "wall s": f"{m.wall_s:.1f}",
                 "peak RSS MiB": f"{m.peak_rss_mb:.0f}",
                 "what": f"{whole.n_locations:,} locations at {whole.stride_um:g} um; shown: "
                         f"one in {round(shown.stride_um / whole.stride_um)} "
                         f"({shown.n_locations:,} locations, ready: {shown.ready()}); "
                         f"viewer cache {display_cache_bytes() / 2**30:.1f} GiB; consistency "
                         f"{consistency.get('pcc_mean', float('nan')):.5f}; stages "
                         + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()
                                     if isinstance(v, (int, float)))})
    genes = [g for g in args.genes if g in shown.gene_names] or list(shown.gene_names[:4])
    for gene in genes:
        with measure() as m:
            shown[gene]
        rows.append({"step": f"shown maps: {gene}", "wall s": f"{m.wall_s:.3f}",
                     "peak RSS MiB": f"{m.peak_rss_mb:.0f}", "what": "engine, no redraw"})
    if args.region_um is not None:
        r0, r1, c0, c1 = args.region_um
        region = whole.whole.window((r0, r1), (c0, c1))
        # as the viewer's map worker does: a cache of the viewer's size, every chunk computed
        region.cache_bytes = max(region.cache_bytes, display_cache_bytes())
        for k, gene in enumerate(genes):
            start = time.perf_counter()
            with measure() as m:
                if k == 0:
                    region.warm()
                region.compute([region.gene_index(gene)], with_std=True)
            rows.append({"step": f"region {r0:g}-{r1:g} x {c0:g}-{c1:g} um: {gene}",
                         "wall s": f"{time.perf_counter() - start:.2f}",
                         "peak RSS MiB": f"{m.peak_rss_mb:.0f}",
                         "what": f"{region.n_locations:,} locations at {region.stride_um:g} um, "
                                 "map and spread" + (" (its networks first)" if k == 0
                                                     else "")})
    print_table(rows)


if __name__ == "__main__":
    main()
