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

from .. import regions as R
from ._common import heading, note, notify_error
from ._session import get_session, layer_kind, unwrap_viewer

REGIONS_NAME = "regions"
COLUMN_TITLES = {
    "region": "Region", "gene": "Gene", "enhanced_inside": "Enhanced in",
    "enhanced_outside": "Enhanced out", "measured_inside": "Measured in",
    "measured_outside": "Measured out", "difference": "In − out",
}


class RegionExplorer(QWidget):
    """Draw polygons / rectangles / ellipses (for example around a tumour) on a Shapes layer;
    the table lists, per region, the genes whose mean expression differs most inside vs
    outside, for the enhanced and the measured expression."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
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
        self.session.sample_changed.connect(self._invalidate)
        self.session.enhance_changed.connect(self._invalidate)

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
            return layer
        if not create:
            return None
        spots = self.session.find_layer("spots")
        layer = self.viewer.add_shapes(
            name=REGIONS_NAME, edge_width=6, edge_color="#00e5ff", face_color="#00e5ff22",
            units=spots.units if spots is not None else None,
            metadata={"trihrge": {"kind": "regions"}})
        layer.events.data.connect(self._on_regions_changed)
        return layer

    def start_drawing(self):
        layer = self.regions_layer(create=True)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_polygon"
        self.message.setText("Click around the region, double-click to close it. Use the "
                             "layer controls for rectangles or ellipses.")

    def _on_regions_changed(self, event=None):
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
        except Exception as exc:  # noqa: BLE001
            notify_error(exc, "Region statistics")
            return None
        self.stats = stats
        self._fill_table(stats)
        msg = []
        if enhanced is None:
            msg.append("Measured spots only: run Enhance to compare enhanced expression too.")
        msg.extend(stats.messages)
        counts = "; ".join(
            f"{r.region}: {r.measured_spots_inside} spots"
            + (f", {r.enhanced_points_inside} enhanced points"
               if r.enhanced_points_inside is not None else "")
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
        for r, row in enumerate(table.itertuples(index=False)):
            for c, val in enumerate(row):
                if isinstance(val, float):
                    item = QTableWidgetItem()
                    item.setData(0, round(val, 3))  # DisplayRole: sorts numerically
                else:
                    item = QTableWidgetItem(str(val))
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.table.setSortingEnabled(True)

    def _on_cell(self, row: int, col: int):
        cols = [self.table.horizontalHeaderItem(i).text() for i in range(self.table.columnCount())]
        if "Gene" in cols:
            item = self.table.item(row, cols.index("Gene"))
            if item is not None:
                try:
                    self.session.show_gene(item.text())
                except Exception as exc:  # noqa: BLE001
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
        self.stats.table.to_csv(path, index=False)
        show_info(f"Saved {path}")
