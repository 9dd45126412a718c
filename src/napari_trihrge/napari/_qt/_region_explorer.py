"""Dock widget 4 - Region explorer: draw regions, compare expression inside vs outside."""

from __future__ import annotations

import numpy as np
from napari.layers import Shapes
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ... import regions as R
from ._common import heading, listen, note, notify_error
from ._session import get_session, get_view, layer_kind, unwrap_viewer

REGIONS_NAME = "regions"
COLUMN_TITLES = {
    "region": "Region", "gene": "Gene", "log2_fold_change": "log2 FC", "fdr": "FDR",
    "measured_inside": "Meas. in", "measured_outside": "Meas. out",
    "n_spots_inside": "Spots in", "n_spots_outside": "Spots out", "p_value": "p",
    "z_score": "z", "enhanced_inside": "Enh. in", "enhanced_outside": "Enh. out",
    "log2_fold_change_enhanced": "log2 FC enh.", "difference": "In − out",
}
#: what each column means, in plain words (the header tooltips)
COLUMN_HELP = {
    "region": "The region's number, as drawn on the canvas.",
    "gene": "Gene symbol; double-click a row to show the gene on the canvas.",
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
}


class RegionExplorer(QWidget):
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

        self.draw_btn = QPushButton("Draw a region")
        self.compute_btn = QPushButton("Compare inside vs outside")
        self.auto_check = QCheckBox("update when regions change")
        self.auto_check.setChecked(True)
        self.top_spin = QSpinBox()
        self.top_spin.setRange(1, 500)
        self.top_spin.setValue(15)
        self.top_spin.setPrefix("top ")
        self.top_spin.setSuffix(" genes per region")
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
        self.export_btn.setToolTip("Save the table with all its columns as a CSV file.")

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
        lay.addWidget(self.message)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.export_btn)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.compute)
        self.draw_btn.clicked.connect(self.start_drawing)
        self.compute_btn.clicked.connect(self.compute)
        self.export_btn.clicked.connect(self._export)
        self.table.cellDoubleClicked.connect(self._on_cell)
        listen(self, self.session.sample_changed, self._invalidate)
        listen(self, self.session.enhance_changed, self._invalidate)

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
            return layer
        if not create:
            return None
        layer = self.viewer.add_shapes(
            name=REGIONS_NAME, edge_width=6, edge_color="#00e5ff", face_color="#00e5ff22",
            units="um",  # regions are compared in micrometres, like every TriHRGE layer
            metadata={"trihrge": {"kind": "regions"}})
        layer.events.data.connect(self._on_regions_changed)
        number_regions(layer)
        return layer

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
        self._cache.clear()

    # -- expression sources ---------------------------------------------------------------
    def _measured(self):
        ad = self.session.adata
        if ad is None:
            return None
        enh = self._enhanced()
        key = (id(ad), None if enh is None else id(enh))
        hit = self._cache.get("measured")
        if hit is None or hit[0] != key:
            genes = None
            if enh is not None:  # the run's genes only (the table compares the two)
                genes = [g for g in enh.genes if g in ad.var_names]
            hit = (key, R.adata_expression_set(ad, "measured", genes))
            self._cache["measured"] = hit
        return hit[1]

    def _enhanced(self):
        enh = self.session.enhance
        if enh is None:
            return None
        hit = self._cache.get("enhanced")
        if hit is None or hit[0] is not enh:
            if getattr(enh, "virtual", None) is not None:
                es = R.adata_expression_set(enh.virtual, "enhanced")
            else:
                es = R.maps_expression_set(enh.maps)
            hit = (enh, es)
            self._cache["enhanced"] = hit
        return hit[1]

    # -- statistics -----------------------------------------------------------------------
    def polygons(self) -> tuple[list[np.ndarray], list[str]]:
        layer = self.regions_layer()
        if layer is None:
            return [], []
        polys, names = [], []
        for i, (verts, kind) in enumerate(zip(layer.data, layer.shape_type, strict=False)):
            world = np.asarray([layer.data_to_world(v) for v in verts])
            poly = R.shape_polygon_rc_um(world, kind)
            if poly is not None:
                polys.append(poly)
                names.append(f"region {i + 1}")
        return polys, names

    def compute(self) -> R.RegionStats | None:
        """Fill the table; returns the statistics (None with a message when impossible)."""
        polys, names = self.polygons()
        if not polys:
            self._set_message("Draw a polygon, rectangle or ellipse first (lines and paths are "
                              "not regions).")
            return None
        try:
            measured, enhanced = self._measured(), self._enhanced()
            if measured is None and enhanced is None:
                self._set_message("Open a sample first.")
                return None
            stats = R.region_statistics(polys, measured, enhanced,
                                        top_n=int(self.top_spin.value()), region_names=names)
        except Exception as exc:  # noqa: BLE001 - a notification, never a crash
            notify_error(exc, "Region statistics")
            return None
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
                    elif col.startswith("n_spots"):
                        item.setData(0, int(val))
                    else:
                        item.setData(0, round(val, 3))
                else:
                    item = QTableWidgetItem(str(val))
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

    def export_csv(self, path: str) -> None:
        if self.stats is None:
            show_info("Compute the region table first")
            return
        from ..._atomic import atomic_path

        with atomic_path(path, overwrite=True) as tmp:  # the file dialog asked about replacing
            self.stats.table.to_csv(tmp, index=False)
        show_info(f"Saved {path}")


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
