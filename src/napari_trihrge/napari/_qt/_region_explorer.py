"""Dock widget 4 - Region explorer: draw regions, compare expression inside vs outside, on the
measured spots (and the enhanced maps) or on the cells (Cells panel, or a cells folder)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Shapes
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ... import regions as R
from .. import layers as L
from ._common import Panel, heading, listen, note, notify_error, report_outcome
from ._display import WARN_COLOUR
from ._session import get_session, get_view, layer_kind, unwrap_viewer
from ._worker import simple_worker

REGIONS_NAME = "regions"
#: width of the region outlines on screen, whatever the zoom (canvas pixels)
OUTLINE_WIDTH_PX = 3.0
COLUMN_TITLES = {
    "region": "Region", "gene": "Gene", "mapped": "Mapped", "log2_fold_change": "log2 FC", "fdr": "FDR",
    "measured_inside": "Meas. in", "measured_outside": "Meas. out",
    "n_spots_inside": "Spots in", "n_spots_outside": "Spots out", "p_value": "p",
    "z_score": "z", "enhanced_inside": "Enh. in", "enhanced_outside": "Enh. out",
    "log2_fold_change_enhanced": "log2 FC enh.", "difference": "In − out",
    "cells_inside": "Cells in (mean)", "cells_outside": "Cells out (mean)",
    "n_cells_inside": "Cells in", "n_cells_outside": "Cells out",
}
#: the columns of the spot table and what they are called when the cells are compared
CELL_COLUMNS = {"measured_inside": "cells_inside", "measured_outside": "cells_outside",
                "n_spots_inside": "n_cells_inside", "n_spots_outside": "n_cells_outside"}
#: what the comparison on cells says about its test (cells are not independent measurements)
CELLS_TEST_NOTE = ("On cells: each cell's value is the enhanced map averaged over it, so "
                   "neighbouring cells share the information of the same spots; the rank-sum "
                   "test counts every cell as one sample, so its p-values and FDR are "
                   "optimistic: read them as a ranking, and the spot table for the evidence.")
#: what each column means, in plain words (the header tooltips)
COLUMN_HELP = {
    "region": "The region's number, as drawn on the canvas.",
    "gene": "Gene symbol; double-click a row to show the gene on the canvas. Orange: the "
            "run's prediction of this gene does not beat interpolation.",
    "mapped": "Whether the last run predicted this gene (it has enhanced values). Every "
              "measured gene is tested on the measured spots, mapped or not.",
    "log2_fold_change": "log2 of (mean expression inside / mean outside) on the normalised "
                        "count scale, measured spots: +1 = twice as high inside, -1 = half.",
    "fdr": "False discovery rate (Benjamini-Hochberg) of the rank-sum test: below 0.05, the "
           "difference is unlikely to be chance, counting all genes tested in this region.",
    "measured_inside": "Mean measured log-normalised expression of the spots inside.",
    "measured_outside": "Mean measured log-normalised expression of the spots outside.",
    "n_spots_inside": "Measured spots inside the region (behind the test).",
    "n_spots_outside": "Measured spots in the rest of the tissue (behind the test).",
    "p_value": "Two-sided Wilcoxon rank-sum test, measured spots inside vs outside, before "
               "the correction for testing many genes.",
    "z_score": "Rank-sum z score: positive = higher inside; the table is sorted by its size.",
    "enhanced_inside": "Mean enhanced (predicted) expression inside the region.",
    "enhanced_outside": "Mean enhanced (predicted) expression outside the region.",
    "log2_fold_change_enhanced": "log2 fold change of the enhanced expression.",
    "difference": "Mean inside minus mean outside (enhanced when available, else measured), "
                  "log-normalised expression.",
    "cells_inside": "Mean predicted log-normalised expression of the cells whose centre lies "
                    "inside (per-cell means).",
    "cells_outside": "Mean predicted expression of the cells in the rest of the tissue.",
    "n_cells_inside": "Cells whose centre lies inside the region (behind the test).",
    "n_cells_outside": "Cells in the rest of the tissue (behind the test).",
}


class RegionExplorer(Panel):
    """Draw polygons / rectangles / ellipses (for example around a tumour) on a Shapes layer;
    the table lists, per region, the genes whose mean expression differs most inside vs
    outside, for the enhanced and the measured expression."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self.view = get_view(napari_viewer)
        self.stats: R.RegionStats | None = None
        self._cache: dict[str, tuple] = {}
        self._cache_lock = threading.Lock()
        self._generation = 0  # of the newest comparison asked for
        self._workers: set = set()

        self.draw_btn = QPushButton("Draw a region")
        self.compute_btn = QPushButton("Compare inside vs outside")
        self.auto_check = QCheckBox("update when regions change")
        self.auto_check.setChecked(True)
        self.top_spin = QSpinBox()
        self.top_spin.setRange(1, 500)
        self.top_spin.setValue(15)
        self.top_spin.setPrefix("top ")
        self.top_spin.setSuffix(" genes per region")
        self.unit_combo = QComboBox()
        self.unit_combo.addItem("on spots", "spots")
        self.unit_combo.addItem("on cells", "cells")
        self.unit_combo.setToolTip("Compare the measured spots (and enhanced maps), or the "
                                   "cells (Cells panel or an opened cells folder): cell counts, "
                                   "per-cell means, the same test and FDR.")
        self.message = note("Draw a region around the tissue of interest, then compare.")
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(200)
        self.export_btn = QPushButton("Export CSV…")
        self.export_btn.setEnabled(False)
        self.draw_btn.setToolTip("Draw a polygon on the canvas (click the corners, double-click "
                                 "to close). Each region is numbered on the canvas.")
        self.compute_btn.setToolTip("Compare every region against the rest of the tissue: "
                                    "means, log2 fold change and a rank-sum test per gene.")
        self.auto_check.setToolTip("Recompute the table whenever a region is drawn, moved or "
                                   "deleted.")
        self.top_spin.setToolTip("How many genes to list per region, the most different "
                                 "first (the CSV export has the same rows, all columns).")
        self.export_btn.setToolTip("Save every gene of every region (not only the rows shown) "
                                   "with all columns, the sample name and the region's "
                                   "coordinates in micrometres as a CSV file.")

        row = QHBoxLayout()
        row.addWidget(self.draw_btn)
        row.addWidget(self.compute_btn)
        row2 = QHBoxLayout()
        row2.addWidget(self.top_spin)
        row2.addWidget(self.auto_check)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Region explorer"))
        lay.addLayout(row)
        lay.addLayout(row2)
        lay.addWidget(self.unit_combo)
        lay.addWidget(self.message)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.export_btn)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.compare_in_background)
        self.draw_btn.clicked.connect(self.start_drawing)
        self.compute_btn.clicked.connect(self.compare_in_background)
        self.unit_combo.currentIndexChanged.connect(lambda *_: self.stats is not None and
                                                    self.compare_in_background())
        self.export_btn.clicked.connect(self._export)
        self.table.cellDoubleClicked.connect(self._on_cell)
        listen(self, self.session.sample_changed, self._invalidate)
        listen(self, self.session.enhance_changed, self._invalidate)
        listen(self, self.session.result_added, self._on_run_finished)
        from ._gene_explorer import _camera

        zoom = _camera(self.viewer).events.zoom
        zoom.connect(self._fit_outline_width)
        self.destroyed.connect(lambda *_: zoom.disconnect(self._fit_outline_width))

    # -- regions layer --------------------------------------------------------------------
    def regions_layer(self, create: bool = False):
        for lay in reversed(list(self.viewer.layers)):
            if layer_kind(lay) == "regions":
                return lay
        shapes = [lay for lay in self.viewer.layers if isinstance(lay, Shapes)]
        if shapes:  # a Shapes layer the user made: adopt it
            layer = shapes[-1]
            layer.metadata.setdefault("trihrge", {})["kind"] = "regions"
            layer.events.data.connect(self._on_regions_changed)
            number_regions(layer)
            self._fit_outline_width()
            return layer
        if not create:
            return None
        layer = self.viewer.add_shapes(
            name=REGIONS_NAME, edge_width=6, edge_color="#00e5ff", face_color="#00e5ff22",
            units="um",  # regions are compared in micrometres, like every TriHRGE layer
            metadata={"trihrge": {"kind": "regions"}})
        layer.events.data.connect(self._on_regions_changed)
        number_regions(layer)
        self._fit_outline_width()
        return layer

    def _fit_outline_width(self, *_):
        """Keep the outlines OUTLINE_WIDTH_PX wide on screen at every zoom (napari draws
        shape edges in data units)."""
        from ._gene_explorer import _camera

        layer = next((lay for lay in self.viewer.layers if layer_kind(lay) == "regions"), None)
        zoom = float(_camera(self.viewer).zoom)
        if layer is None or not zoom > 0:
            return
        width = OUTLINE_WIDTH_PX / zoom / float(np.mean(np.abs(layer.scale[-2:])))
        layer.current_edge_width = width
        if layer.nshapes:
            layer.edge_width = width

    def start_drawing(self):
        layer = self.regions_layer(create=True)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_polygon"
        self.message.setText("Click around the region, double-click to close it. Use the "
                             "layer controls for rectangles or ellipses.")

    def _on_regions_changed(self, event=None):
        layer = self.regions_layer()
        if layer is not None:
            number_regions(layer)
        if self.auto_check.isChecked():
            self._timer.start()

    def _invalidate(self, *_):
        with self._cache_lock:
            self._cache.clear()

    def _on_run_finished(self, *_):
        """A run finished: the table shown is recomputed with the new expression."""
        self._invalidate()
        if self.stats is not None and self.polygons()[0]:
            self.compare_in_background()

    # -- what is compared: read in the GUI thread, made into points in any thread ---------
    def _sources(self) -> dict[str, Any]:
        """What the regions are compared on, as the session holds it now: the cells of the
        current sample (the last cells layer placed with it) when comparing on cells, else the
        measured sample and the enhanced expression (the virtual spots of the last run, else
        its maps; without a run, those of a reopened run folder or of maps opened alone)."""
        if self.on_cells:
            sample = self.session.sample_name
            mine = [cells for lay in self.viewer.layers
                    if (cells := L.cells_of_layer(lay)) is not None
                    and lay.metadata["trihrge"].get("sample") in (None, sample)]
            return {"cells": mine[-1] if mine else None}
        enh = self.session.enhance
        if enh is not None:
            virtual, maps = getattr(enh, "virtual", None), getattr(enh, "maps", None)
        else:
            virtual, maps = self.session.source("virtual"), self.session.maps()
        if virtual is not None:
            enhanced, make = virtual, partial(R.adata_expression_set, name="enhanced")
        else:
            enhanced, make = maps, R.maps_expression_set
        return {"measured": self.session.adata, "enhanced": enhanced, "make_enhanced": make}

    def _points(self, key: str, source, make: Callable[[Any], R.ExpressionSet]
                ) -> R.ExpressionSet:
        """``make(source)``, kept while ``source`` is the same object (any thread)."""
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is None or hit[0] is not source:
            hit = (source, make(source))
            with self._cache_lock:
                self._cache[key] = hit
        return hit[1]

    def _compare(self, sources: dict[str, Any], polys: list[np.ndarray], names: list[str],
                 top_n: int | None) -> R.RegionStats:
        """The statistics of the regions on ``sources`` (:meth:`_sources`); any thread."""
        if "cells" in sources:  # the spot statistics with the cells as the points
            cells = self._points("cells", sources["cells"], R.cells_expression_set)
            stats = R.region_statistics(polys, cells, None, top_n=top_n, region_names=names)
            stats.table = stats.table.rename(columns=CELL_COLUMNS)
            stats.summary = stats.summary.rename(columns={
                "measured_spots_inside": "cells_inside",
                "measured_spots_outside": "cells_outside"})
            stats.messages = [_on_cells(m) for m in stats.messages] + [CELLS_TEST_NOTE]
            return stats
        measured = None if sources["measured"] is None else self._points(
            "measured", sources["measured"], R.adata_expression_set)
        enhanced = None if sources["enhanced"] is None else self._points(
            "enhanced", sources["enhanced"], sources["make_enhanced"])
        return R.region_statistics(polys, measured, enhanced, top_n=top_n, region_names=names)

    @property
    def on_cells(self) -> bool:
        """Whether the regions are compared on cells (else on spots and maps)."""
        return self.unit_combo.currentData() == "cells"

    # -- statistics -----------------------------------------------------------------------
    def polygons(self) -> tuple[list[np.ndarray], list[str]]:
        layer = self.regions_layer()
        if layer is None:
            return [], []
        polys, names = [], []
        offset = self.view.offset_rc_um()  # the current sample's place in the viewer
        for i, (verts, kind) in enumerate(zip(layer.data, layer.shape_type, strict=False)):
            world = np.asarray([layer.data_to_world(v) for v in verts])
            poly = R.shape_polygon_rc_um(world[:, -2:] - offset, kind)
            if poly is not None:
                polys.append(poly)
                names.append(f"region {i + 1}")
        return polys, names

    def _request(self, top_n: int | None) -> tuple[Callable[[], R.RegionStats] | None,
                                                   dict[str, Any], str]:
        """Read what to compare (GUI thread): the comparison to run, its sources and "", or
        None and a message saying why there is nothing to compare."""
        polys, names = self.polygons()
        if not polys:
            return None, {}, ("Draw a polygon, rectangle or ellipse first (lines and paths are "
                              "not regions).")
        sources = self._sources()
        if self.on_cells:
            cells = sources["cells"]
            if cells is None:
                return None, sources, ("No cells: find them in the Cells panel, or open a cells "
                                       "folder (trihrge cells).")
            if cells.n_vars == 0:
                return None, sources, ("These cells have no expression: run Enhance, then find "
                                       "the cells again.")
        elif sources["measured"] is None and sources["enhanced"] is None:
            return None, sources, "Open a sample first."
        return partial(self._compare, sources, polys, names, top_n), sources, ""

    def _compare_now(self, top_n: int | None) -> tuple[R.RegionStats, dict[str, Any]] | None:
        """The comparison run here and now: the statistics and their sources, or None with a
        message (a failure as a notification, never a crash)."""
        job, sources, message = self._request(top_n)
        if job is None:
            self._set_message(message)
            return None
        try:
            return job(), sources
        except Exception as exc:  # noqa: BLE001 - a notification, never a crash
            notify_error(exc, "Region statistics")
            return None

    def statistics(self, top_n: int | None) -> R.RegionStats | None:
        """The statistics of the drawn regions (``top_n`` genes per region, None: every
        gene), computed now; None with a message when impossible."""
        done = self._compare_now(top_n)
        return None if done is None else done[0]

    def compute(self) -> R.RegionStats | None:
        """Compare the regions now and fill the table; returns the statistics (None with a
        message when impossible). The panel itself compares in the background
        (:meth:`compare_in_background`)."""
        self._generation += 1  # a comparison still running in the background is outdated
        done = self._compare_now(int(self.top_spin.value()))
        return None if done is None else self._show(*done)

    def compare_in_background(self) -> None:
        """Compare the regions in a helper thread, the viewer responsive meanwhile (thousands
        of cells take seconds); the table fills with the newest request only."""
        self._generation += 1
        generation = self._generation
        job, sources, message = self._request(int(self.top_spin.value()))
        if job is None:
            self._set_message(message)
            return
        self._set_message("Comparing the regions…")
        worker = simple_worker(job)
        worker.returned.connect(lambda outcome: self._on_compared(outcome, generation, sources))
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()

    @property
    def busy(self) -> bool:
        """Whether a comparison is running in the background."""
        return bool(self._workers)

    def _on_compared(self, outcome, generation: int, sources: dict[str, Any]) -> None:
        if generation != self._generation:
            return  # a newer request is on its way
        try:
            if report_outcome(outcome, "Region statistics"):
                self._show(outcome.result, sources)
            else:
                self._set_message("The regions could not be compared (see the notification).")
        except RuntimeError as err:  # the panel was closed meanwhile: nothing to show it in
            if "deleted" not in str(err):
                raise

    def _show(self, stats: R.RegionStats, sources: dict[str, Any]) -> R.RegionStats:
        """Fill the table and the message with ``stats``; returns them."""
        if "cells" in sources:
            self.stats = stats
            self._fill_table(stats)
            counts = "; ".join(f"{r.region}: {r.cells_inside} cells"
                               for r in stats.summary.itertuples())
            self._set_message("\n".join([*stats.messages, counts]))
            self.export_btn.setEnabled(not stats.table.empty)
            return stats
        measured = sources.get("measured")
        enhanced = sources.get("enhanced")
        self.stats = stats
        self._fill_table(stats)
        msg = []
        if enhanced is None:
            msg.append("Measured spots only: run Enhance to compare enhanced expression too.")
        msg.extend(stats.messages)
        counts = "; ".join(
            f"{r.region}: " + ", ".join(
                ([f"{r.measured_spots_inside} spots"] if measured is not None else [])
                + ([f"{r.enhanced_points_inside} enhanced points"]
                   if enhanced is not None else []))
            for r in stats.summary.itertuples())
        msg.append(counts)
        self._set_message("\n".join(msg))
        self.export_btn.setEnabled(not stats.table.empty)
        return stats

    def _set_message(self, text: str):
        self.message.setText(text)

    def _fill_table(self, stats: R.RegionStats):
        table = stats.table
        trust = self.session.trust_table()
        warn = set() if trust is None else {
            str(g) for g, row in trust.iterrows()
            if L.trust_warns({**row.to_dict(), "measured_here": row.get("measured_here", True)})}
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setRowCount(len(table))
        self.table.setColumnCount(len(table.columns))
        self.table.setHorizontalHeaderLabels([COLUMN_TITLES.get(c, c) for c in table.columns])
        for c, col in enumerate(table.columns):
            self.table.horizontalHeaderItem(c).setToolTip(COLUMN_HELP.get(col, col))
        for r, row in enumerate(table.itertuples(index=False)):
            for c, val in enumerate(row):
                col = table.columns[c]
                if isinstance(val, float | int | np.integer | np.floating) and \
                        not isinstance(val, bool):
                    item = QTableWidgetItem()
                    val = float(val)
                    if not np.isfinite(val):
                        item.setData(0, "–")
                    elif col in ("fdr", "p_value"):
                        item.setData(0, float(f"{val:.2g}"))  # DisplayRole: sorts numerically
                    elif col.startswith(("n_spots", "n_cells")):
                        item.setData(0, int(val))
                    else:
                        item.setData(0, round(val, 3))
                elif isinstance(val, bool | np.bool_):
                    item = QTableWidgetItem("yes" if val else "no")
                else:
                    item = QTableWidgetItem(str(val))
                    if col == "gene" and str(val) in warn:
                        item.setForeground(QColor(WARN_COLOUR))
                        item.setToolTip(f"{val}: the prediction does not beat interpolation")
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.table.setSortingEnabled(True)

    def _on_cell(self, row: int, col: int):
        """Double-click: show the row's gene."""
        cols = [self.table.horizontalHeaderItem(i).text() for i in range(self.table.columnCount())]
        if "Gene" in cols:
            item = self.table.item(row, cols.index("Gene"))
            if item is not None:
                try:
                    self.session.show_gene(item.text())
                except Exception as exc:  # noqa: BLE001 - a notification, never a crash
                    notify_error(exc, "Show gene")

    # -- export ---------------------------------------------------------------------------
    def _export(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export region table", "regions.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_table(self):
        """Every gene of every region (not only the rows shown), with the sample name and each
        region's centre and vertices (row/col micrometres); None without regions."""
        stats = self.statistics(None)
        if stats is None:
            return None
        polys, names = self.polygons()
        ad = self.session.adata
        sample = L.sample_name(ad) if ad is not None else ""
        if not sample and self.session.enhance is not None:
            sample = L.sample_name(self.session.enhance.virtual)
        where = pd.DataFrame({
            "region": names,
            "region_centre_row_um": [float(p[:, 0].mean()) for p in polys],
            "region_centre_col_um": [float(p[:, 1].mean()) for p in polys],
            "region_vertices_rc_um": [";".join(f"{r:.1f} {c:.1f}" for r, c in p)
                                      for p in polys]})
        table = stats.table.merge(where, on="region", how="left")
        table.insert(0, "sample", sample)
        return table

    def export_csv(self, path: str) -> None:
        """Write :meth:`export_table` as CSV (through ``_atomic``)."""
        table = self.export_table()
        if table is None:
            show_info("Draw a region first")
            return
        from ..._atomic import atomic_path

        with atomic_path(path, overwrite=True) as tmp:  # the file dialog asked about replacing
            table.to_csv(tmp, index=False)
        show_info(f"Saved {path}: {table['gene'].nunique()} genes, {len(table)} rows")


def _on_cells(message: str) -> str:
    """A note of the spot statistics, said of cells."""
    for spots, cells in (("measured spot centre", "cell centre"), ("measured spots", "cells"),
                         ("spots", "cells")):
        message = message.replace(spots, cells)
    return message


def number_regions(layer) -> None:
    """Draw each region's number (as in the table: region 1, 2, ...) at its centre."""
    n = len(layer.data)
    if n == 0:
        return
    feats = layer.features
    numbers = np.arange(1, n + 1)
    if "region" in feats.columns and len(feats) == n and \
            np.array_equal(feats["region"].to_numpy(), numbers) and layer.text.visible:
        return
    layer.features = {"region": numbers}
    layer.text = {"string": "{region}", "size": 22, "color": "#00e5ff", "anchor": "center"}
