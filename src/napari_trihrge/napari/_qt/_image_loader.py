"""Decode a large H&E (JPEG, PNG) in a background thread while the viewer stays responsive.

napari calls readers in the viewer's thread and shows what they return at once. For a sample
whose full-resolution image must be decoded whole (about 1 s per 100 megapixels, and a pyramid
to build), the reader shows the in-memory preview and calls :func:`load_full_image_later`:
a napari ``thread_worker`` decodes the image and builds the pyramid (a napari progress bar with a
cancel button in the activity panel), then the full image takes the preview's place
(same position in the layer list, visibility and opacity). A blank or unreadable image becomes a
warning notification; the preview (or nothing) stays.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from ...errors import TrihrgeInputError
from .. import layers as L

_TOKENS = itertools.count(1)
#: loads in progress (token -> _Load, which holds its worker): this also keeps each load alive,
#: as Qt and napari hold connected methods weakly
ACTIVE: dict[int, Any] = {}


def load_full_image_later(adata, preview: tuple | None, *, source: str | None = None):
    """Start decoding the sample's full-resolution image in a worker; returns the worker.

    ``preview`` (a layer data tuple, or None) is marked so that the full image replaces it; with
    no preview, the full image goes just below the sample's spots. Needs a current napari viewer
    (the one the reader is opening into); without one nothing is started."""
    from napari import current_viewer
    from napari.qt.threading import create_worker
    from napari.utils import cancelable_progress

    viewer = current_viewer()
    if viewer is None:
        return None
    viewer = getattr(viewer, "__wrapped__", viewer)
    token = next(_TOKENS)
    name = L.sample_name(adata)
    if preview is not None:
        meta = preview[1]["metadata"]["trihrge"]
        meta["loading_token"] = token
        if source is not None:
            meta["source"] = str(source)
        preview[1]["name"] = f"{preview[1]['name']} (preview; full resolution loading)"
    load = _Load(viewer, token, adata, source, replace=preview is not None)
    # a progress bar with a cancel button in the activity panel: a cancel takes effect after the
    # step under way (the decode, then the pyramid), and the preview stays
    bar = cancelable_progress(total=2, desc=f"Opening the full-resolution H&E of {name}")
    worker = create_worker(_decode, adata, lambda: bar.is_canceled)
    worker.yielded.connect(lambda _step: bar.update(1))
    worker.returned.connect(load.on_decoded)
    # cancelled or failed (napari notifies the error): nothing to place
    worker.finished.connect(load.on_finished)
    worker.finished.connect(bar.close)
    load.worker, load.progress = worker, bar
    ACTIVE[token] = load
    worker.start()
    return worker


def _decode(adata, cancelled):
    """Worker body: the full image (decoded, checked not blank), then its pyramid. Yields once
    per step (the progress bar); returns ('ok', layer tuple), ('error', exception) or
    ('cancelled', None) when ``cancelled()`` became true during a step."""
    from ... import io

    try:
        img = io.get_image(adata)
        yield "decoded"
        if cancelled():
            return "cancelled", None
        layer = L.image_layer(adata, image=img)
        yield "pyramid"
    except TrihrgeInputError as exc:
        return "error", exc
    if cancelled():
        return "cancelled", None
    return "ok", layer


class _Load:
    """Where the full image goes: the preview layer it replaces (``replace``) or the sample's
    spots it goes below. napari may run the event loop (and so finish a fast decode) before it
    has added the reader's layers, so the decoded image waits for that layer if needed."""

    def __init__(self, viewer, token: int, adata, source, *, replace: bool):
        self.viewer_ref = weakref.ref(viewer)
        self.token, self.adata, self.source, self.replace = token, adata, source, replace
        self.anchor = None
        self.outcome = None
        self.worker = self.progress = None
        viewer.layers.events.inserted.connect(self._on_inserted)

    def _is_anchor(self, layer) -> bool:
        meta = layer.metadata or {}
        if self.replace:
            return meta.get("trihrge", {}).get("loading_token") == self.token
        return meta.get("adata") is self.adata

    def _on_inserted(self, event) -> None:
        if self.anchor is None and self._is_anchor(event.value):
            self.anchor = weakref.ref(event.value)
            if self.outcome is not None:
                from qtpy.QtCore import QTimer

                QTimer.singleShot(0, self._place)  # not while napari is still inserting

    def on_decoded(self, outcome) -> None:
        from .._reader import notify_image_problem

        status, value = outcome
        if status != "ok":
            if status == "error":
                notify_image_problem(self.adata, value)
            self.on_finished()
            return
        self.outcome = outcome
        if self.anchor is not None:
            self._place()

    def on_finished(self) -> None:
        if self.outcome is None and self.token in ACTIVE:
            layer = self.anchor and self.anchor()
            if layer is not None and self.replace:
                layer.name = layer.name.replace("; full resolution loading", "")
            self.finish()

    def finish(self) -> None:
        if ACTIVE.pop(self.token, None) is None:
            return  # finished already
        viewer = self.viewer_ref()
        if viewer is not None:
            viewer.layers.events.inserted.disconnect(self._on_inserted)

    def _place(self) -> None:
        """In the viewer's thread: put the full image where the preview is (or below the
        spots); nothing when the user removed that layer meanwhile."""
        from napari.layers import Layer

        self.finish()
        viewer, anchor = self.viewer_ref(), self.anchor()
        if viewer is None or anchor is None or anchor not in viewer.layers:
            return
        index = list(viewer.layers).index(anchor)
        data, kwargs, kind = self.outcome[1]
        meta = kwargs["metadata"]["trihrge"]
        source = anchor.metadata.get("trihrge", {}).get("source") or self.source
        if source:
            meta["source"] = str(source)
        if self.replace:
            kwargs["visible"] = anchor.visible
            kwargs["opacity"] = anchor.opacity
        viewer.layers.insert(index, Layer.create(data, kwargs, kind))
        if self.replace and anchor in viewer.layers:
            viewer.layers.remove(anchor)
