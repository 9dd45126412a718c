"""Cells: nuclei quality and per-cell expression on the synthetic sample; speed on a real section.

``synthetic``: for each seed, nuclei of ``tl.cells`` against the drawn truth (detection F1 at
IoU >= 0.5, PQ, AJI), then ``tl.enhance`` (8 um map) and each cell's expression against the
per-cell truth, next to "each cell gets its spot's interpolated value" (inverse-distance kNN of
the measured spots at the cell centroid, k=6 and k=12), on the same genes and cells. Seed 0 was
used to choose the segmentation defaults; report the other seeds apart from it.

``section``: a whole real section (her2st): time and peak memory of nuclei + cells +
measurements, then of averaging 300 gene maps at 8 um over the cells (random map values: the
cost, not a prediction), nuclei per mm^2 of tissue, an overlay PNG of a crop, and how time and
memory grow with area (the top quarter, half and whole of the section).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_cells.py synthetic --seeds 0 1 2
    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/bench_cells.py section ../shared/data/her2st/C2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, measure  # noqa: E402


def synthetic(seeds, out_dir: Path, nuclei_only: bool = False) -> None:
    import napari_trihrge as th
    from napari_trihrge.evaluation import cell_scores
    from napari_trihrge.geometry import xy_px_to_rc_um
    from napari_trihrge.metrics import instance_scores

    nuc_rows, expr_rows = [], []
    for seed in seeds:
        adata = th.datasets.synthetic_sample(seed=seed)
        truth = th.datasets.truth_nuclei(adata)
        with measure() as m:
            res = th.tl.cells(adata)
        s = instance_scores(truth, res.nuclei)
        nuc_rows.append({"seed": seed, "n_true": s["n_true"], "n_found": s["n_pred"],
                         "f1_iou50": s["f1"], "precision": s["precision"], "recall": s["recall"],
                         "sq": s["sq"], "pq": s["pq"], "aji": s["aji"], "cells_s": m.wall_s})
        print(format_table(nuc_rows[-1:]), flush=True)
        if nuclei_only:
            continue
        cfg = th.tl.RunConfig(seed=seed)
        with measure() as m:
            enh = th.tl.enhance(adata, factor=4, stride_um=8.0, config=cfg, trust=False)
        with measure() as mc:
            cres = th.tl.cells(adata, maps=enh.maps)
        spots = enh.spots
        rc = xy_px_to_rc_um(np.asarray(spots.obsm["spatial"]), adata.uns["trihrge"]["um_per_px"])
        x = spots.X.toarray() if hasattr(spots.X, "toarray") else np.asarray(spots.X)
        summary, table = cell_scores(adata, cres.cells, cres.cell_labels, cres.um_per_px, rc, x)
        row = {"seed": seed, "cells": summary["n_cells_scored"], "genes": summary["n_genes_scored"],
               "pcc_cells": summary["pcc_mean"],
               "pcc_knn6": summary["baseline_knn6_pcc_mean"],
               "pcc_knn12": summary["baseline_knn12_pcc_mean"],
               "cells_vs_spot": cres.metrics.get("cells_vs_spot_pcc_mean"),
               "map_vs_spot": enh.metrics.get("consistency", {}).get("pcc_mean"),
               "enhance_s": m.wall_s, "cells_s": mc.wall_s}
        if "gene_class" in table:
            for cls, sub in table.groupby("gene_class"):
                row[f"{cls}"] = f"{sub['pcc'].mean():.3f} vs {max(sub['pcc_knn6'].mean(), sub['pcc_knn12'].mean()):.3f}"
        expr_rows.append(row)
        print(format_table(expr_rows[-1:]), flush=True)
        table.to_csv(out_dir / f"cells_synthetic_seed{seed}_per_gene.csv")
    print("\nNuclei against the drawn truth (seed 0 chose the defaults)")
    print(format_table(nuc_rows))
    print("\nPer-cell expression against the per-cell truth (fair PCC, mean over genes); "
          "by gene class: cells vs the better kNN")
    print(format_table(expr_rows))


def section(path: str, out_dir: Path, crop_px: int, growth: bool = True,
            labels_on_disk: bool = False) -> None:
    from PIL import Image
    from skimage.segmentation import find_boundaries

    import napari_trihrge as th
    from napari_trihrge import nuclei
    from napari_trihrge.tissue import tissue_mask_for
    from napari_trihrge.tl._cells import average_maps_over_cells, cell_map_weights

    adata = th.io.read(path)
    image = th.io.get_image(adata)
    px = image.um_per_px
    rows = []
    cpu0 = time.process_time()
    store = None
    if labels_on_disk:
        import tempfile

        store = Path(tempfile.mkdtemp(dir=out_dir)) / "labels.zarr"
    with measure() as m:
        res = th.tl.cells(adata, labels_store=store)
    where = "labels on disk (zarr)" if store else "labels in memory"
    rows.append({"what": f"nuclei + cells + measurements, whole section, {where}",
                 "image_px": f"{image.shape_px[0]}x{image.shape_px[1]}", "um_per_px": px,
                 "cells": res.metrics["n_cells"],
                 "nuclei_per_mm2_tissue": res.metrics["cells_per_mm2_tissue"],
                 "wall_s": m.wall_s, "cpu_s": time.process_time() - cpu0,
                 "peak_rss_mb": m.peak_rss_mb,
                 **{f"{k}_s": v for k, v in res.timings_s.items() if k != "expression"}})
    # averaging maps over the cells: its cost, with random values on an 8 um grid
    h_um, w_um = image.shape_rc_um
    grid = (int(np.ceil(h_um / 8.0)), int(np.ceil(w_um / 8.0)))
    rng = np.random.default_rng(0)
    maps = th.tl.DenseMaps(values=rng.random((300, *grid), dtype=np.float32), stride_um=8.0,
                           origin_rc_um=np.zeros(2), gene_names=[f"g{i}" for i in range(300)],
                           mask=np.ones(grid, dtype=bool))
    cpu0 = time.process_time()
    with measure() as m:
        w = cell_map_weights(res.cell_labels, px, maps)
        x = average_maps_over_cells(w, maps)
    rows.append({"what": "300 gene maps (8 um) averaged over the cells", "cells": x.shape[0],
                 "wall_s": m.wall_s, "cpu_s": time.process_time() - cpu0,
                 "peak_rss_mb": m.peak_rss_mb})
    print(format_table(rows), flush=True)
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if store is not None:
        import shutil

        shutil.rmtree(store.parent, ignore_errors=True)
    if not growth:
        return
    # overlay of a crop at the tissue's densest nuclei
    tissue, _ = tissue_mask_for(image)
    cen = res.cells.obs[["row_um", "col_um"]].to_numpy() / px
    hist, er, ec = np.histogram2d(cen[:, 0], cen[:, 1], bins=[20, 20])
    i, j = np.unravel_index(np.argmax(hist), hist.shape)
    r0 = int(np.clip((er[i] + er[i + 1]) / 2 - crop_px / 2, 0, image.shape_px[0] - crop_px))
    c0 = int(np.clip((ec[j] + ec[j + 1]) / 2 - crop_px / 2, 0, image.shape_px[1] - crop_px))
    crop = np.asarray(image.array[r0:r0 + crop_px, c0:c0 + crop_px]).copy()
    nuc = res.nuclei[r0:r0 + crop_px, c0:c0 + crop_px]
    cel = res.cell_labels[r0:r0 + crop_px, c0:c0 + crop_px]
    crop[find_boundaries(cel, mode="inner")] = [255, 220, 0]
    crop[find_boundaries(nuc, mode="inner")] = [0, 255, 0]
    name = Path(path).name
    png = out_dir / f"cells_{name}_crop.png"
    Image.fromarray(crop).save(png)
    print(f"overlay: {png} (rows {r0}.., cols {c0}.., {crop_px} px; green nuclei, yellow cells)")
    # growth with area: the top quarter, half and whole of the section (full width), the whole
    # chain each time: nuclei, cells, measurements and 300 gene maps averaged over the cells
    scale_rows = []
    h_px = image.shape_px[0]
    for share in (0.25, 0.5, 1.0):
        n_rows = int(round(h_px * share))
        crop = image.array[:n_rows]
        crop_tissue = tissue[:int(np.ceil(tissue.shape[0] * share))]
        cpu0 = time.process_time()
        with measure() as m:
            seg = nuclei.segment_image(crop, px, tissue=crop_tissue)
            cells = nuclei.expand_to_cells(seg.nuclei, px)
            nuclei.label_measurements(cells, px)
            nuclei.label_measurements(seg.nuclei, px, image=crop)
            w = cell_map_weights(cells, px, maps)
            average_maps_over_cells(w, maps)
        area_mm2 = n_rows * image.shape_px[1] * (px / 1000) ** 2
        scale_rows.append({"part": f"top {share:g}", "image_px": f"{n_rows}x{image.shape_px[1]}",
                           "area_mm2": area_mm2, "nuclei": seg.n_nuclei, "wall_s": m.wall_s,
                           "cpu_s": time.process_time() - cpu0,
                           "peak_rss_mb": m.peak_rss_mb})
        print(format_table(scale_rows[-1:]), flush=True)
    print("\nGrowth with area (nuclei + cells + measurements + 300 maps over the cells; "
          "tissue mask as in tl.cells; peak RSS includes the whole H&E held in memory)")
    print(format_table(scale_rows))
    print(f"load average at the end: {os.getloadavg()} on {os.cpu_count()} cores")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("synthetic")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--nuclei-only", action="store_true", help="skip enhance and the cells' "
                   "expression")
    p = sub.add_parser("section")
    p.add_argument("path")
    p.add_argument("--crop-px", type=int, default=700)
    p.add_argument("--no-growth", action="store_true", help="skip the growth-with-area crops")
    p.add_argument("--labels-on-disk", action="store_true", help="write the whole-slide label "
                   "images to a zarr folder as they are made (tl.cells labels_store)")
    ap.add_argument("--out", default="bench-cells-out", help="folder for CSVs and PNGs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "synthetic":
        synthetic(args.seeds, out, nuclei_only=args.nuclei_only)
    else:
        section(args.path, out, args.crop_px, growth=not args.no_growth,
                labels_on_disk=args.labels_on_disk)


if __name__ == "__main__":
    main()
