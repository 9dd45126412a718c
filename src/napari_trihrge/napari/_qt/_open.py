"""The reader hook napari calls (``napari.yaml``): :func:`napari_trihrge.napari._reader.get_reader`
(Qt-free) with what a viewer needs around it: the viewer's TriHRGE session (it names the shown
gene and replaces a sample opened twice) and large JPEG/PNG images decoded in the background
(:mod:`._image_loader`)."""

from __future__ import annotations

from typing import Any

from .. import _reader


def get_reader(path: str | list[str]):
    """napari reader hook: the Qt-free reader of ``path`` (None when it is not ours), run with
    the background image loader lent, after the viewer got its session."""
    reader = _reader.get_reader(path)
    if reader is None:
        return None
    with_session = _attach_session()

    def read(p: Any) -> list:
        from ._image_loader import load_full_image_later

        token = _reader.LARGE_IMAGE_LOADER.set(load_full_image_later)
        # a map store's networks run in the session's worker, not in the viewer's thread
        deferred = _reader.DEFER_MAPS.set(with_session)
        try:
            return reader(p)
        finally:
            _reader.DEFER_MAPS.reset(deferred)
            _reader.LARGE_IMAGE_LOADER.reset(token)

    return read


def _attach_session() -> bool:
    """Make sure the viewer that opens our layers has a TriHRGE session: it names the shown
    gene on the canvas, replaces a sample opened a second time instead of duplicating it, and
    computes a map store's maps in a worker. True when the viewer has one."""
    try:
        from napari import current_viewer

        viewer = current_viewer()
        if viewer is not None:
            from ._session import get_session

            get_session(viewer)
            return True
    except Exception:  # noqa: BLE001 - no Qt or no viewer: plain layers still open
        pass
    return False
