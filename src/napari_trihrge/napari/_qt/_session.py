"""The layer view of one viewer's session: draws what the Qt-free session model decides.

The state (sample, results, shown gene, scores) and its events live in
:class:`napari_trihrge.napari.session.SessionModel`; the dock widgets talk to it, not to each
other. :class:`LayerView` listens to the model and to the viewer's layer list: it adds the layers
of finished runs, recolours every TriHRGE layer when a gene is shown, names the gene on the
canvas, and tells the model about layers opened elsewhere (the reader, File > Open Sample, a
script). The AnnData lives on the spots layer (``layer.metadata['adata']``, the
napari-spatialdata convention). Nothing secret is kept: the Hugging Face token is read from the
Sample widget's field at the moment a run starts.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import numpy as np

from .. import layers as L
from ..session import GeneDisplay, SessionModel

_SESSIONS: dict[int, tuple[SessionModel, LayerView]] = {}


def unwrap_viewer(viewer):
    """The viewer itself: napari hands plugin widgets a ``PublicOnlyProxy``, a new one per
    widget, so identity (one session per viewer) and speed (every attribute access through the
    proxy inspects the call stack) need the wrapped object. Only public API is used on it."""
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer) -> SessionModel:
    """The one session model of ``viewer`` (created with its :class:`LayerView` on first use)."""
    return _model_and_view(viewer)[0]


def get_view(viewer) -> LayerView:
    """The :class:`LayerView` drawing ``viewer``'s session."""
    return _model_and_view(viewer)[1]


def _model_and_view(viewer) -> tuple[SessionModel, LayerView]:
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    pair = _SESSIONS.get(key)
    if pair is None or pair[1].viewer is not viewer:
        prefer_this_reader()
        model = SessionModel()
        pair = (model, LayerView(viewer, model))
        _SESSIONS[key] = pair
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return pair


#: paths whose reader napari is told to remember as this plugin (when the user has not chosen):
#: Space Ranger ``outs`` folders and the maps TriHRGE writes; the builtins would otherwise ask
READER_PATTERNS = ("*/outs/", "*.ome.tif", "*.ome.tiff", "*.ome.zarr/")


def prefer_this_reader(patterns=READER_PATTERNS) -> list[str]:
    """Record napari-trihrge as the reader of ``patterns`` in napari's reader preferences
    (Preferences > Plugins), unless the user already chose one; returns the patterns set.
    Dropping a Space Ranger ``outs`` folder or a TriHRGE map then opens it with no chooser."""
    try:
        from napari.settings import get_settings

        prefs = get_settings().plugins.extension2reader
    except Exception:  # noqa: BLE001 - settings unavailable: the chooser stays
        return []
    new = {pat: "napari-trihrge" for pat in patterns if pat not in prefs}
    if new:
        get_settings().plugins.extension2reader = {**prefs, **new}
    return list(new)


def layer_kind(layer) -> str | None:
    return (layer.metadata or {}).get("trihrge", {}).get("kind")


#: layers placed with their sample (each sample in its own place, side by side)
PLACED_KINDS = ("image", "spots", "virtual", "recovered", "map", "spread")
#: the canvas label's lines are wrapped at this many characters (they fit a narrow canvas)
CANVAS_LABEL_WIDTH_CHARS = 56
#: gap between two samples, as a share of the wider one's width
SAMPLE_GAP_FRACTION = 0.08


