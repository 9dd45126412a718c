"""Does the viewer stay responsive while a large JPEG H&E opens?

Writes a her2st-like section (a few spots) whose H&E is a textured JPEG of ``--size`` pixels per
side, opens it in a real napari viewer the way a drop does (the plugin's reader in the viewer's
thread), and reports: how long ``viewer.open`` kept the event loop (it returns with the spots and
a preview), how long the full image took to arrive from the background decode, and how the event
loop ticked meanwhile (a 10 ms QTimer: ticks counted and the longest gap between two ticks).
Needs a display (run under ``xvfb-run`` on a server).

    xvfb-run -a python benchmarks/bench_open_large_image.py --size 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sample_folders import make_large_jpeg_section  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000, help="JPEG side in pixels")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    args = ap.parse_args(argv)

    import napari
    from _common import print_table
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_trihrge.napari._qt import _image_loader

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        section = make_large_jpeg_section(Path(tmp) / "BIG", args.size)
        write_s = time.perf_counter() - t
        viewer = napari.Viewer(show=True)
        stamps: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
        timer.start(10)
        t0 = time.perf_counter()
        viewer.open(str(section), plugin="napari-trihrge")
        t1 = time.perf_counter()
        n_open = len(stamps)
        while _image_loader.ACTIVE and time.perf_counter() - t1 < args.timeout_s:
            QApplication.processEvents()
            time.sleep(0.005)
        t2 = time.perf_counter()
        timer.stop()
        after = [s for s in stamps if s >= t1]
        gaps = np.diff([t1, *after, t2])
        full = viewer.layers[0]
        print_table([{
            "JPEG side (px)": args.size,
            "writing it (s)": round(write_s, 1),
            "viewer.open (s)": round(t1 - t0, 2),
            "ticks during open": n_open,
            "full image after (s)": round(t2 - t1, 1),
            "ticks meanwhile": len(after),
            "longest gap (s)": round(float(gaps.max()), 2),
            "full image shown": bool(full.multiscale),
        }])
        viewer.close()


if __name__ == "__main__":
    main()
