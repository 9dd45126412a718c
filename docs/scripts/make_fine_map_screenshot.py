"""Drive napari to open a 2 um run of her2st C3 and a region of it exported at 2 um; save
docs/images/fine_map_preview.png (the whole section, shown at one pixel in 3) and
docs/images/fine_map_region.png (zoomed in on the exported region's edge: the region at 2 um,
opaque, on the right; the preview at 6 um over the H&E on the left).

    trihrge enhance ../shared/data/her2st/C3 --stride-um 2 --no-trust --out c3_2um
    trihrge export-maps c3_2um --genes ERBB2 --window-um 1500 2500 3100 4100 --out tumour.ome.zarr
    xvfb-run -a -s "-screen 0 1680x1020x24" python docs/scripts/make_fine_map_screenshot.py \\
        c3_2um tumour.ome.zarr

The run folder is opened as File > Open does (its map computed in the background), the region
with the plugin's reader.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from make_screenshots import compact_png, new_viewer, wait_until  # this folder is on sys.path

OUT = Path(__file__).resolve().parents[1] / "images"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder mapped at 2 um")
    ap.add_argument("region", type=Path, help="an OME-Zarr map of a region (export-maps)")
    ap.add_argument("--gene", default="ERBB2")
    ap.add_argument("--view-um", type=float, default=450.0, help="width of the zoomed view")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    app, viewer = new_viewer("napari-trihrge: a 2 um map")
    dock, explorer = viewer.window.add_plugin_dock_widget("napari-trihrge", "Gene explorer")

    def shot(path: Path) -> None:
        wait_until(app, lambda: True, 5, "redraw")
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        compact_png(path)
        print("saved", path)

    viewer.open(str(args.run), plugin="napari-trihrge")

    def map_layer():
        return next(lay for lay in viewer.layers
                    if (lay.metadata or {}).get("trihrge", {}).get("kind") == "map")

    wait_until(app, lambda: not map_layer().metadata["trihrge"].get("pending"), 1800,
               "the map of the run")
    assert explorer.show_gene(args.gene)
    wait_until(app, lambda: not map_layer().metadata["trihrge"].get("pending"), 600, "the gene")
    viewer.reset_view()
    shot(args.out / "fine_map_preview.png")

    viewer.open(str(args.region), plugin="napari-trihrge")
    region = viewer.layers[-1]
    shown = map_layer()
    region.colormap = shown.colormap
    region.contrast_limits = shown.contrast_limits
    region.opacity = 1.0  # drawn over the preview: the H&E shows through the preview only
    for layer in viewer.layers:  # the H&E and the two maps: the spots hidden
        layer.visible = layer is region or layer is map_layer() or layer is viewer.layers[0]
    # the view: the region's left edge, the preview beside it, args.view_um wide
    scale = np.asarray(region.scale[-2:], dtype=float)
    origin = np.asarray(region.translate[-2:], dtype=float)
    size = np.asarray(region.data[0].shape[-2:] if isinstance(region.data, list)
                      else region.data.shape[-2:], dtype=float) * scale
    from napari_trihrge.napari._qt._gene_explorer import _camera

    camera = _camera(viewer)
    viewer.reset_view()
    camera.center = tuple(origin + size * np.array([0.5, 0.0]))
    camera.zoom = camera.zoom * float(max(shown.data.shape[-2:]) * shown.scale[-1]) / (
        args.view_um)
    shot(args.out / "fine_map_region.png")
    viewer.close()


if __name__ == "__main__":
    main()
