"""Small Qt helpers shared by the dock widgets."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QSizePolicy, QWidget

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


class Panel(QWidget):
    """Base of the TriHRGE dock widgets: opened from the Plugins menu, a panel joins the
    other TriHRGE panels as a tab (:func:`tab_with_other_panels`)."""

    trihrge_panel = True

    def __init__(self, parent=None):
        super().__init__(parent)
        tab_with_other_panels(self)


def tab_with_other_panels(widget) -> None:
    """Once ``widget`` sits in its dock (Plugins menu, ``add_plugin_dock_widget``), put that
    dock in one tab group with the other TriHRGE panels of the window instead of stacking them
    (napari's menu does not tabify). Panels mark themselves with ``trihrge_panel = True``."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, lambda: _tabify(widget))


def _tabify(widget) -> None:
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    try:
        dock = widget.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
    except RuntimeError:  # the widget was deleted meanwhile
        return
    main = dock.parent() if dock is not None else None
    if not isinstance(main, QMainWindow) or dock.isFloating():
        return
    area = main.dockWidgetArea(dock)
    group = [d for d in main.findChildren(QDockWidget) if not d.isHidden()
             and main.dockWidgetArea(d) == area and not d.isFloating()
             and any(getattr(w, "trihrge_panel", False) for w in d.findChildren(QWidget))]
    if dock not in group or len(group) < 2:
        return
    anchor = group[0]  # one tab group: every panel joins the first one's
    for other in group[1:]:
        if other not in main.tabifiedDockWidgets(anchor):
            main.tabifyDockWidget(anchor, other)
    dock.show()
    dock.raise_()


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


__all__ = ["heading", "note", "hline", "listen", "report_outcome", "notify_error", "show_warning",
           "tab_with_other_panels", "Panel"]
