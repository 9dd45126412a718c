"""Per-viewer state shared by the dock widgets (sample, results, displayed gene).

The widgets are independent docks; they meet here. The AnnData itself lives on the spots layer
(``layer.metadata['adata']``, the napari-spatialdata convention), so layers opened by the reader,
by File > Open Sample or by the Sample widget all work the same way. Nothing secret is kept: the
Hugging Face token is read from the Sample widget's field at the moment a run starts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from .. import layers as L

_SESSIONS: dict[int, Session] = {}


def unwrap_viewer(viewer):
    """The viewer itself: napari hands plugin widgets a ``PublicOnlyProxy``, a new one per
    widget, so identity (one session per viewer) and speed (every attribute access through the
    proxy inspects the call stack) need the wrapped object. Only public API is used on it."""
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer) -> Session:
    """The one :class:`Session` of ``viewer`` (created on first use)."""
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    s = _SESSIONS.get(key)
    if s is None or s.viewer is not viewer:
        prefer_this_reader()
        s = Session(viewer)
        _SESSIONS[key] = s
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return s


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


class Session(QObject):
    """Shared state of one viewer; signals tell the widgets what changed."""

    sample_changed = Signal(object)  # AnnData
    recovery_changed = Signal(object)  # RecoveryResult
    enhance_changed = Signal(object)  # EnhanceResult
    gene_changed = Signal(str)
    layers_changed = Signal()  # result layers opened (e.g. a run folder from the reader)

    def __init__(self, viewer):
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self._adata = None
        self.recovery = None
        self.enhance = None
        self.gene: str | None = None
        #: where the gene label sits (bottom left while side-by-side panels carry their labels)
        self.canvas_label_position = "top_left"
        #: what the last show_gene updated (for the widgets' messages)
        self.last_shown: dict[str, Any] = {}
        self.contrast_limits: tuple[float, float] | None = None
        self.colormap = L.DEFAULT_COLORMAP
        # set by the Sample widget; called when a run starts, never stored
        self.encoder: Callable[[], str] = lambda: "stain-texture"
        self.token: Callable[[], str | None] = lambda: None
        self.device: Callable[[], str] = lambda: "auto"
        self._sample_layers_seen: set[int] = set()
        viewer.layers.events.inserted.connect(self._on_inserted)
        self._adopt_existing_layers(viewer)

    def _adopt_existing_layers(self, viewer) -> None:
        """Layers opened before the first TriHRGE widget (File > Open Sample, a script): guard
        their hover values and name the gene the spots are coloured by."""
        from types import SimpleNamespace

        for layer in list(viewer.layers):
            if layer_kind(layer) in ("map", "spread", "spots"):
                self._on_inserted(SimpleNamespace(value=layer))

    @property
    def viewer(self):
        return self._viewer_ref()

    # -- sample ---------------------------------------------------------------------------
    def _on_inserted(self, event) -> None:
        layer = event.value
        kind = layer_kind(layer)
        if kind in ("map", "spread"):
            from ._display import hide_values_outside_tissue

            hide_values_outside_tissue(layer)
        self._replace_earlier_copy(layer)
        if kind == "spots" and "adata" in layer.metadata:
            if self._adata is None or layer.metadata["adata"] is not self._adata:
                self.set_sample(layer.metadata["adata"])
            gene = layer.metadata.get("trihrge", {}).get("gene")
            if gene:  # the reader coloured the spots by a gene: say which, on the canvas too
                self.gene = gene
                self.contrast_limits = tuple(float(v) for v in layer.face_contrast_limits)
                self.last_shown = {"spots": True, "map": False, "map_missing": ""}
                self.describe_on_canvas(gene, self.last_shown)
                self.gene_changed.emit(gene)
        elif kind in ("map", "virtual", "recovered"):
            self.layers_changed.emit()

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

        QTimer.singleShot(0, remove)  # not while napari is still inserting
        if kind == "spots":
            show_info(f"{source} was open already: its earlier layers were replaced")

    @property
    def adata(self):
        """The current sample: the one set last, else the AnnData of a spots layer."""
        if self._adata is not None:
            return self._adata
        lay = self.find_layer("spots")
        return None if lay is None else lay.metadata.get("adata")

    def set_sample(self, adata) -> None:
        if adata is self._adata:
            return
        self._adata = adata
        self.recovery = None
        self.enhance = None
        self.sample_changed.emit(adata)

    # -- layers ---------------------------------------------------------------------------
    def find_layer(self, kind: str):
        """The topmost layer of ``kind`` ('spots', 'map', 'image', 'recovered', 'virtual')
        belonging to the current sample when the layer records one."""
        viewer = self.viewer
        if viewer is None:
            return None
        for layer in reversed(list(viewer.layers)):
            if layer_kind(layer) != kind:
                continue
            if kind == "spots" and self._adata is not None and \
                    layer.metadata.get("adata") is not self._adata:
                continue
            return layer
        return None

    def maps(self):
        """The enhanced maps: of the last run, else of a map layer (a reopened run folder)."""
        maps = getattr(self.enhance, "maps", None)
        if maps is None:
            layer = self.find_layer("map")
            maps = None if layer is None else layer.metadata.get("maps")
        return maps

    def genes(self) -> list[str]:
        """Every gene that can be shown: the sample's, the run's and the maps'."""
        names: dict[str, None] = {}
        ad = self.adata
        if ad is not None:
            names.update(dict.fromkeys(map(str, ad.var_names)))
        for kind in ("virtual", "recovered"):
            layer = self.find_layer(kind)
            if layer is not None and layer.metadata.get("adata") is not None:
                names.update(dict.fromkeys(map(str, layer.metadata["adata"].var_names)))
        maps = self.maps()
        if maps is not None:
            names.update(dict.fromkeys(map(str, maps.gene_names)))
        pred = getattr(self.recovery, "predictions", None)
        if pred is not None:
            names.update(dict.fromkeys(map(str, pred.var_names)))
        return list(names)

    # -- trust ---------------------------------------------------------------------------
    def trust(self, gene: str) -> dict | None:
        """How far ``gene``'s prediction can be trusted: the per-gene trust columns of the
        Enhance run behind the map, else of the last recovery, else of reopened outputs; None
        when it was not scored."""
        adatas = []
        if self.enhance is not None:  # the model behind the map first
            adatas += [getattr(self.enhance, name, None) for name in ("virtual", "spots")]
        tables = [(getattr(ad, "var", None), ad) for ad in adatas]
        if self.recovery is not None:
            tables += [(getattr(self.recovery, "per_gene", None), None),
                       (getattr(getattr(self.recovery, "predictions", None), "var", None), None)]
        for kind in ("virtual", "recovered"):
            layer = self.find_layer(kind)
            if layer is not None and layer.metadata.get("adata") is not None:
                tables.append((layer.metadata["adata"].var, layer.metadata["adata"]))
        maps = self.maps()
        tables.append((getattr(maps, "trust", None), None))
        for table, ad in tables:
            t = L.gene_trust(table, gene) if table is not None else None
            if t is not None:
                # a prediction on a slide where nothing was measured: trust from elsewhere
                t["measured_here"] = ad is None or L.measured_here(ad)
                return t
        return None

    # -- display --------------------------------------------------------------------------
    def show_gene(self, gene: str) -> dict[str, Any]:
        """Colour every TriHRGE layer by ``gene`` on ONE shared colour scale; layers without
        the gene (a map of other genes, predictions of other genes) are hidden, never left on an
        earlier gene. Returns what was updated (``spots``, ``map``, ``recovered``, ``virtual``:
        bool, ``limits``, ``map_missing``: why the map is hidden, or '')."""
        from ._display import ensure_map_layer, set_map_gene, set_points_gene, show_spread

        values: dict[str, np.ndarray] = {}
        spots = self.find_layer("spots")
        ad = self.adata
        if spots is not None and ad is not None and gene in ad.var_names:
            values["spots"] = _points_values(spots, gene)
        rec = self.find_layer("recovered")
        if rec is not None and gene in rec.metadata["adata"].var_names:
            values["recovered"] = _points_values(rec, gene)
        virt = self.find_layer("virtual")
        if virt is not None and gene in virt.metadata["adata"].var_names:
            values["virtual"] = _points_values(virt, gene)
        maps = self.maps()
        map_vals = None
        if maps is not None and gene in list(maps.gene_names):
            map_vals = L.map_values(maps, gene)
        if not values and map_vals is None:
            from ...errors import TrihrgeInputError

            raise TrihrgeInputError(f"gene {gene!r} is not in the sample or the enhanced maps",
                                    "pick a gene from the completion list")
        limits = L.shared_contrast_limits(map_vals, *values.values())
        done: dict[str, Any] = {"limits": limits, "map_missing": ""}
        for kind, lay in (("spots", spots), ("recovered", rec), ("virtual", virt)):
            done[kind] = kind in values
            if kind in values:
                set_points_gene(lay, gene, values[kind], limits, self.colormap)
            elif lay is not None and lay.visible:
                # predictions of other genes only: never leave them on the previous gene
                lay.visible = False
        done["map"] = map_vals is not None
        done["spread"] = False
        if map_vals is not None:
            layer = ensure_map_layer(self.viewer, maps, gene, limits, self.colormap)
            set_map_gene(layer, maps, gene, map_vals, limits)
            done["spread"] = show_spread(self.viewer, maps, gene)
            layer.visible = True
        else:
            for kind in ("map", "spread"):
                lay = self.find_layer(kind)
                if lay is not None:
                    lay.visible = False
                    lay.metadata.setdefault("trihrge", {})["gene"] = None
                    lay.name = f"{'enhanced' if kind == 'map' else 'ensemble spread'}: " \
                               f"no map for {gene}"
            if maps is not None:
                done["map_missing"] = (
                    f"No enhanced map for {gene}: it was not among the genes of the Enhance "
                    "run. Add it to Extra genes (Train and enhance) and run Enhance again.")
        self.gene = gene
        self.contrast_limits = limits
        self.last_shown = done
        self.describe_on_canvas(gene, done)
        self.gene_changed.emit(gene)
        return done

    def describe_on_canvas(self, gene: str, done: dict[str, Any]) -> None:
        """Name the shown gene, its units and its trust on the canvas, with one colour bar."""
        from ._display import show_canvas_label, show_colorbar

        viewer = self.viewer
        if viewer is None:
            return
        trust = self.trust(gene)
        lines = [f"{gene}: {L.EXPRESSION_UNITS}"]
        warn = False
        if done.get("map") or done.get("recovered") or done.get("virtual"):
            lines.append(f"prediction {L.trust_text(trust)}")
            warn = L.trust_warns(trust)
        if done.get("map_missing"):
            lines.append(f"no enhanced map for {gene} (map hidden):")
            lines.append("add it to Extra genes and run Enhance again")
            warn = True
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
            mark = trust is not None and trust["measured_here"] and L.trust_warns(trust)
            map_layer.metadata["trihrge"]["beats_interpolation"] = (
                None if trust is None or not trust["measured_here"]
                else trust["beats_interpolation"])
            map_layer.name = f"enhanced {gene}" + (" (not better than interpolation)"
                                                   if mark else "")


def _points_values(layer, gene: str) -> np.ndarray:
    feats = layer.features
    if gene in feats.columns:
        return feats[gene].to_numpy()
    return L.gene_expression(layer.metadata["adata"], [gene])[gene].to_numpy()
