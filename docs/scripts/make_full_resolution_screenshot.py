"""Drive napari to open a fine run (a map shown at every n-th pixel), zoom in on a region and
press the Gene explorer's "Map at full resolution in this view"; save
docs/images/full_resolution_view.png (the region at the map's own pixel size over the coarser
whole section) and print how long the region's first gene and the next genes took.

    trihrge enhance ../shared/data/her2st/C3 --stride-um 4 --no-trust --out c3_4um
    xvfb-run -a -s "-screen 0 1680x1020x24" python docs/scripts/make_full_resolution_screenshot.py \\
        c3_4um --centre-um 2000 3600

The run folder is opened as File > Open does; the button is pressed as a user would (the
camera set to the region first).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from make_screenshots import compact_png, new_viewer, wait_until  # this folder is on sys.path

OUT = Path(__file__).resolve().parents[1] / "images"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder whose map the viewer shows coarser")
    ap.add_argument("--gene", default="ERBB2")
    ap.add_argument("--next-genes", nargs="+", default=["COL1A1", "MUCL1", "CD74"])
    ap.add_argument("--centre-um", type=float, nargs=2, default=(2000.0, 3600.0),
                    metavar=("ROW", "COL"), help="the region's centre, micrometres")
    ap.add_argument("--view-um", type=float, default=1000.0, help="width of the region")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from napari_trihrge.napari._qt._gene_explorer import _camera, _canvas_size_px

    app, viewer = new_viewer("napari-trihrge: a region at full resolution")
    dock, explorer = viewer.window.add_plugin_dock_widget("napari-trihrge", "Gene explorer")

    def map_layers():
        return [lay for lay in viewer.layers
                if (lay.metadata or {}).get("trihrge", {}).get("kind") == "map"]

    def ready():
        return all(not lay.metadata["trihrge"].get("pending") for lay in map_layers())

    viewer.open(str(args.run), plugin="napari-trihrge")
    t0 = time.perf_counter()
    wait_until(app, ready, 1800, "the map of the run")
    print(f"the whole section's first map: {time.perf_counter() - t0:.1f} s")
    assert explorer.show_gene(args.gene)
    wait_until(app, ready, 600, "the gene")
    coarse = map_layers()[0]
    for layer in viewer.layers:  # the H&E and the maps: the spots hidden
        layer.visible = layer is viewer.layers[0] or layer in map_layers()
    camera = _camera(viewer)
    camera.center = tuple(args.centre_um)
    camera.zoom = float(_canvas_size_px(viewer)[1]) / args.view_um
    t0 = time.perf_counter()
    region = explorer.show_full_resolution()
    assert region is not None, "the view holds too many locations: give a smaller --view-um"
    wait_until(app, ready, 1800, "the region")
    maps = region.metadata["maps"]
    print(f"the region: {maps.n_locations:,} locations at {maps.stride_um:g} um "
          f"(the whole section at {coarse.metadata['maps'].stride_um:g} um): "
          f"{time.perf_counter() - t0:.1f} s to its first map")
    # the view a little wider than the region, so the coarser section shows around it
    camera.zoom = float(_canvas_size_px(viewer)[1]) / (1.6 * args.view_um)
    wait_until(app, lambda: True, 5, "redraw")
    path = args.out / "full_resolution_view.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    compact_png(path)
    print("saved", path)
    names, last = list(maps.gene_names), args.gene
    for gene in [g for g in args.next_genes if g in names]:
        t0 = time.perf_counter()
        assert explorer.show_gene(gene)
        wait_until(app, ready, 600, gene)
        app.processEvents()
        took = time.perf_counter() - t0
        shown = [lay.name for lay in map_layers() if lay.visible]
        print(f"next gene {gene}: {took * 1000:.0f} ms, drawn on {shown}")
        last = gene
    assert np.all([lay.metadata["trihrge"]["gene"] == last for lay in map_layers()])
    viewer.close()


if __name__ == "__main__":
    main()
