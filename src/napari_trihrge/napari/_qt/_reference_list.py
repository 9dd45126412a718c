"""The other samples open in the viewer, to tick as references of a run (``--with``).

A small list the Train panel shows: every sample open in the viewer (a spots layer holding its
AnnData) other than the current one, unticked. The ticked ones are handed to the run as
``reference=[...]`` (:func:`napari_trihrge.tl.recovery`, :func:`napari_trihrge.tl.enhance`):
their spots join the training of the image parts; kNN and the blend weights stay with the
current sample's own spots.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ._common import listen, note
from ._session import get_session, get_view, layer_kind, unwrap_viewer


class ReferenceList(QWidget):
    """Tick other open samples of the same study to learn from them too."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self.view = get_view(napari_viewer)
        self._samples: dict[str, object] = {}  # item text -> AnnData
        self.list = QListWidget()
        self.list.setMaximumHeight(90)
        self.list.setToolTip(
            "Other sections of the same study (same platform and tissue) open in the viewer. "
            "Ticked ones lend their spots to the training of the image model and the ridge "
            "head; interpolation and the blend weights use this sample's own spots only, so a "
            "section that does not help gets a low weight.")
        self.empty = note("Open other sections of the study to learn from them too.")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.list)
        lay.addWidget(self.empty)
        self.viewer.layers.events.inserted.connect(self.refresh)
        self.viewer.layers.events.removed.connect(self.refresh)
        self.destroyed.connect(lambda *_: self._disconnect())
        listen(self, self.session.sample_changed, self.refresh)
        self.refresh()

    def _disconnect(self) -> None:
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.disconnect(self.refresh)

    def _open_samples(self) -> dict[str, object]:
        """The samples open in the viewer other than the current one (label -> AnnData)."""
        out: dict[str, object] = {}
        current = self.session.adata
        for layer in self.viewer.layers:
            adata = (layer.metadata or {}).get("adata")
            if layer_kind(layer) != "spots" or adata is None or adata is current:
                continue
            name = self.view.layer_sample(layer) or layer.name
            label = name if name not in out else f"{name} ({layer.name})"
            out[label] = adata
        return out

    def refresh(self, *_) -> None:
        """List the open samples again, keeping what was ticked."""
        ticked = set(self.checked_names())
        self._samples = self._open_samples()
        self.list.clear()
        for label in self._samples:
            item = QListWidgetItem(label)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if label in ticked else Qt.Unchecked)
            self.list.addItem(item)
        self.list.setVisible(bool(self._samples))
        self.empty.setVisible(not self._samples)

    def checked_names(self) -> list[str]:
        """The labels of the ticked samples."""
        return [self.list.item(i).text() for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.Checked]

    def references(self) -> list | None:
        """The ticked samples (AnnData) as ``reference=`` takes them; None when none is."""
        refs = [self._samples[n] for n in self.checked_names() if n in self._samples]
        return [r for r in refs if r is not self.session.adata] or None
