"""Drive napari through the user guide and save its screenshots to docs/screenshots/.

Steps (docs/user-guide.md): open the synthetic sample, run a recovery (scores, best genes), run
Enhance (dense map), pick a gene, pick a gene that has no map, compare side by side, draw two
regions and read their statistics, open a second section beside the first. Then, when the
shared data is there (``../shared/data/her2st/C3``), a her2st session: open C3, a short Enhance
with the default settings (ERBB2 mapped through the default marker panel), ERBB2 shown, a region
around the ERBB2-high tumour and its table (``her2st_*.png``).

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/scripts/make_screenshots.py

Takes a few minutes on a laptop CPU (compact model, few epochs; the her2st part longer). The
widgets are opened through the plugin's npe2 manifest, exactly as from the Plugins menu.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "screenshots"
HER2ST_C3 = Path(__file__).resolve().parents[3] / "shared" / "data" / "her2st" / "C3"


def wait_until(app, cond, timeout_s: float, what: str) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"timed out waiting for {what}")
    for _ in range(5):
        app.processEvents()


def compact_png(path: Path, max_width: int = 1400) -> None:
    """Shrink a screenshot for the repository: at most ``max_width`` px wide, 256 colours."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    im = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(path, optimize=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--stride-um", type=float, default=12.0)
    ap.add_argument("--only", choices=["synthetic", "her2st"], default=None,
                    help="make one of the two sessions' screenshots")
    ap.add_argument("--her2st", type=Path, default=HER2ST_C3, help="the her2st section folder")
    ap.add_argument("--her2st-epochs", type=int, default=10)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="feature cache of the her2st run (e.g. one a CLI run on C3 filled)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only != "her2st":
        synthetic_session(args)
    if args.only != "synthetic":
        if args.her2st.is_dir():
            her2st_session(args)
        else:
            print(f"no her2st screenshots: {args.her2st} not found")


def new_viewer(title: str):
    """The Qt application and a 1680 x 1020 napari viewer for screenshots."""
    import napari
    from qtpy.QtWidgets import QApplication

    try:  # a deprecation toast about the Qt binding would sit on every screenshot
        import napari._qt.qt_main_window as qmw

        qmw.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title=title)
    viewer.window.resize(1680, 1020)
    return app, viewer


def open_viewer(args, title: str):
    """A viewer with the TriHRGE panels tabbed, and ``shot(name, dock, canvas_only)``."""
    app, viewer = new_viewer(title)
    win = viewer.window
    docks = {}
    widgets = {}
    for name in ("Sample", "Train and enhance", "Gene explorer", "Region explorer"):
        dock, widget = win.add_plugin_dock_widget("napari-trihrge", name, tabify=bool(docks))
        docks[name], widgets[name] = dock, widget

    def shot(name: str, dock: str | None = None, canvas_only: bool = False) -> None:
        if dock is not None:
            docks[dock].show()
            docks[dock].raise_()
        for _ in range(10):
            app.processEvents()
        path = args.out / name
        viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
        compact_png(path)
        print("saved", path)

    return app, viewer, docks, widgets, shot