class LayerView:
    """Draws one viewer's :class:`SessionModel` on napari layers (see the module docstring)."""

    def __init__(self, viewer, model: SessionModel):
        self._viewer_ref = weakref.ref(viewer)
        self.model = model
        #: where the gene label sits (bottom left while side-by-side panels carry their labels)
        self.canvas_label_position = "top_left"
        self._raise_spots = False  # after an enhance run: the measured spots above the map
        self._select_result = False  # after a run: select the visible result layer once drawn
        #: where each sample sits (sample name -> row/col um added to its layers' translate)
        self._places: dict[str, np.ndarray] = {}
        self._sample_of_source: dict[str, str] = {}
        from ._display import keep_box_shaders
        from ._map_worker import MapPreparer

        keep_box_shaders()  # a new gene's label and scale redrawn without recompiling

        #: maps not ready (a map store's networks to run) are computed in workers, never here
        self.preparer = MapPreparer(self._on_map_ready, self._on_map_failed)
        model.defer_map = lambda maps, gene: not L.map_ready(maps, gene)
        model.result_added.connect(self._on_result)
        model.display_requested.connect(self._draw)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        viewer.layers.selection.events.active.connect(self._on_active)
        self._adopt_existing_layers(viewer)

    @property
    def viewer(self):
        return self._viewer_ref()

    def _adopt_existing_layers(self, viewer) -> None:
        """Layers opened before the first TriHRGE widget (File > Open Sample, a script): guard
        their hover values, hand their data to the model and name the gene the spots show."""
        from types import SimpleNamespace

        for layer in list(viewer.layers):
            if layer_kind(layer) in ("map", "spread", "spots", "virtual", "recovered"):
                self._on_inserted(SimpleNamespace(value=layer))

    # -- layers opened anywhere -----------------------------------------------------------
    def _on_inserted(self, event) -> None:
        layer = event.value
        kind = layer_kind(layer)
        meta = layer.metadata or {}
        if kind in PLACED_KINDS:
            self.place(layer)
        if kind in ("map", "spread"):
            from ._display import hide_values_outside_tissue

            hide_values_outside_tissue(layer)
        if kind == "image" and self._reuse_open_image(layer):
            return
        self._replace_earlier_copy(layer)
        if kind in ("image", "spots", "map"):
            from ._display import show_scale_bar

            show_scale_bar(self.viewer)
        if kind == "image":
            self._put_under_results(layer)
        model = self.model
        if model.gene is not None and L.cells_of_layer(layer) is not None:
            from ._display import recolour_cells

            recolour_cells(layer, model.gene, model.contrast_limits)
        if kind == "spots" and "adata" in meta:
            model.set_sample(meta["adata"])
            gene = meta.get("trihrge", {}).get("gene")
            if gene:  # the reader coloured the spots by a gene: say which, on the canvas too
                shown = {"spots": True, "map": False, "map_missing": ""}
                self.describe_on_canvas(gene, shown)
                model.adopt_gene(gene, layer.face_contrast_limits, shown)
        elif kind in ("virtual", "recovered") and meta.get("adata") is not None:
            model.add_source(kind, meta["adata"], sample=meta.get("trihrge", {}).get("sample"))
        elif kind == "map" and meta.get("maps") is not None:
            model.add_source("map", meta["maps"], sample=meta.get("trihrge", {}).get("sample"))
            gene = meta.get("trihrge", {}).get("gene")
            if meta.get("trihrge", {}).get("pending") and gene:  # opened before computed
                self.preparer.request(meta["maps"], gene)

    # -- each sample in its own place -----------------------------------------------------
    def layer_sample(self, layer) -> str | None:
        """The sample a layer shows: recorded on it, else that of the layers opened from the
        same source (a run folder's map), else None."""
        meta = (layer.metadata or {}).get("trihrge", {})
        name, source = meta.get("sample"), meta.get("source")
        if name:
            if source:
                self._sample_of_source.setdefault(str(source), str(name))
            return str(name)
        return self._sample_of_source.get(str(source)) if source else None

    def of_current_sample(self, layer) -> bool:
        """Whether ``layer`` belongs to the sample shown now (any layer when none is: a
        reopened run folder without its sample)."""
        sample = self.model.sample_name
        return sample is None or self.layer_sample(layer) in (None, sample)

    def offset_rc_um(self, sample: str | None = None) -> np.ndarray:
        """Where ``sample`` (default: the current one) sits in the viewer: world row/col um =
        the engine's row/col um + this offset ((0, 0) for the first sample opened)."""
        name = sample if sample is not None else self.model.sample_name
        return np.array(self._places.get(name, (0.0, 0.0)), dtype=float)

    def place(self, layer, sample: str | None = None) -> None:
        """Move ``layer`` to its sample's place: the first sample at the origin, each further
        sample to the right of everything open, never on top of another section."""
        name = sample or self.layer_sample(layer)
        if name is None and layer_kind(layer) in ("map", "spread", "virtual", "recovered"):
            name = self.model.sample_name  # a result drawn by this view: the current sample
        if name is None:
            return
        meta = layer.metadata.setdefault("trihrge", {})
        meta["sample"] = name
        if name not in self._places:
            self._places[name] = self._free_place(layer)
        offset = self._places[name]
        applied = np.asarray(meta.get("offset_rc_um", (0.0, 0.0)), dtype=float)
        if np.allclose(applied, offset):
            return
        translate = np.asarray(layer.translate, dtype=float).copy()
        translate[-2:] += offset - applied
        layer.translate = translate
        meta["offset_rc_um"] = tuple(float(v) for v in offset)

    def _free_place(self, layer) -> np.ndarray:
        viewer = self.viewer
        placed = [lay for lay in (viewer.layers if viewer is not None else [])
                  if lay is not layer and layer_kind(lay) in PLACED_KINDS
                  and (lay.metadata or {}).get("trihrge", {}).get("sample") in self._places]
        if not placed:
            return np.zeros(2)
        right = max(float(lay.extent.world[1][-1]) for lay in placed)
        left = min(float(lay.extent.world[0][-1]) for lay in placed)
        own = np.asarray(layer.extent.world, dtype=float)
        gap = SAMPLE_GAP_FRACTION * max(right - left, own[1][-1] - own[0][-1])
        return np.array([0.0, right + gap - own[0][-1]])

    def _on_active(self, event=None) -> None:
        """Selecting a layer of another open sample makes that sample current (its results,
        colour scale and trust come with it)."""
        viewer = self.viewer
        layer = viewer.layers.selection.active if viewer is not None else None
        if layer is None or layer_kind(layer) not in PLACED_KINDS:
            return
        if layer_kind(layer) == "spread":  # its pixels, if pending, before it is read
            from ._display import fill_spread

            fill_spread(layer)
        name = self.layer_sample(layer)
        if name is None or name == self.model.sample_name:
            return
        spots = next((lay for lay in viewer.layers if layer_kind(lay) == "spots"
                      and (lay.metadata or {}).get("adata") is not None
                      and self.layer_sample(lay) == name), None)
        if spots is not None:
            self.model.set_sample(spots.metadata["adata"])

    def _reuse_open_image(self, layer) -> bool:
        """The same H&E (same pixels) open already from another source (the sample and its
        run folder): the open layer is kept and the new one is removed; True then."""
        meta = (layer.metadata or {}).get("trihrge", {})
        key, source = meta.get("image_key"), meta.get("source")
        viewer = self.viewer
        if not key or viewer is None:
            return False
        same = [lay for lay in viewer.layers if lay is not layer and layer_kind(lay) == "image"
                and (lay.metadata or {}).get("trihrge", {}).get("image_key") == key
                and not (source and (lay.metadata or {}).get("trihrge", {}).get("source")
                         == source)]  # the same source again: replaced, see below
        if not same:
            return False
        from napari.utils.notifications import show_info
        from qtpy.QtCore import QTimer

        def remove():
            if layer in viewer.layers:
                viewer.layers.remove(layer)

        QTimer.singleShot(0, remove)  # not while napari is still inserting
        show_info(f"This H&E is open already ({same[0].name}): that layer is used")
        return True

    def _put_under_results(self, image) -> None:
        """An H&E opened after maps or spots goes under them (never hides a result)."""
        viewer = self.viewer
        if viewer is None:
            return
        layers = list(viewer.layers)
        above = [i for i, lay in enumerate(layers) if lay is not image and layer_kind(lay) in
                 ("map", "spread", "spots", "virtual", "recovered", "regions")]
        if above and layers.index(image) > above[0]:
            from qtpy.QtCore import QTimer

            def move():
                if image in viewer.layers:
                    now = list(viewer.layers)
                    first = min((now.index(lay) for lay in now if lay is not image and
                                 layer_kind(lay) in ("map", "spread", "spots", "virtual",
                                                     "recovered", "regions")), default=None)
                    if first is not None and now.index(image) > first:
                        viewer.layers.move(now.index(image), first)

            QTimer.singleShot(0, move)  # not while napari is still inserting

    def _on_removed(self, event) -> None:
        layer = event.value
        kind = layer_kind(layer)
        if kind in ("virtual", "recovered"):  # a removed map comes back with the next gene
            self.model.remove_source(kind, (layer.metadata or {}).get("adata"))
        maps = (layer.metadata or {}).get("maps")
        viewer = self.viewer
        if kind == "map" and maps is not None and self._other_map_open(layer, maps):
            # another map of the sample stays open (a region removed from over the whole
            # section): that one shows the next gene, not the removed one
            self.model.remove_source("map", maps)
        if kind == "map" and maps is not None and self.preparer.busy(maps) and not any(
                (lay.metadata or {}).get("maps") is maps and layer_kind(lay) == "map"
                for lay in (viewer.layers if viewer is not None else [])):
            self.preparer.cancel(maps)  # its map layer closed (or the viewer): stop its work

    def _other_map_open(self, layer, maps) -> bool:
        """Whether a map layer of other maps than ``maps`` is open for ``layer``'s sample."""
        sample = self.layer_sample(layer)  # None: any sample
        viewer = self.viewer
        return any(layer_kind(lay) == "map" and (lay.metadata or {}).get("maps") is not maps
                   and (sample is None or self.layer_sample(lay) in (None, sample))
                   for lay in (viewer.layers if viewer is not None else []))

    def _pending_layers(self, maps, gene: str) -> list:
        """The layers (map and spread) of ``maps`` that wait for ``gene``'s map."""
        viewer = self.viewer
        return [layer for layer in (viewer.layers if viewer is not None else [])
                if (layer.metadata or {}).get("maps") is maps
                and layer.metadata.get("trihrge", {}).get("pending")
                and layer.metadata["trihrge"].get("gene") == gene]

    def _on_map_failed(self, maps, gene: str) -> None:
        """A worker could not compute ``gene``'s map (the notification says why): its pending
        layers stay empty and say so."""
        for layer in self._pending_layers(maps, gene):
            layer.name = f"enhanced {gene}: map not computed" if layer_kind(layer) == \
                "map" else f"{L.spread_layer_name(gene)}: not computed"

    def _on_map_ready(self, maps, gene: str) -> None:
        """A worker computed ``gene``'s map of ``maps``: show it where it is still wanted (the
        gene shown now, else the gene a pending map layer of these maps waits for)."""
        if self.viewer is None:
            return
        model = self.model
        if model.maps() is maps and model.gene is not None:
            if model.gene == gene or L.map_ready(maps, model.gene):
                model.show_gene(model.gene, asked=False)
            else:
                self.preparer.request(maps, model.gene)
            return
        from ._display import set_map_gene

        # another map of this sample (drawn on the shown gene's scale), another sample's map,
        # or no session gene yet (on the map's own scale)
        layers = [lay for lay in self._pending_layers(maps, gene) if layer_kind(lay) == "map"]
        if layers:
            values = L.map_values(maps, gene)
            own = L.shared_contrast_limits(values)
        for layer in layers:
            layer.metadata["trihrge"].pop("pending", None)
            shown_scale = model.gene == gene and model.contrast_limits is not None \
                and self.of_current_sample(layer)
            set_map_gene(layer, maps, gene, values, model.contrast_limits if shown_scale else own)

    def _replace_earlier_copy(self, layer) -> None:
        """Opening the same sample or run again replaces its earlier layers (same kind, same
        source path) instead of duplicating them."""
        meta = (layer.metadata or {}).get("trihrge", {})
        source, kind = meta.get("source"), meta.get("kind")
        viewer = self.viewer
        if not source or viewer is None:
            return
        old = [lay for lay in viewer.layers if lay is not layer and layer_kind(lay) == kind
               and (lay.metadata or {}).get("trihrge", {}).get("source") == source]
        if not old:
            return
        from napari.utils.notifications import show_info
        from qtpy.QtCore import QTimer

        def remove():
            for lay in old:
                if lay in viewer.layers:
                    viewer.layers.remove(lay)
            # napari named the copy 'name [1]' while both existed
            if layer in viewer.layers and re.fullmatch(re.escape(old[0].name) + r" \[\d+\]",
                                                       layer.name):
                layer.name = old[0].name

        QTimer.singleShot(0, remove)  # not while napari is still inserting
        if kind == "spots":
            show_info(f"{source} was open already: its earlier layers were replaced")

    def find_layer(self, kind: str):
        """The topmost layer of ``kind`` ('spots', 'map', 'image', 'recovered', 'virtual')
        belonging to the current sample when the layer records one."""
        viewer = self.viewer
        if viewer is None:
            return None
        sample = self.model.adata
        name = self.model.sample_name
        for layer in reversed(list(viewer.layers)):
            if layer_kind(layer) != kind:
                continue
            if kind == "spots" and sample is not None and \
                    layer.metadata.get("adata") is not sample:
                continue
            owner = layer.metadata.get("trihrge", {}).get("sample")
            if name is not None and owner is not None and owner != name:
                continue  # another sample's layer
            return layer
        return None

    # -- finished runs --------------------------------------------------------------------
    def _on_result(self, task: str, result) -> None:
        """A run finished: its predicted spots as their own layer (replacing the earlier one),
        hidden under a dense map when there is one."""
        kind = L.RESULT_LAYERS[task][0]
        pred = result.predictions if task == "recovery" else result.virtual
        gene = self.model.default_gene(task, result)
        data, kwargs, _ = L.result_spots_layer(pred, task, [gene], color_by=gene)
        kwargs["metadata"]["trihrge"]["sample"] = self.model.result_sample(pred)
        old = self.find_layer(kind)
        if old is not None:
            self.viewer.layers.remove(old)
        layer = self.viewer.add_points(data, **kwargs)
        self._select_result = True
        if task == "recovery":
            return
        has_maps = getattr(result, "maps", None) is not None
        # the dense map is the main view; the predicted spots stay available but hidden
        layer.visible = not has_maps
        if task == "enhance" and has_maps:
            rec = self.find_layer("recovered")
            if rec is not None:
                rec.visible = False
            self._raise_spots = True

    # -- the shown gene -------------------------------------------------------------------
    def _draw(self, plan: GeneDisplay) -> None:
        """Colour every TriHRGE layer by the gene on ONE shared colour scale; layers without
        the gene (a map of other genes, predictions of other genes) are hidden, never left on
        an earlier gene. Refines ``plan.shown`` with what was drawn."""
        from ._display import ensure_map_layer, set_map_gene, set_points_gene, show_spread

        gene, limits, shown = plan.gene, plan.limits, plan.shown
        colormap = self.model.colormap
        viewer = self.viewer
        for kind in ("spots", "recovered", "virtual"):
            lay = self.find_layer(kind)
            shown[kind] = lay is not None and kind in plan.values
            if shown[kind]:
                set_points_gene(lay, gene, plan.values[kind], limits, colormap)
            elif lay is not None and lay.visible:
                # other genes only (predictions): never leave them on the previous gene
                lay.visible = False
        if plan.map_pending:  # computed in a worker, then drawn again (_on_map_ready)
            from ._display import set_map_pending

            name = self.model.sample_name
            layer = ensure_map_layer(viewer, plan.maps, gene, limits, colormap, sample=name,
                                     pending=True)
            self.place(layer)
            spread = next((lay for lay in viewer.layers if layer_kind(lay) == "spread"
                           and (lay.metadata or {}).get("trihrge", {}).get("sample")
                           in (None, name)), None)
            set_map_pending(layer, spread, plan.maps, gene)
            if not layer.visible:
                layer.visible = True
            self.preparer.request(plan.maps, gene)
            drawn = layer
        elif plan.map_values is not None:
            name = self.model.sample_name
            layer = ensure_map_layer(viewer, plan.maps, gene, limits, colormap, sample=name)
            drawn = layer
            self.place(layer)
            layer.metadata.setdefault("trihrge", {}).pop("pending", None)
            set_map_gene(layer, plan.maps, gene, plan.map_values, limits)
            shown["spread"] = show_spread(viewer, plan.maps, gene, sample=name)
            if not layer.visible:  # napari redraws a layer on every visible = True
                layer.visible = True
        else:
            drawn = None
            for kind in ("map", "spread"):
                lay = self.find_layer(kind)
                if lay is not None:
                    lay.visible = False
                    meta = lay.metadata.setdefault("trihrge", {})
                    meta["gene"] = None
                    meta.pop("pending", None)  # a hidden spread's pixels are not due any more
                    lay.name = f"{'enhanced' if kind == 'map' else 'ensemble spread'}: " \
                               f"no map for {gene}"
        for lay in list(viewer.layers):
            if layer_kind(lay) == "map" and lay is not drawn and self.of_current_sample(lay):
                self._draw_other_map(lay, gene, limits)
        from ._display import recolour_cells

        for lay in list(viewer.layers):  # cells layers: one colour per cell, never recomputed
            recolour_cells(lay, gene, limits)
        if self._raise_spots:
            self._raise_spots = False
            spots = self.find_layer("spots")
            if spots is not None:  # the measured spots on top of the map
                viewer.layers.move(viewer.layers.index(spots), len(viewer.layers))
        self.describe_on_canvas(gene, shown)
        if self._select_result:
            self._select_result = False
            self.select_shown_result(shown)

    def _draw_other_map(self, layer, gene: str, limits: tuple[float, float]) -> None:
        """Another map layer of the sample (the whole section at every n-th pixel under a
        region at full resolution, a region exported from the run): ``gene``'s map when its
        maps have the gene (computed in a worker when not ready), else hidden, never left on
        an earlier gene."""
        from ._display import set_map_gene, set_map_pending

        meta = layer.metadata.setdefault("trihrge", {})
        maps = layer.metadata.get("maps")
        if maps is None or gene not in list(maps.gene_names):
            if layer.visible:
                layer.visible = False
                meta["hidden_without_gene"] = True
            return
        if meta.get("gene") != gene:
            if L.map_ready(maps, gene):
                set_map_gene(layer, maps, gene, L.map_values(maps, gene), limits)
            else:
                set_map_pending(layer, None, maps, gene)
                self.preparer.request(maps, gene)
        if meta.pop("hidden_without_gene", False):
            layer.visible = True

    def select_shown_result(self, shown: dict[str, Any]) -> None:
        """Select the visible result layer (the map, else the predicted spots), never the
        hidden spread layer, so the layer controls act on what is seen."""
        for kind in ("map", "virtual", "recovered"):
            lay = self.find_layer(kind)
            if shown.get(kind) and lay is not None and lay.visible:
                self.viewer.layers.selection.active = lay
                return

    def describe_on_canvas(self, gene: str, done: dict[str, Any]) -> None:
        """Name the shown gene, its units and its trust on the canvas, with one colour bar."""
        from ._display import show_canvas_label, show_colorbar

        viewer = self.viewer
        if viewer is None:
            return
        trust = self.model.trust(gene)
        # with several sections open, each keeps its own gene: say which section shows this one
        sections = {self.layer_sample(lay) for lay in viewer.layers if layer_kind(lay) == "spots"}
        named = (f"{gene} on {self.model.sample_name}"
                 if len(sections) > 1 and self.model.sample_name else gene)
        lines = [f"{named}: {L.EXPRESSION_UNITS}"]
        if len(lines[0]) > CANVAS_LABEL_WIDTH_CHARS:  # the units on a line of their own
            head, _, tail = L.EXPRESSION_UNITS.partition(", ")
            lines = [f"{named}: {head},", tail]
        warn = False
        if done.get("map") or done.get("recovered") or done.get("virtual"):
            lines.append(f"prediction {L.trust_text(trust)}")
            warn = L.trust_warns(trust)
        if done.get("map_pending"):
            lines.append(f"map of {gene} being computed: shown when ready")
        if done.get("map_missing"):
            lines.append(f"no enhanced map for {gene} (map hidden):")
            lines.append("add it to Extra genes and run Enhance again")
            warn = True
        import textwrap

        nbsp = "\u00a0"  # never break a number such as '10 000'
        lines = [part.replace(nbsp, " ") for line in lines for text in line.split("\n")
                 for part in textwrap.wrap(re.sub(r"(\d) (\d)", rf"\1{nbsp}\2", text),
                                           CANVAS_LABEL_WIDTH_CHARS) or [""]]
        show_canvas_label(viewer, "\n".join(lines), warn=warn,
                          position=self.canvas_label_position)
        keep = None
        for kind in ("map", "virtual", "recovered", "spots"):
            lay = self.find_layer(kind)
            if done.get(kind) and lay is not None and lay.visible:
                keep = lay
                break
        show_colorbar(list(viewer.layers), keep)
        map_layer = self.find_layer("map")
        if map_layer is not None and done.get("map"):
            mark = L.trust_warns(trust)  # orange on a bare slide too (trust from elsewhere)
            map_layer.metadata["trihrge"]["beats_interpolation"] = (
                None if trust is None or not trust["measured_here"]
                else trust["beats_interpolation"])
            map_layer.name = f"enhanced {gene}" + map_layer.metadata["trihrge"].get(
                "name_suffix", "") + (" (not better than interpolation)" if mark else "")
