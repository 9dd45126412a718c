"""Dock widget 3 - Gene explorer: search a gene, recolour spots and map on one scale,
compare side by side, list the best-predicted genes."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QCompleter,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import layers as L
from ._common import heading, hline, note, notify_error
from ._session import get_session, layer_kind, unwrap_viewer

TWIN_NAME = "H&E (side by side)"


def _colorbar_pixmap(name: str, width: int = 220, height: int = 12) -> QPixmap:
    from matplotlib import colormaps

    rgba = (colormaps[name](np.linspace(0, 1, width))[:, :3] * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(rgba[None], height, axis=0))
    qimg = QImage(img.data, width, height, 3 * width, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimg)


class GeneExplorer(QWidget):
    """Choose a gene (search with completion over every gene); spots, predicted spots and the
    enhanced map are recoloured on ONE colour scale."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)

        self.search = QLineEdit()
        self.search.setPlaceholderText("type a gene, e.g. MBP")
        self.model = QStringListModel()
        self.completer = QCompleter(self.model, self)
        self.completer.setCaseSensitivity(Qt.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchContains)
        self.completer.setMaxVisibleItems(15)
        self.search.setCompleter(self.completer)
        self.show_btn = QPushButton("Show")
        self.current = QLabel("No gene shown yet.")
        self.current.setWordWrap(True)
        self.colorbar = QLabel()
        self.colorbar.setPixmap(_colorbar_pixmap(self.session.colormap))
        self.scale_label = note("")
        self.side_check = QCheckBox("Side by side: measured spots | enhanced")
        self.best_list = QListWidget()
        self.best_list.setMinimumHeight(120)
        self.best_note = note("Run a recovery to list the genes predicted best.")
        self.png_btn = QPushButton("Save view as PNG…")

        row = QHBoxLayout()
        row.addWidget(self.search, 1)
        row.addWidget(self.show_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Gene explorer"))
        lay.addLayout(row)
        lay.addWidget(self.current)
        lay.addWidget(self.colorbar)
        lay.addWidget(self.scale_label)
        lay.addWidget(self.side_check)
        lay.addWidget(hline())
        lay.addWidget(heading("Best predicted genes (recovery)"))
        lay.addWidget(self.best_note)
        lay.addWidget(self.best_list, 1)
        lay.addWidget(self.png_btn)

        self.search.returnPressed.connect(self._on_enter)
        self.completer.activated[str].connect(self.show_gene)
        self.show_btn.clicked.connect(self._on_enter)
        self.side_check.toggled.connect(self.set_side_by_side)
        self.best_list.itemClicked.connect(self._on_best)
        self.png_btn.clicked.connect(self._save_png)
        self.session.sample_changed.connect(self.refresh_genes)
        self.session.enhance_changed.connect(self.refresh_genes)
        self.session.layers_changed.connect(self.refresh_genes)
        self.session.recovery_changed.connect(self._on_recovery)
        self.session.gene_changed.connect(self._on_gene_changed)
        self.refresh_genes()
        if self.session.recovery is not None:
            self._on_recovery(self.session.recovery)

    # -- genes ----------------------------------------------------------------------------
    def refresh_genes(self, *_):
        genes = self.session.genes()
        self.model.setStringList(genes)
        self.search.setPlaceholderText(
            f"type one of {len(genes)} genes" if genes else "open a sample first")

    def _on_enter(self):
        text = self.search.text().strip()
        if not text:
            return
        genes = self.model.stringList()
        if text not in genes:  # accept case-insensitive exact matches
            lower = {g.lower(): g for g in genes}
            text = lower.get(text.lower(), text)
        self.show_gene(text)

    def show_gene(self, gene: str) -> bool:
        """Show ``gene`` everywhere (spots, predicted spots, map); False with a message if not."""
        try:
            self.session.show_gene(gene)
        except Exception as exc:  # noqa: BLE001 - a notification, never a crash
            notify_error(exc, f"Cannot show {gene}")
            return False
        return True

    def _on_gene_changed(self, gene: str):
        if self.search.text() != gene:
            self.search.setText(gene)
        lo, hi = self.session.contrast_limits or (0.0, 1.0)
        shown = [lay.name for lay in self.viewer.layers
                 if (lay.metadata or {}).get("trihrge", {}).get("gene") == gene]
        self.current.setText(f"<b>{gene}</b> on: {', '.join(shown) or 'no layer'}")
        self.scale_label.setText(f"{lo:.2f} … {hi:.2f}  log-normalised expression, one scale "
                                 "for spots and map (robust 1-99.5 % range)")

    # -- recovery ranking -----------------------------------------------------------------
    def _on_recovery(self, result):
        self.best_list.clear()
        self.refresh_genes()
        if result is None:
            return
        table = result.per_gene.sort_values("pcc", ascending=False)
        table = table[np.isfinite(table["pcc"].to_numpy())]
        base_col = "pcc_baseline" if "pcc_baseline" in table else None
        for gene, row in table.head(50).iterrows():
            text = f"{gene}   PCC {row['pcc']:.2f}"
            if base_col:
                text += f"  (kNN {row[base_col]:.2f})"
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, str(gene))
            self.best_list.addItem(item)
        self.best_note.setText("Pearson correlation of predicted vs measured expression on the "
                               "hidden spots; click a gene to show it.")

    def _on_best(self, item):
        self.show_gene(item.data(Qt.UserRole))

    # -- side by side ---------------------------------------------------------------------
    def set_side_by_side(self, on: bool) -> bool:
        """Grid mode, two panels with one shared camera: H&E + measured spots on the left,
        H&E + the enhanced map (or the predicted spots) on the right."""
        v = self.viewer
        s = self.session
        grid = _grid(v)
        if not on:
            for lay in list(v.layers):
                if layer_kind(lay) == "image-twin":
                    v.layers.remove(lay)
            grid.enabled = False
            grid.stride = 1
            grid.shape = (-1, -1)
            if self.side_check.isChecked():
                self.side_check.blockSignals(True)
                self.side_check.setChecked(False)
                self.side_check.blockSignals(False)
            return True
        left = s.find_layer("spots")
        right = s.find_layer("map") or s.find_layer("recovered") or s.find_layer("virtual")
        img = s.find_layer("image")
        if left is None or right is None:
            show_info("Side by side needs the measured spots and a result: run Enhance (or "
                      "Recovery) first")
            self.side_check.blockSignals(True)
            self.side_check.setChecked(False)
            self.side_check.blockSignals(False)
            return False
        right.visible = True
        left.visible = True
        order = [left, right]
        if img is not None:
            twin = next((lay for lay in v.layers if layer_kind(lay) == "image-twin"), None)
            if twin is None:
                twin = v.add_image(img.data, rgb=True, scale=img.scale, translate=img.translate,
                                   multiscale=img.multiscale, name=TWIN_NAME,
                                   units=img.units,
                                   metadata={"trihrge": {"kind": "image-twin"}})
            img.visible = twin.visible = True
            order = [img, left, twin, right]
        for i, lay in enumerate(order):
            v.layers.move(v.layers.index(lay), i)
        # everything else would add panels: hide it while comparing
        for lay in list(v.layers)[len(order):]:
            lay.visible = False
        grid.stride = len(order) // 2
        grid.shape = (1, 2)
        grid.enabled = True
        QApplication.processEvents()  # let the canvas build its grid views, then fit them
        v.reset_view()
        if not self.side_check.isChecked():
            self.side_check.blockSignals(True)
            self.side_check.setChecked(True)
            self.side_check.blockSignals(False)
        return True

    # -- export ---------------------------------------------------------------------------
    def _save_png(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save the view", "view.png", "PNG (*.png)")
        if path:
            self.save_png(path)

    def save_png(self, path: str) -> None:
        """The current canvas (what you see) as a PNG."""
        self.viewer.screenshot(path, canvas_only=True)
        show_info(f"Saved {path}")


def _grid(viewer):
    """The grid model (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


__all__ = ["GeneExplorer", "L"]
