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
        s = Session(viewer)
        _SESSIONS[key] = s
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return s


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
        self.contrast_limits: tuple[float, float] | None = None
        self.colormap = L.DEFAULT_COLORMAP
        # set by the Sample widget; called when a run starts, never stored
        self.encoder: Callable[[], str] = lambda: "stain-texture"
        self.token: Callable[[], str | None] = lambda: None
        self.device: Callable[[], str] = lambda: "auto"
        self._sample_layers_seen: set[int] = set()
        viewer.layers.events.inserted.connect(self._on_inserted)

    @property
    def viewer(self):
        return self._viewer_ref()

    # -- sample ---------------------------------------------------------------------------
    def _on_inserted(self, event) -> None:
        layer = event.value
        kind = layer_kind(layer)
        if kind == "spots" and "adata" in layer.metadata:
            if self._adata is None or layer.metadata["adata"] is not self._adata:
                self.set_sample(layer.metadata["adata"])
        elif kind in ("map", "virtual", "recovered"):
            self.layers_changed.emit()

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

    # -- display --------------------------------------------------------------------------
    def show_gene(self, gene: str) -> dict[str, Any]:
        """Colour every TriHRGE layer by ``gene`` on ONE shared colour scale; returns what was
        updated (``spots``, ``map``, ``recovered``, ``virtual``: bool, ``limits``)."""
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
            from ..errors import TrihrgeInputError

            raise TrihrgeInputError(f"gene {gene!r} is not in the sample or the enhanced maps",
                                    "pick a gene from the completion list")
        limits = L.shared_contrast_limits(map_vals, *values.values())
        done: dict[str, Any] = {"limits": limits}
        for kind, lay in (("spots", spots), ("recovered", rec), ("virtual", virt)):
            done[kind] = kind in values
            if kind in values:
                set_points_gene(lay, gene, values[kind], limits, self.colormap)
        done["map"] = map_vals is not None
        if map_vals is not None:
            layer = ensure_map_layer(self.viewer, maps, gene, limits, self.colormap)
            set_map_gene(layer, maps, gene, map_vals, limits)
            done["spread"] = show_spread(self.viewer, maps, gene)
        self.gene = gene
        self.contrast_limits = limits
        self.gene_changed.emit(gene)
        return done


def _points_values(layer, gene: str) -> np.ndarray:
    feats = layer.features
    if gene in feats.columns:
        return feats[gene].to_numpy()
    return L.gene_expression(layer.metadata["adata"], [gene])[gene].to_numpy()
