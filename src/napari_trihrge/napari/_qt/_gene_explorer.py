"""Dock widget 3 - Gene explorer: search a gene, recolour spots and map on one scale,
compare side by side, list the best-predicted genes."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QStringListModel, Qt, QTimer
from qtpy.QtGui import QColor, QImage, QPixmap
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
)

from .. import layers as L
from ._common import Panel, heading, hline, listen, note, notify_error
from ._display import WARN_COLOUR
from ._session import get_session, get_view, layer_kind, unwrap_viewer

TWIN_NAME = "H&E (side by side)"
#: genes listed under "Best predicted genes"
BEST_LISTED = 50
#: gap between the two side-by-side panels (canvas pixels)
PANEL_GAP_PX = 24

TOOLTIPS = {
    "search": "Type a gene symbol (case does not matter) and press Enter: the measured spots, "
              "the predicted spots and the enhanced map are all recoloured by it, on one "
              "shared colour scale.",
    "colorbar": "Colour scale shared by the measured spots, the predicted spots and the map: "
                "dark = low, bright = high log-normalised expression.",
    "scale": "The numbers at both ends of the colour bar: the 1st and 99.5th percentile of the "
             "shown gene over spots and map together. Values are ln(1 + counts per 10 000).",
    "side": "Show the measured spots (left) and the enhanced map (right) next to each other, "
            "with one shared camera. Untick to go back to the single view as it was.",
    "best": "Genes ordered by how well the last run predicted spots held out of its training "
            "(PCC: Pearson correlation between predicted and measured expression, 1 is "
            "perfect, 0 is no relation). 'kNN' is the same score for plain interpolation from "
            "the neighbouring spots; a gene marked orange, 'below interpolation', gains nothing "
            "from the image. Click a gene to show it.",
    "png": "Save exactly what the canvas shows as a PNG image.",
    "full": "A map too large to compute at once is shown at every n-th pixel. Zoom in on a "
            "region and press this: the region the canvas shows is added at the map's own "
            "pixel size, on top, for every gene you show next. Delete that layer to go back "
            "to the whole section.",
    "follow": "Follow the view: whenever the view stays still for a moment, zoomed in far "
              "enough, the region it shows is computed at the map's own pixel size (as the "
              "button does), replacing the region this added before. Each region takes "
              "seconds to a minute on a CPU; untick to keep the last one.",
}
#: follow mode computes the view's region this long after the view last moved (milliseconds)
FOLLOW_DELAY_MS = 1000
#: follow mode widens the view by this fraction of its size on every side (where the region
#: stays within what the viewer computes at once), so that a small pan stays inside it
FOLLOW_MARGIN = 0.25


def _colorbar_pixmap(name: str, width: int = 220, height: int = 12) -> QPixmap:
    from matplotlib import colormaps

    rgba = (colormaps[name](np.linspace(0, 1, width))[:, :3] * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(rgba[None], height, axis=0))
    qimg = QImage(img.data, width, height, 3 * width, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimg)


class GeneExplorer(Panel):
    """Choose a gene (search with completion over every gene); spots, predicted spots and the
    enhanced map are recoloured on ONE colour scale."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self.view = get_view(napari_viewer)

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
        self.full_btn = QPushButton("Map at full resolution in this view")
        self.full_btn.setToolTip(TOOLTIPS["full"])
        self.follow_check = QCheckBox("Follow the view at full resolution")
        self.follow_check.setToolTip(TOOLTIPS["follow"])
        self.best_list = QListWidget()
        self.best_list.setMinimumHeight(120)
        self.best_note = note("Run Enhance or Recovery to list the genes predicted best.")
        self.png_btn = QPushButton("Save view as PNG…")
        self.trust_label = note("")
        self.missing_label = note("")
        self.missing_label.setStyleSheet(f"color: {WARN_COLOUR}")
        self.search.setToolTip(TOOLTIPS["search"])
        self.show_btn.setToolTip(TOOLTIPS["search"])
        self.colorbar.setToolTip(TOOLTIPS["colorbar"])
        self.scale_label.setToolTip(TOOLTIPS["scale"])
        self.side_check.setToolTip(TOOLTIPS["side"])
        self.best_list.setToolTip(TOOLTIPS["best"])
        self.best_note.setToolTip(TOOLTIPS["best"])
        self.png_btn.setToolTip(TOOLTIPS["png"])
        self.trust_label.setToolTip(
            "Does the prediction of this gene beat plain interpolation? Held-out PCC of the "
            "model vs the better kNN interpolation (k = 6 or 12) on the same hidden spots.")
        self._saved_view: dict | None = None

        row = QHBoxLayout()
        row.addWidget(self.search, 1)
        row.addWidget(self.show_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Gene explorer"))
        lay.addLayout(row)
        lay.addWidget(self.current)
        lay.addWidget(self.missing_label)
        lay.addWidget(self.trust_label)
        lay.addWidget(self.colorbar)
        lay.addWidget(self.scale_label)
        lay.addWidget(self.side_check)
        lay.addWidget(self.full_btn)
        lay.addWidget(self.follow_check)
        lay.addWidget(hline())
        lay.addWidget(heading("Best predicted genes"))
        lay.addWidget(self.best_note)
        lay.addWidget(self.best_list, 1)
        lay.addWidget(self.png_btn)

        self.search.returnPressed.connect(self._on_enter)
        self.completer.activated[str].connect(self.show_gene)
        self.show_btn.clicked.connect(self._on_enter)
        self.side_check.toggled.connect(self.set_side_by_side)
        self.best_list.itemClicked.connect(self._on_best)
        self.png_btn.clicked.connect(self._save_png)
        self.full_btn.clicked.connect(self.show_full_resolution)
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(FOLLOW_DELAY_MS)
        self._follow_timer.timeout.connect(self.follow_view)
        self.follow_check.toggled.connect(self._on_view_moved)
        camera = _camera(self.viewer)
        for event in (camera.events.center, camera.events.zoom):
            event.connect(self._on_view_moved)
            self.destroyed.connect(lambda *_, e=event: e.disconnect(self._on_view_moved))
        for event, slot in ((self.session.sample_changed, self.refresh_genes),
                            (self.session.enhance_changed, self.refresh_genes),
                            (self.session.outputs_opened, self.refresh_genes),
                            (self.session.recovery_changed, self.refresh_genes),
                            (self.session.trust_changed, self._on_trust),
                            (self.session.gene_changed, self._on_gene_changed)):
            listen(self, event, slot)
        for event in (self.session.gene_changed, self.session.outputs_opened,
                      self.session.enhance_changed):
            listen(self, event, self._update_full_button)
        self.refresh_genes()
        self._update_full_button()
        self._on_trust(self.session.trust_table())
        if self.session.gene:
            self._on_gene_changed(self.session.gene)

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
                 if (lay.metadata or {}).get("trihrge", {}).get("gene") == gene
                 and self.view.of_current_sample(lay)]
        self.current.setText(f"<b>{gene}</b> on: {', '.join(shown) or 'no layer'}")
        done = self.session.last_shown or {}
        clipped = L.clipped_text(done.get("clipped") or {})
        self.scale_label.setText(f"{lo:.2f} … {hi:.2f}  {L.EXPRESSION_UNITS}; one scale "
                                 "covering spots and map (robust 1-99.5 % range of each)"
                                 + (f"; {clipped}" if clipped else ""))
        self.missing_label.setText(done.get("map_missing", ""))
        self.missing_label.setVisible(bool(done.get("map_missing")))
        trust = self.session.trust(gene)
        self.trust_label.setText(f"Prediction of {gene}: {L.trust_text(trust)}")
        self.trust_label.setStyleSheet(
            f"color: {WARN_COLOUR}" if L.trust_warns(trust) else "")
        if self._saved_view is not None:
            self._label_panels()

    # -- a region at the map's full resolution -------------------------------------------
    def _update_full_button(self, *_):
        maps = self.session.maps()
        coarser = maps is not None and getattr(maps, "whole", maps) is not maps
        self.full_btn.setVisible(coarser)
        self.follow_check.setVisible(coarser)

    def _on_view_moved(self, *_):
        if self.follow_check.isChecked():
            self._follow_timer.start()  # restarted while the view keeps moving

    def follow_view(self):
        """Follow mode: add the region in view at full resolution (:meth:`show_full_resolution`,
        quietly, with a margin around the view) unless the region it added last covers the
        view; that one is then removed (its work stops). A view too large, beside the map or
        shown whole changes nothing. Returns the new layer or None."""
        if not self.follow_check.isChecked() or self.follow_check.isHidden():
            return None
        previous = next((lay for lay in self.viewer.layers
                         if (lay.metadata or {}).get("trihrge", {}).get("follows_view")), None)
        if previous is not None and _covers(previous.metadata["maps"],
                                            *self.view_rectangle_um()):
            return None
        layer = self.show_full_resolution(quiet=True, margin=FOLLOW_MARGIN)
        if layer is not None:
            layer.metadata["trihrge"]["follows_view"] = True
            if previous is not None:
                self.viewer.layers.remove(previous)
        return layer

    def view_rectangle_um(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The rectangle the canvas shows, (rows, cols) as (start, stop) in micrometres of the
        current sample (the engine's coordinates: the sample's place in the viewer removed)."""
        camera = _camera(self.viewer)
        centre = np.asarray(camera.center, dtype=float)[-2:]
        half = _canvas_size_px(self.viewer) / float(camera.zoom) / 2  # canvas px -> um
        offset = self.view.offset_rc_um()
        lo, hi = centre - half - offset, centre + half - offset
        return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))

    def show_full_resolution(self, *, quiet: bool = False, margin: float = 0.0):
        """Add the shown gene's map of the region in view at the map's own pixel size (the
        shown map being every n-th pixel of a larger one), computed in a worker; it follows
        every gene shown next. Returns the new layer, or None with a message (none when
        ``quiet``: follow mode). ``margin``: the view widened by this fraction of its size on
        every side where that stays within what the viewer computes at once."""
        from ...tl._maps import displayed_maps

        say = (lambda text: None) if quiet else show_info
        maps = self.session.maps()
        gene = self.session.gene or next(  # a run folder opened: the gene its layer shows
            (lay.metadata["trihrge"].get("gene") for lay in reversed(self.viewer.layers)
             if (lay.metadata or {}).get("maps") is maps and maps is not None), None)
        full = getattr(maps, "whole", maps)
        if maps is None or full is maps or gene is None:
            say("The map is shown whole at its full resolution already.")
            return None
        rows_um, cols_um = self.view_rectangle_um()
        try:
            region = full.window(rows_um, cols_um)
        except Exception as exc:  # noqa: BLE001 - a notification, never a crash
            if not quiet:
                notify_error(exc, "No map in this view")
            return None
        if margin > 0:
            (r0, r1), (c0, c1) = rows_um, cols_um
            dr, dc = margin * (r1 - r0), margin * (c1 - c0)
            wider = full.window((r0 - dr, r1 + dr), (c0 - dc, c1 + dc))
            if displayed_maps(wider) is wider:
                region = wider
        same = next((lay for lay in self.viewer.layers if _same_region(
            (lay.metadata or {}).get("maps"), region)), None)
        if same is not None:
            say(f"This region is shown at full resolution already: {same.name}.")
            return None
        shown = displayed_maps(region)
        if shown is not region:
            say(f"This view holds {region.n_locations:,} map locations at "
                f"{full.stride_um:g} um, more than the viewer computes at once (about "
                f"{shown.n_locations:,}): zoom in and press the button again.")
            return None
        data, kwargs, _ = L.pending_map_layer(region, gene)
        meta = kwargs["metadata"]["trihrge"]
        meta["sample"] = self.session.sample_name
        meta["name_suffix"] = f" (full resolution, {full.stride_um:g} um)"
        kwargs["name"] += meta["name_suffix"]
        return self.viewer.add_image(data, **kwargs)  # the view computes it (a worker)

    # -- the run's per-gene trust ---------------------------------------------------------
    def _on_trust(self, table):
        """List the genes of the shown results by held-out PCC (session.trust_table): the
        best first, those below interpolation in orange."""
        self.best_list.clear()
        if table is None or not len(table):
            self.best_note.setText("Run Enhance or Recovery to list the genes predicted best.")
            return
        here = bool(table["measured_here"].iloc[0]) if "measured_here" in table else True
        n_listed = min(BEST_LISTED, len(table))
        n_worse = 0
        for gene, row in table.iloc[:n_listed].iterrows():
            trust = {**row.to_dict(), "measured_here": here}
            text = f"{gene}   PCC {row['pcc']:.2f}"
            if np.isfinite(row["pcc_baseline_knn"]):
                text += f"  kNN {row['pcc_baseline_knn']:.2f}  ({row['pcc_gain']:+.2f})"
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, str(gene))
            if L.trust_warns(trust):
                n_worse += 1
                item.setText(text + "  not better than interpolation")
                item.setForeground(QColor(WARN_COLOUR))
            item.setToolTip(f"{gene}: {L.trust_text(trust)}")
            self.best_list.addItem(item)
        beats = table["beats_interpolation"].map(lambda b: b is True)
        where = ("spots held out of this run's training" if here else
                 "spots held out in the model's training sections (nothing measured here)")
        self.best_note.setText(
            f"Held-out PCC of each gene ({where}), next to kNN interpolation and the gain; "
            f"click a gene to show it. {int(beats.sum())} of {len(table)} genes beat "
            f"interpolation; {n_worse} of the {n_listed} listed do not (orange).")

    def _on_best(self, item):
        self.show_gene(item.data(Qt.UserRole))

    # -- side by side ---------------------------------------------------------------------
    def set_side_by_side(self, on: bool) -> bool:
        """Grid mode, two labelled panels with one shared camera and a gap between them:
        H&E + measured spots on the left, H&E + the enhanced map (or the predicted spots) on
        the right. Leaving restores the layer order, names, visibility and camera."""
        v = self.viewer
        s = self.view
        grid = _grid(v)
        if not on:
            self._leave_side_by_side(grid)
            return True
        left = s.find_layer("spots")
        right = s.find_layer("map") if (s.find_layer("map") is not None and
                                        s.find_layer("map").visible) else None
        right = right or s.find_layer("recovered") or s.find_layer("virtual")
        img = s.find_layer("image")
        if left is None or right is None:
            show_info("Side by side needs the measured spots and a result: run Enhance (or "
                      "Recovery) first")
            self._set_check(False)
            return False
        if self._saved_view is None:
            layers = list(v.layers)
            self._saved_view = {
                "order": layers,
                "visible": {id(lay): lay.visible for lay in layers},
                "names": {id(lay): lay.name for lay in layers},
                "center": tuple(_camera(v).center), "zoom": float(_camera(v).zoom),
                "grid": (bool(grid.enabled), grid.stride, tuple(grid.shape),
                         float(getattr(grid, "spacing", 0.0))),
            }
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
        self._panels = (left, right)
        self._label_panels()
        # the panels carry their labels at the top left: the gene label moves out of their way
        s.canvas_label_position = "bottom_left"
        _text_overlay(v).position = "bottom_left"
        grid.stride = len(order) // 2
        grid.shape = (1, 2)
        if hasattr(grid, "spacing"):
            grid.spacing = PANEL_GAP_PX
        grid.enabled = True
        QApplication.processEvents()  # let the canvas build its grid views, then fit them
        v.reset_view()
        self._set_check(True)
        return True

    def _label_panels(self) -> None:
        """Name both panels on the canvas: what they show and which gene."""
        left, right = getattr(self, "_panels", (None, None))
        if left is None:
            return
        gene = self.session.gene or "no gene"
        kind = layer_kind(right)
        what = {"map": "enhanced map", "recovered": "predicted spots",
                "virtual": "enhanced spots"}.get(kind, "enhanced")
        if kind == "map" and right.name.endswith("(not better than interpolation)"):
            what += " (below kNN)"  # short: the panel label must fit its half of the canvas
        left.name = f"measured spots: {gene}"
        right.name = f"{what}: {gene}"
        for lay in (left, right):
            lay.name_overlay.visible = True
            lay.name_overlay.box = True
            lay.name_overlay.font_size = 12

    def _leave_side_by_side(self, grid) -> None:
        v = self.viewer
        for lay in list(v.layers):
            if layer_kind(lay) == "image-twin":
                v.layers.remove(lay)
        grid.enabled = False
        saved, self._saved_view = self._saved_view, None
        self.view.canvas_label_position = "top_left"
        _text_overlay(v).position = "top_left"
        self._panels = (None, None)
        if saved is not None:
            enabled, stride, shape, spacing = saved["grid"]
            grid.stride, grid.shape = stride, shape
            if hasattr(grid, "spacing"):
                grid.spacing = spacing
            kept = [lay for lay in saved["order"] if lay in v.layers]
            for i, lay in enumerate(kept):  # layers added meanwhile stay on top
                v.layers.move(v.layers.index(lay), i)
            for lay in kept:
                lay.name_overlay.visible = False
                lay.visible = saved["visible"][id(lay)]
                name = saved["names"][id(lay)]
                if lay.name.startswith(("measured spots: ", "enhanced map", "predicted spots: ",
                                        "enhanced spots: ")) and layer_kind(lay) != "map":
                    lay.name = name
            if self.session.gene and self.view.find_layer("map") is not None and \
                    self.view.find_layer("map").metadata["trihrge"].get("gene"):
                self.view.describe_on_canvas(self.session.gene, self.session.last_shown)
            _camera(v).center = saved["center"]
            _camera(v).zoom = saved["zoom"]
            grid.enabled = enabled
        else:
            grid.stride = 1
            grid.shape = (-1, -1)
        self._set_check(False)

    def _set_check(self, on: bool) -> None:
        if self.side_check.isChecked() != on:
            self.side_check.blockSignals(True)
            self.side_check.setChecked(on)
            self.side_check.blockSignals(False)

    # -- export ---------------------------------------------------------------------------
    def _save_png(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save the view", "view.png", "PNG (*.png)")
        if path:
            self.save_png(path)

    def save_png(self, path: str) -> None:
        """The current canvas (what you see) as a PNG."""
        self.viewer.screenshot(path, canvas_only=True)
        show_info(f"Saved {path}")


def _camera(viewer):
    """The camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _same_region(maps, region) -> bool:
    """Whether ``maps`` are the same part of the same whole maps as ``region``."""
    return maps is not None and getattr(maps, "whole", None) is region.whole \
        and maps.stride_um == region.stride_um and maps.mask.shape == region.mask.shape \
        and np.array_equal(maps.origin_rc_um, region.origin_rc_um)


def _covers(maps, rows_um: tuple[float, float], cols_um: tuple[float, float]) -> bool:
    """Whether the region ``maps`` (a window of larger maps) holds the rectangle in view, as
    far as the whole maps reach (to a pixel)."""
    whole = getattr(maps, "whole", maps)
    view = np.array([rows_um, cols_um], dtype=float).T  # (lo, hi) x (row, col)

    def extent(m) -> np.ndarray:
        origin = np.asarray(m.origin_rc_um, dtype=float)
        return np.array([origin, origin + (np.array(m.mask.shape) - 1) * m.stride_um])

    reach = extent(whole)
    view = np.clip(view, reach[0], reach[1])
    own = extent(maps)
    return bool(np.all(view[0] >= own[0] - maps.stride_um)
                and np.all(view[1] <= own[1] + maps.stride_um))


def _canvas_size_px(viewer) -> np.ndarray:
    """The canvas's (height, width) in screen pixels (``viewer.canvas.size`` since napari 0.6,
    ``viewer._canvas_size`` before)."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) if canvas is not None else None
    return np.asarray(size if size is not None else viewer._canvas_size, dtype=float)


def _text_overlay(viewer):
    from ._display import canvas_text_overlay

    return canvas_text_overlay(viewer)


def _grid(viewer):
    """The grid model (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


__all__ = ["GeneExplorer", "L"]