def synthetic_session(args) -> None:
    app, viewer, docks, widgets, shot = open_viewer(args, "napari-trihrge user guide")
    win = viewer.window
    sw, tw = widgets["Sample"], widgets["Train and enhance"]
    ge, rx = widgets["Gene explorer"], widgets["Region explorer"]

    # 1. open the sample ------------------------------------------------------------------
    sw.device_combo.setCurrentText("cpu")
    sw.open_synthetic()
    wait_until(app, lambda: len(viewer.layers) == 2, 300, "the sample to open")
    viewer.reset_view()
    shot("01_open_sample.png", "Sample")

    # 2. recovery: hide half of the spots, predict them, score them ------------------------
    tw.set_task("recovery")
    tw.genes_spin.setValue(300)
    tw.epochs_spin.setValue(args.epochs)
    tw.config_form["model_preset"].value = "compact"
    tw.start()
    wait_until(app, lambda: len(tw.loss.epochs) >= 3, 900, "training to start")
    activity = getattr(win._qt_window, "_activity_dialog", None)  # napari's progress bars
    if activity is not None:
        activity.show()
        activity.move_to_bottom_right()
    shot("02_training_progress.png", "Train and enhance")
    if activity is not None:
        activity.hide()
    wait_until(app, lambda: not tw.running, 1800, "the recovery run")
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    shot("03_recovery_scores.png", "Train and enhance")

    # 3. enhance: denser spots and a dense map -----------------------------------------------
    tw.set_task("enhance")
    tw.stride_spin.setValue(args.stride_um)
    # fewer genes than the sample has, so step 4b can show a gene without a map
    tw.genes_spin.setValue(200)
    tw.config_form["extra_genes"].value = "ERBB2"
    tw.start()
    wait_until(app, lambda: not tw.running, 3600, "the enhance run")
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    viewer.reset_view()
    shot("04_enhanced_map.png", "Train and enhance")

    # 4. pick a gene -------------------------------------------------------------------------
    ge.search.setText("ERBB2")
    ge._on_enter()
    shot("05_gene_explorer.png", "Gene explorer")
    shot("05_gene_erbb2_canvas.png", canvas_only=True)

    # 4b. a gene of the sample that was not modelled: the map is hidden, the canvas says why --
    modelled = set(ge.session.maps().gene_names)
    unmodelled = next(g for g in map(str, ge.session.adata.var_names) if g not in modelled)
    ge.search.setText(unmodelled)
    ge._on_enter()
    shot("05b_gene_without_map.png", "Gene explorer")
    ge.search.setText("ERBB2")
    ge._on_enter()

    # 5. compare side by side ----------------------------------------------------------------
    ge.side_check.setChecked(True)
    shot("06_side_by_side.png", "Gene explorer")
    ge.side_check.setChecked(False)
    viewer.reset_view()

    # 6. draw a region around a tumour area and compare inside vs outside --------------------
    from napari_trihrge.napari import layers as L

    adata = ge.session.adata
    rc = L.spots_rc_um(adata)
    e = L.gene_expression(adata, ["ERBB2"])["ERBB2"].to_numpy()
    layer = draw_high_region(rx, rc, e, radius_um=450, margin_um=60)
    # a second, small region: too few spots for a test, and the table says so
    c = rc[np.argmin(e)]
    layer.add_polygons([np.array([c - 60, [c[0] - 60, c[1] + 60], c + 60, [c[0] + 60, c[1] - 60]])])
    layer.mode = "pan_zoom"
    rx.compute()
    shot("07_region_table.png", "Region explorer")

    # 7. a second section opens beside the first, with its own scale and trust --------------
    from napari_trihrge.napari._sample_data import synthetic_adata

    second = synthetic_adata(1).copy()
    second.uns["trihrge"] = {**second.uns["trihrge"], "sample": "synthetic section 2"}
    for data, kwargs, kind in L.sample_layers(second, source="synthetic-section-2"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    wait_until(app, lambda: ge.session.adata is second, 60, "the second section")
    ge.search.setText("ERBB2")
    ge._on_enter()
    layer.visible = False
    viewer.reset_view()
    shot("08_two_sections.png", "Gene explorer")
    viewer.close()


def draw_high_region(rx, rc_um, values, *, radius_um: float, margin_um: float,
                     quantile: float = 0.92):
    """Draw a rectangle around the spots above the ``quantile`` of ``values`` near their median
    centre (the tumour for ERBB2) in the Region explorer; returns its regions layer."""
    top = rc_um[values >= np.quantile(values, quantile)]
    centre = np.median(top, axis=0)
    near = top[np.linalg.norm(top - centre, axis=1) < radius_um]
    lo, hi = near.min(axis=0) - margin_um, near.max(axis=0) + margin_um
    rx.start_drawing()
    layer = rx.regions_layer()
    layer.add_polygons([np.array([lo, [lo[0], hi[1]], hi, [hi[0], lo[1]]])])
    return layer


def her2st_session(args) -> None:
    """her2st C3 as a pathologist opens it: Enhance with the defaults (a short run), ERBB2 (a
    marker-panel gene, not among the variable ones) shown, a region around the tumour."""
    import dataclasses

    from napari_trihrge.napari import layers as L

    app, viewer, docks, widgets, shot = open_viewer(args, "napari-trihrge: her2st C3")
    sw, tw = widgets["Sample"], widgets["Train and enhance"]
    ge, rx = widgets["Gene explorer"], widgets["Region explorer"]
    sw.device_combo.setCurrentText("cpu")
    sw.open_sample(str(args.her2st))
    wait_until(app, lambda: ge.session.adata is not None, 1800, "C3 to open")
    wait_until(app, lambda: not any("loading" in lay.name for lay in viewer.layers), 1800,
               "the full-resolution H&E")
    viewer.reset_view()
    shot("her2st_01_open_c3.png", "Sample")

    tw.set_task("enhance")
    tw.stride_spin.setValue(16.0)
    tw.epochs_spin.setValue(args.her2st_epochs)
    run_dir = tempfile.mkdtemp(prefix="trihrge-her2st-")  # the maps on disk, not in memory
    tw.out_edit.setText(run_dir)
    tw.overwrite_check.setChecked(True)
    if args.cache_dir is not None:  # the panel's settings, with a feature cache
        panel_config = tw.make_config
        tw.make_config = lambda: dataclasses.replace(panel_config(),
                                                     cache_dir=str(args.cache_dir))
    tw.start()
    wait_until(app, lambda: not tw.running, 5400, "the enhance run on C3")
    assert tw.last_outcome.status == "ok", tw.last_outcome.message
    ge.search.setText("ERBB2")
    ge._on_enter()
    viewer.reset_view()
    shot("her2st_02_erbb2_map.png", "Train and enhance")
    shot("her2st_03_erbb2_gene_explorer.png", "Gene explorer")

    adata = ge.session.adata
    e = L.gene_expression(adata, ["ERBB2"])["ERBB2"].to_numpy()
    layer = draw_high_region(rx, L.spots_rc_um(adata), e, radius_um=700, margin_um=100,
                             quantile=0.8)  # about 35 spots: ERBB2 is high across most of C3
    layer.mode = "pan_zoom"
    rx.compute()
    shot("her2st_04_region_table.png", "Region explorer")
    viewer.close()
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
