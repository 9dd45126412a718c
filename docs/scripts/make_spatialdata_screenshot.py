"""Enhance the synthetic sample, write the result as a SpatialData store, open the store in
napari-spatialdata's own widget and save a screenshot to docs/images/spatialdata_napari.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/make_spatialdata_screenshot.py

Needs the spatialdata extra (``pip install "napari-trihrge[spatialdata]"``). A few minutes on a
2-core CPU (compact model, few epochs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from make_screenshots import wait_until  # this script's folder is on sys.path when it runs

OUT = Path(__file__).resolve().parents[1] / "images" / "spatialdata_napari.png"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--gene", default="COL1A1")
    args = ap.parse_args(argv)

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.tl import RunConfig
    from napari_trihrge.workflows.runs import run_enhance

    work = Path(tempfile.mkdtemp(prefix="trihrge-sd-"))
    adata = synthetic_sample(seed=0, n_genes=60)
    cfg = RunConfig(n_top_genes=60, model_preset="compact", train={"max_epochs": args.epochs})
    run_enhance(adata, work / "run", factor=2, stride_um=16.0, config=cfg,
                spatialdata_store=True)
    store = work / "run" / "spatialdata.zarr"
    print("store:", store)

    import napari
    import spatialdata as sd
    from napari_spatialdata import Interactive
    from qtpy.QtWidgets import QApplication

    try:  # a deprecation toast about the Qt binding would sit on the screenshot
        import napari._qt.qt_main_window as qmw

        qmw.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    viewer = napari.Viewer(title="napari-spatialdata: napari-trihrge results")
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    interactive = Interactive(sd.read_zarr(store), headless=True)
    for n, name in enumerate(("he_image", "enhanced_maps", "spots"), start=1):
        interactive.add_element(name, "global")
        wait_until(app, lambda n=n: len(viewer.layers) == n, 300, name)
    maps = viewer.layers["enhanced_maps"]
    genes = list(sd.read_zarr(store).images["enhanced_maps"]["scale0"]["image"].coords["c"].values)
    viewer.dims.set_current_step(0, genes.index(args.gene))
    level0 = np.asarray(maps.data[0][genes.index(args.gene)])
    finite = level0[np.isfinite(level0)]
    maps.colormap = "magma"
    maps.contrast_limits = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99)))
    maps.opacity = 0.65
    spots = viewer.layers["spots"]
    spots.size = 55.0  # the spot diameter in micrometres (world units of 'global')
    spots.face_color = "transparent"
    spots.border_color = "white"
    spots.border_width = 0.08
    spots.opacity = 0.8
    viewer.layers.selection.active = maps
    viewer.reset_view()
    wait_until(app, lambda: True, 5, "redraw")
    time.sleep(1.0)
    wait_until(app, lambda: True, 5, "redraw")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    from PIL import Image

    im = Image.open(args.out).convert("RGB")
    if im.width > 1400:
        im = im.resize((1400, round(im.height * 1400 / im.width)), Image.LANCZOS)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                dither=Image.Dither.NONE).save(args.out, optimize=True)
    print("saved", args.out)
    viewer.close()


if __name__ == "__main__":
    main()
