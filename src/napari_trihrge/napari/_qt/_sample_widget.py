"""Dock widget 1 - Sample: open a sample, choose the encoder, token and device."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...features.registry import DEFAULT_ENCODER
from ._common import heading, hline, listen, note, report_outcome
from ._session import get_session, unwrap_viewer
from ._worker import simple_worker

#: Encoders offered in the list (the field is editable: any registry name, 'hf-hub:org/name',
#: a timm name or a local checkpoint path works).
ENCODER_CHOICES = (DEFAULT_ENCODER, "uni", "uni2-h")


class SampleWidget(QWidget):
    """Open a Space Ranger folder, an .h5ad, or a spot table plus its H&E image; pick the
    image encoder, an optional Hugging Face token (this session only) and the device."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self._worker = None

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("Space Ranger outs/ folder, .h5ad or spot table")
        self.folder_btn = QPushButton("Folder…")
        self.file_btn = QPushButton("File…")
        self.image_edit = QLineEdit()
        self.image_edit.setPlaceholderText(
            "full-resolution H&E (optional; needed for a spot table)")
        self.image_btn = QPushButton("Image…")
        self.open_btn = QPushButton("Open sample")
        self.synthetic_btn = QPushButton("Open the synthetic sample")
        self.status = note("No sample open.")

        self.encoder_combo = QComboBox()
        self.encoder_combo.setEditable(True)
        self.encoder_combo.addItems(ENCODER_CHOICES)
        self.encoder_combo.setToolTip(
            "Image encoder: 'stain-texture' works offline; 'uni' / 'uni2-h' need a Hugging Face "
            "token with access to the gated model; or type 'hf-hub:org/name', a timm model name "
            "or the path of a local checkpoint.")
        self.checkpoint_btn = QPushButton("Checkpoint…")
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.Password)
        self.token_edit.setPlaceholderText("hf_… (used for this session only, never saved)")
        self.token_edit.setToolTip("Hugging Face access token for gated encoders. It is kept "
                                   "only in this field and passed to the run; it is never "
                                   "written to disk or to the log.")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cuda", "cpu"])

        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(self.folder_btn)
        row.addWidget(self.file_btn)
        irow = QHBoxLayout()
        irow.addWidget(self.image_edit)
        irow.addWidget(self.image_btn)
        erow = QHBoxLayout()
        erow.addWidget(self.encoder_combo, 1)
        erow.addWidget(self.checkpoint_btn)
        form = QFormLayout()
        form.addRow("Encoder", erow)
        form.addRow("HF token", self.token_edit)
        form.addRow("Device", self.device_combo)

        lay = QVBoxLayout(self)
        lay.addWidget(heading("Sample"))
        lay.addLayout(row)
        lay.addLayout(irow)
        lay.addWidget(self.open_btn)
        lay.addWidget(self.synthetic_btn)
        lay.addWidget(self.status)
        lay.addWidget(hline())
        lay.addWidget(heading("Image features"))
        lay.addLayout(form)
        lay.addStretch(1)

        self.folder_btn.clicked.connect(self._choose_folder)
        self.file_btn.clicked.connect(self._choose_file)
        self.image_btn.clicked.connect(self._choose_image)
        self.checkpoint_btn.clicked.connect(self._choose_checkpoint)
        self.open_btn.clicked.connect(self.open_sample)
        self.synthetic_btn.clicked.connect(self.open_synthetic)
        listen(self, self.session.sample_changed, self._on_sample)

        # the run reads these when it starts; the token is never copied anywhere else
        self.session.encoder = lambda: self.encoder_combo.currentText().strip() or DEFAULT_ENCODER
        self.session.token = lambda: self.token_edit.text().strip() or None
        self.session.device = lambda: self.device_combo.currentText()

    # -- file choosers --------------------------------------------------------------------
    def _choose_folder(self):
        path = QFileDialog.getExistingDirectory(self, "Space Ranger outs/ folder")
        if path:
            self.path_edit.setText(path)

    def _choose_file(self):
        path, _ = QFileDialog.getOpenFileName(
            self, "Sample file", "", "AnnData or spot table (*.h5ad *.csv *.tsv *.txt *.gz)")
        if path:
            self.path_edit.setText(path)

    def _choose_image(self):
        path, _ = QFileDialog.getOpenFileName(
            self, "H&E image", "", "Images (*.tif *.tiff *.svs *.png *.jpg *.jpeg)")
        if path:
            self.image_edit.setText(path)

    def _choose_checkpoint(self):
        path, _ = QFileDialog.getOpenFileName(self, "Encoder checkpoint", "",
                                              "Checkpoints (*.pt *.pth *.bin *.safetensors)")
        if path:
            self.encoder_combo.setEditText(path)

    # -- opening --------------------------------------------------------------------------
    def open_sample(self, path: str | None = None, image_path: str | None = None):
        """Read the sample in the background, then add its H&E and spots layers."""
        from .._reader import read_sample_layers

        path = path or self.path_edit.text().strip()
        image_path = image_path or self.image_edit.text().strip() or None
        if not path:
            from napari.utils.notifications import show_error

            show_error("Choose a Space Ranger folder, an .h5ad or a spot table first")
            return None
        return self._start(read_sample_layers, path, image_path=image_path)

    def open_synthetic(self):
        from .._sample_data import synthetic_sample

        return self._start(synthetic_sample)

    def _start(self, fn, *args, **kwargs):
        self.status.setText("Reading…")
        self.open_btn.setEnabled(False)
        self.synthetic_btn.setEnabled(False)
        worker = simple_worker(fn, *args, **kwargs)
        worker.returned.connect(self._on_read)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def _on_finished(self):
        self.open_btn.setEnabled(True)
        self.synthetic_btn.setEnabled(True)
        self._worker = None

    def _on_read(self, outcome):
        if not report_outcome(outcome, "Opening the sample"):
            self.status.setText("Could not open the sample (see the notification).")
            return
        self.add_layers(outcome.result)

    def add_layers(self, layer_tuples):
        """Add reader layer tuples to the viewer (H&E first, spots on top)."""
        added = []
        for data, kwargs, kind in layer_tuples:
            added.append(getattr(self.viewer, f"add_{kind}")(data, **kwargs))
        spots = [lay for lay in added if (lay.metadata or {}).get("adata") is not None]
        if spots:
            self.session.set_sample(spots[-1].metadata["adata"])
        if added:
            self.viewer.reset_view()
        return added

    def _on_sample(self, adata):
        if adata is None:
            self.status.setText("No sample open.")
            return
        info = adata.uns.get("trihrge", {})
        self.status.setText(
            f"{info.get('sample', 'sample')}: {adata.n_obs} spots, {adata.n_vars} genes, "
            f"{float(info.get('um_per_px', float('nan'))):.3g} um/px, spot diameter "
            f"{float(info.get('spot_diameter_um', float('nan'))):.3g} um "
            f"({info.get('platform', '?')})")
