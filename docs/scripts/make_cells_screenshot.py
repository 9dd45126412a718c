"""Drive napari to find the cells of the synthetic sample and colour them by a gene; save
docs/images/cells_napari_gene.png (cells coloured by ERBB2, a clicked cell described) and
docs/images/cells_region_table.png (a region compared on cells in the Region explorer).

    xvfb-run -a -s "-screen 0 1680x1020x24" python docs/scripts/make_cells_screenshot.py

Opens the synthetic sample, runs Enhance (compact model, few epochs, 8 um map) and the Cells
panel's Find cells, exactly as from the Plugins menu. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from make_screenshots import compact_png, new_viewer, wait_until  # this folder is on sys.path

OUT = Path(__file__).resolve().parents[1] / "images"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--gene", default="ERBB2")
    ap.add_argument("--view-um", type=float, default=420.0, help="width of the view")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    app, viewer = new_viewer("napari-trihrge: cells")
    win = viewer.window
    docks, widgets = {}, {}
    for name in ("Sample", "Train and enhance", "Cells", "Region explorer"):
        dock, widget = win.add_plugin_dock_widget("napari-trihrge", name, tabify=bool(docks))
        docks[name], widgets[name] = dock, widget
    sw, tw, cw, rx = (widgets[n] for n in ("Sample", "Train and enhance", "Cells",
                                           "Region explorer"))

    def shot(path: Path, dock: str) -> None:
        docks[dock].show()
        docks[dock].raise_()
        wait_until(app, lambda: True, 5, "redraw")
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        compact_png(path)
        print("saved", path)

    sw.device_combo.setCurrentText("cpu")
    sw.open_synthetic()
    wait_until(app, lambda: len(viewer.layers) == 2, 300, "the sample to open")
    tw.set_task("enhance")
    tw.stride_spin.setValue(8.0)
    tw.genes_spin.setValue(60)
    tw.epochs_spin.setValue(args.epochs)
    tw.config_form["model_preset"].value = "compact"
    tw.config_form["extra_genes"].value = args.gene
    tw.start()
    wait_until(app, lambda: not tw.running, 3600, "the enhance run")
    assert tw.last_outcome.status == "ok", tw.last_outcome.message

    cw.start()
    wait_until(app, lambda: not cw.running, 1800, "the cells")
    assert cw.last_outcome.status == "ok", cw.last_outcome.message
    cw.session.show_gene(args.gene)
    (cells_layer,) = cw.cells_layers()
    for layer in viewer.layers:  # the H&E under the cells: the other results hidden
        kind = (layer.metadata or {}).get("trihrge", {}).get("kind")
        layer.visible = kind in ("image", "cells") or bool(getattr(layer, "rgb", False))
    cells_layer.opacity = 0.75
    # the view: centred on the cell with the highest value, args.view_um wide
    cells = cells_layer.metadata["cells"]
    x = np.asarray(cells[:, args.gene].X).ravel()
    k = int(np.nanargmax(x))
    centre = cells.obs.iloc[k][["row_um", "col_um"]].to_numpy(dtype=float)
    centre = centre + np.asarray(cells_layer.translate, dtype=float)[-2:]
    from napari_trihrge.napari._qt._gene_explorer import _camera

    viewer.reset_view()  # the whole section fills the canvas: zoom in from there
    camera = _camera(viewer)
    extent_um = max(cells_layer.data.shape) * float(cells_layer.scale[-1])
    camera.zoom = camera.zoom * extent_um / args.view_um
    camera.center = tuple(centre)
    viewer.layers.selection.active = cells_layer
    cw._describe(cells_layer, SimpleNamespace(position=tuple(centre)))
    shot(args.out / "cells_napari_gene.png", "Cells")

    # a region around the view's centre, compared on cells
    h = args.view_um / 4
    regions = rx.regions_layer(create=True)
    regions.add_rectangles([np.array([centre - h, [centre[0] - h, centre[1] + h], centre + h,
                                      [centre[0] + h, centre[1] - h]])])
    rx.unit_combo.setCurrentIndex(rx.unit_combo.findData("cells"))
    stats = rx.compute()
    assert stats is not None and not stats.table.empty
    shot(args.out / "cells_region_table.png", "Region explorer")
    viewer.close()


if __name__ == "__main__":
    main()
