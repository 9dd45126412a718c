"""How long opening a sample from the Sample panel blocks the viewer.

Opens each sample through the Sample panel of a real napari viewer (as a user's "Open" does:
reading in a worker, layers added on the GUI thread) while a 10 ms timer ticks on the event
loop, and prints the time until the layers are shown and the longest stall of the event loop
(the longest gap between two ticks: what the user feels as a frozen window). The first sample
opened in the process also pays napari's one-time start-up costs (the canvas overlays); the
second row of a sample is the same sample opened again (its layers are reused).

    xvfb-run -a python benchmarks/bench_open_sample.py synthetic ../shared/data/her2st/C3
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table  # noqa: E402


def open_and_time(widget, viewer, app, source: str) -> tuple[float, float]:
    """Open ``source`` ('synthetic' or a path); return (seconds to layers, longest stall s)."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    t0 = time.perf_counter()
    ticks.append(t0)
    timer.start(10)
    if source == "synthetic":
        widget.open_synthetic()
    else:
        widget.open_sample(source)
    while widget._worker is not None:  # set back to None when the worker has finished
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > 600:
            raise TimeoutError(f"{source} did not open in 10 minutes")
    shown = time.perf_counter() - t0
    for _ in range(50):  # let the first redraw happen and be counted
        app.processEvents()
        time.sleep(0.01)
    timer.stop()
    ticks.append(time.perf_counter())
    stall = max(b - a for a, b in pairwise(ticks))
    return shown, stall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", nargs="+", help="'synthetic' or sample folders/files")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_trihrge.napari._qt import SampleWidget

    rows = []
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    widget = SampleWidget(viewer)
    viewer.window.add_dock_widget(widget)
    for source in args.samples:
        for attempt in ("first", "again"):
            shown, stall = open_and_time(widget, viewer, app, source)
            rows.append({"sample": Path(source).name, "open": attempt,
                         "layers shown s": shown, "longest event-loop stall s": stall,
                         "layers": len(viewer.layers)})
    viewer.close()
    print(format_table(rows))


if __name__ == "__main__":
    main()
