"""Dock widget - Apply a trained model: a model folder on the open sample or on an H&E opened
alone, in a worker with progress and cancel; results shown as the same layers as enhance."""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from ._common import Panel, heading, note
from ._engine_run import EngineRun
from ._session import get_session, layer_kind, unwrap_viewer
from ._stage_bars import StageBars

SAMPLE = "__sample__"


def predict_summary_html(scores: dict) -> str:
    """A prediction's held-out summary: the model's trust from its training sections, and the
    score at this slide's measured spots when it has some."""
    from ._train_widget import heldout_summary_html

    html = ""
    if scores.get("pcc_mean") is not None:
        html = heldout_summary_html(scores, "Model trust",
                                    "spots held out in its training sections")
    s = scores.get("spots")
    if s:
        html += (f"<br>At the {s['n_spots']} measured spots of this slide: mean PCC "
                 f"{s['pcc_mean']:.3f} vs kNN of the other spots "
                 f"{s['baseline_knn_pcc_mean']:.3f} ({s['n_genes_scored']} genes that vary; "
                 "the model never saw this section)")
    elif html:
        html += "<br>Nothing was measured on this slide: its accuracy here is unknown."
    return html


def _layer_path(layer) -> str | None:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


class ApplyModelWidget(EngineRun, Panel):
    """Model folder, target (the open sample or an H&E image layer, with its pixel size),
    density and map stride; Start / Cancel; one progress bar per stage."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)

        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model folder (trihrge train --out, or a run's model/)")
        self.model_btn = QPushButton("…")
        self.target_combo = QComboBox()
        self.um_spin = QDoubleSpinBox()
        self.um_spin.setDecimals(4)
        self.um_spin.setRange(0.0, 30.0)
        self.um_spin.setSpecialValueText("unknown: enter it")
        self.um_spin.setSuffix(" um/px")
        #: the pixel size entered per target image (kept across runs and layer changes)
        self._um_per_target: dict[str, float] = {}
        self.factor_combo = QComboBox()
        for f in (1, 2, 4, 8):
            self.factor_combo.addItem(f"{f}x denser spots", f)
        self.factor_combo.setCurrentIndex(2)
        self.stride_spin = QDoubleSpinBox()
        self.stride_spin.setRange(0, 200)
        self.stride_spin.setValue(16)
        self.stride_spin.setSpecialValueText("no map (spots only)")
        self.stride_spin.setSuffix(" um map pixel")
        self.start_btn = QPushButton("Start")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.status = note("Choose a model folder and a target, then press Start.")
        self.horizon = note("")
        self.horizon.setToolTip("The whole run: which phase, which network, and an estimate "
                                "of the time left from the pace so far.")
        self.bars = StageBars(self.status.setText, self.horizon.setText)
        self.scores = note("")
        self.scores.setTextFormat(Qt.RichText)


        form = QFormLayout()
        mrow = QHBoxLayout()
        mrow.addWidget(self.model_edit)
        mrow.addWidget(self.model_btn)
        form.addRow("Model", mrow)
        form.addRow("Target", self.target_combo)
        form.addRow("Pixel size", self.um_spin)
        form.addRow("Density", self.factor_combo)
        form.addRow("Map", self.stride_spin)
        brow = QHBoxLayout()
        brow.addWidget(self.start_btn)
        brow.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Apply a trained model"))
        lay.addLayout(form)
        lay.addLayout(brow)
        lay.addWidget(self.status)
        lay.addWidget(self.horizon)
        lay.addWidget(self.scores)
        lay.addStretch(1)

        self.model_btn.clicked.connect(self._choose_model)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.target_combo.currentIndexChanged.connect(self._target_changed)
        self.um_spin.valueChanged.connect(self._remember_um)
        self.viewer.layers.events.inserted.connect(self.refresh_targets)
        self.viewer.layers.events.removed.connect(self.refresh_targets)
        self.refresh_targets()

    # -- parameters -----------------------------------------------------------------------
    def _choose_model(self):
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.model_edit.setText(path)

    def refresh_targets(self, *_):
        """The open sample, then every plain image layer opened from a file (an H&E alone)."""
        current = self.target_combo.currentData()
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        if self.session.adata is not None:
            self.target_combo.addItem("the open sample (its spots and H&E)", SAMPLE)
        for layer in self.viewer.layers:
            if layer.__class__.__name__ == "Image" and layer_kind(layer) is None \
                    and _layer_path(layer):
                self.target_combo.addItem(f"H&E alone: {layer.name}", layer.name)
        idx = self.target_combo.findData(current)
        self.target_combo.setCurrentIndex(max(idx, 0))
        self.target_combo.blockSignals(False)
        self._target_changed()

    def _target_changed(self, *_):
        data = self.target_combo.currentData()
        image = data not in (None, SAMPLE)
        self.um_spin.setEnabled(image)
        if image:
            um = self._um_per_target.get(data)
            if um is None:
                from ...io.image import pixel_size_from_metadata

                um = pixel_size_from_metadata(_layer_path(self.viewer.layers[data])) or 0.0
            self.um_spin.blockSignals(True)
            self.um_spin.setValue(um)
            self.um_spin.blockSignals(False)

    def _remember_um(self, value: float) -> None:
        data = self.target_combo.currentData()
        if data not in (None, SAMPLE) and value > 0:
            self._um_per_target[data] = float(value)

    # -- running --------------------------------------------------------------------------
    def start(self):
        """Start prediction in a background worker; returns the worker (or None)."""
        if self.worker is not None:
            show_info("A prediction is already running")
            return None
        model_dir = self.model_edit.text().strip()
        if not model_dir:
            show_error("Choose a model folder first (written by `trihrge train` or a run)")
            return None
        data = self.target_combo.currentData()
        if data is None:
            show_error("Open a sample or an H&E image first")
            return None
        kwargs: dict[str, Any] = {"factor": int(self.factor_combo.currentData()),
                                  "stride_um": float(self.stride_spin.value()) or None,
                                  "device": self.session.device(),
                                  "hf_token": self.session.token()}
        if data == SAMPLE:
            target = self.session.adata
        else:
            layer = self.viewer.layers[data]
            if self.um_spin.value() <= 0:
                show_error(f"{layer.name} does not record its pixel size: enter it (um/px)")
                return None
            target = _layer_path(layer)
            kwargs["um_per_px"] = float(self.um_spin.value())
            # the image layer in micrometres, like every TriHRGE layer
            if tuple(layer.scale) != (kwargs["um_per_px"],) * 2:
                layer.scale = (kwargs["um_per_px"],) * 2
                self.viewer.reset_view()  # frame the image at its new size
            layer.units = ("um", "um")
        from ...tl.inference import predict

        self.scores.setText("")
        return self.launch(predict, model_dir, target, **kwargs)

    run_title = "Applying the model"

    def _report(self, result):
        m = result.metrics
        self.status.setText(f"Done: {m['n_virtual_spots']} virtual spots"
                            + (" and a dense map." if result.maps is not None else "."))
        self.scores.setText(predict_summary_html(self.session.scores))

    def _show(self, result):
        """The same layers as enhance: virtual spots (hidden under a map) and the map."""
        self.session.set_result("predict", result)
