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
)

from ...features.registry import DEFAULT_ENCODER
from ._common import Panel, heading, hline, listen, note, report_outcome
from ._session import get_session, unwrap_viewer
from ._worker import simple_worker

#: where a second sample opens: the Sample panel's choice (data -> shown text)
PLACEMENTS = {"beside": "beside the open sample", "new_viewer": "in a new viewer"}
#: the panels a new viewer opens with (their napari.yaml display names)
NEW_VIEWER_PANELS = ("Sample", "Train and enhance", "Gene explorer")


def warm_units() -> None:
    """Build napari's unit registry (pint) now: it is built on first use, which otherwise is the
    GUI thread adding the first layer in micrometres (seconds on a busy machine)."""
    import pint

    pint.get_application_registry().pixel  # noqa: B018 - the attribute read builds it


def read_in_background(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` after :func:`warm_units`: what a reading worker runs."""
    warm_units()
    return fn(*args, **kwargs)


#: Encoders offered in the list (the field is editable: any registry name, 'hf-hub:org/name',
#: a timm name or a local checkpoint path works).
ENCODER_CHOICES = (DEFAULT_ENCODER, "stain-texture-nuclei", "uni", "uni2-h")


class SampleWidget(Panel):
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
        self.place_combo = QComboBox()
        for key, text in PLACEMENTS.items():
            self.place_combo.addItem(text, key)
        self.place_combo.setToolTip(
            "Where another sample opens once one is open: beside it in this viewer (each "
            "sample keeps its own layers, colour scales and trust labels), or in a new viewer "
            "window with its own panels.")
        self.status = note("No sample open.")
        #: viewers this panel opened for other samples (kept so they stay alive)
        self.other_viewers: list = []

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
        place = QFormLayout()
        place.addRow("Another sample opens", self.place_combo)
        lay.addLayout(place)
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
        worker = simple_worker(read_in_background, fn, *args, **kwargs)
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
        viewer = self.viewer
        if self.placement == "new_viewer" and self.session.adata is not None:
            viewer = self.new_viewer()
        self.add_layers(outcome.result, viewer)

    @property
    def placement(self) -> str:
        """Where another sample opens: 'beside' (this viewer) or 'new_viewer'."""
        return self.place_combo.currentData()

    def set_placement(self, placement: str) -> None:
        self.place_combo.setCurrentIndex(self.place_combo.findData(placement))

    def new_viewer(self):
        """A new napari viewer with the TriHRGE panels docked (it has its own session)."""
        import napari

        viewer = napari.Viewer(title="napari-trihrge: another sample")
        for name in NEW_VIEWER_PANELS:
            try:
                viewer.window.add_plugin_dock_widget("napari-trihrge", name)
            except Exception as exc:  # noqa: BLE001 - a missing panel never loses the sample
                from napari.utils.notifications import show_warning

                show_warning(f"The '{name}' panel could not be opened in the new viewer "
                             f"({exc}); open it from the Plugins menu.")
        self.other_viewers.append(viewer)
        return viewer

    def add_layers(self, layer_tuples, viewer=None):
        """Add reader layer tuples to ``viewer`` (default this panel's; H&E first, spots on
        top) and make the spots that viewer's sample."""
        viewer = unwrap_viewer(viewer) if viewer is not None else self.viewer
        added = []
        for data, kwargs, kind in layer_tuples:
            added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
        spots = [lay for lay in added if (lay.metadata or {}).get("adata") is not None]
        if spots:
            get_session(viewer).set_sample(spots[-1].metadata["adata"])
        if added:
            viewer.reset_view()
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
