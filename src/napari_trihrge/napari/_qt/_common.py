"""Small Qt helpers shared by the dock widgets."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QSizePolicy

from ._worker import Outcome


def heading(text: str) -> QLabel:
    lab = QLabel(f"<b>{text}</b>")
    lab.setTextFormat(Qt.RichText)
    return lab


def note(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
    return lab


def hline() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.HLine)
    line.setFrameShadow(QFrame.Sunken)
    return line


def listen(owner, signal, slot) -> None:
    """Connect ``slot`` to a session-model event (a psygnal signal) for as long as the Qt
    widget ``owner`` lives: a closed dock is never called back."""
    signal.connect(slot)
    owner.destroyed.connect(lambda *_: signal.disconnect(slot, missing_ok=True))


def report_outcome(outcome: Outcome, what: str) -> bool:
    """Notify the user of a failed or cancelled outcome; True when it succeeded."""
    if outcome.status == "ok":
        return True
    if outcome.status == "cancelled":
        show_info(f"{what} cancelled")
    else:
        show_error(f"{what} failed: {outcome.message}")
    return False


def notify_error(exc: BaseException, what: str) -> None:
    """An exception raised on the GUI thread becomes a notification."""
    from ...errors import EncoderAccessError, TrihrgeInputError

    if isinstance(exc, TrihrgeInputError | EncoderAccessError):
        show_error(f"{what}: {exc}")
    else:
        show_error(f"{what} failed: {type(exc).__name__}: {exc}")


__all__ = ["heading", "note", "hline", "listen", "report_outcome", "notify_error", "show_warning"]
