"""Dock widget - Cells: find the cells of the open sample in a worker (progress, cancel), show
them as a Labels layer in micrometres coloured by the gene shown, describe a clicked cell.

The cells are computed once; showing another gene only recolours them (one colour per label,
no new labels). Hovering a cell shows its features in the status bar (napari reads the layer's
``features``); clicking one writes its description here.
"""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QHBoxLayout, QPushButton, QVBoxLayout

from ...nuclei import EXPAND_UM
from .. import layers as L
from ._common import Panel, heading, note
from ._engine_run import EngineRun
from ._session import get_session, get_view, unwrap_viewer
from ._stage_bars import StageBars


class CellsWidget(EngineRun, Panel):
    """Expansion distance; Find cells / Cancel; one progress bar per stage; the clicked cell."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self.view = get_view(napari_viewer)

        self.expand_spin = QDoubleSpinBox()
        self.expand_spin.setRange(0.0, 30.0)
        self.expand_spin.setDecimals(1)
        self.expand_spin.setValue(EXPAND_UM)
        self.expand_spin.setSuffix(" um")
        self.expand_spin.setToolTip("How far each nucleus is grown into its cell (without "
                                    "overlapping its neighbours), in micrometres.")
        self.start_btn = QPushButton("Find cells")
        self.start_btn.setToolTip("Segment the nuclei of the open sample's H&E tile by tile, "
                                  "grow them into cells and give each cell the last run's "
                                  "enhanced expression averaged over its area.")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.status = note("Open a sample (and run Enhance for per-cell expression), then "
                           "press Find cells.")
        self.horizon = note("")
        self.bars = StageBars(self.status.setText, self.horizon.setText)
        self.cell_info = note("")
        self.cell_info.setToolTip("Click a cell on the canvas to describe it here; hovering "
                                  "shows the same in the status bar.")

        form = QFormLayout()
        form.addRow("Grow nuclei by", self.expand_spin)
        row = QHBoxLayout()
        row.addWidget(self.start_btn)
        row.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Cells"))
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(self.horizon)
        lay.addWidget(self.cell_info)
        lay.addStretch(1)

        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.destroyed.connect(
            lambda *_: self.viewer.layers.events.inserted.disconnect(self._on_inserted))
        for layer in self.viewer.layers:  # cells opened before the panel
            self._adopt(layer)

    # -- layers ---------------------------------------------------------------------------
    def cells_layers(self) -> list:
        """The cells layers of the viewer."""
        return [lay for lay in self.viewer.layers if L.cells_of_layer(lay) is not None]

    def _on_inserted(self, event):
        self._adopt(event.value)

    def _adopt(self, layer) -> None:
        """Describe clicked cells of a cells layer (the layer view colours it by the gene)."""
        if L.cells_of_layer(layer) is None or self._describe in layer.mouse_drag_callbacks:
            return
        layer.mouse_drag_callbacks.append(self._describe)

    def _describe(self, layer, event):
        label = layer.get_value(event.position, world=True)
        text = L.cell_description(layer.features, label) if label else ""
        if text:
            self.cell_info.setText(text)

    # -- running --------------------------------------------------------------------------
    def start(self):
        """Find the cells of the open sample in a background worker; returns it (or None)."""
        if self.worker is not None:
            show_info("Cells are already being found")
            return None
        adata = self.session.adata
        if adata is None:
            show_error("Open a sample first (its H&E is segmented)")
            return None
        from ...tl import cells

        run = self.session.enhance
        self._sample = self.session.sample_name
        return self.launch(cells, adata, maps=getattr(run, "maps", None),
                           trust=getattr(run, "trust", None),
                           expand_um=float(self.expand_spin.value()))

    run_title = "Finding cells"

    def _report(self, result):
        m = result.metrics
        genes = result.cells.n_vars
        self.status.setText(
            f"{m['n_cells']} cells ({m['cells_per_mm2_tissue']:.0f} per mm² of tissue), "
            + (f"each with the enhanced expression of {genes} genes." if genes else
               "no expression (run Enhance first for per-cell expression)."))

    def _show(self, result):
        self.show_cells(result)

    def show_cells(self, result):
        """Add the cells of a :class:`~napari_trihrge.tl.CellsResult` as a Labels layer in
        micrometres, placed with its sample and coloured by the gene shown."""
        gene = self.session.gene if self.session.gene in result.cells.var_names else (
            str(result.cells.var_names[0]) if result.cells.n_vars else None)
        data, kwargs, _ = L.cells_layer(result.cell_labels, result.um_per_px, result.cells,
                                        gene=gene)
        kwargs["units"] = ("um", "um")
        layer = self.viewer.add_labels(data, **kwargs)
        sample = getattr(self, "_sample", None) or self.session.sample_name
        if sample is not None:
            self.view.place(layer, sample)
        return layer
