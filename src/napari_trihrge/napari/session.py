"""The napari plugin's session model: what one viewer is looking at, with events, and no Qt.

The model holds the current sample, the results of the last runs (recovery, enhance or a
prediction with a saved model), results opened from run folders, the shown gene with its
shared colour scale, and the last run's scores. It decides *what* to show for a gene (values
per kind of result, one colour scale, why a map is missing); the Qt side
(:mod:`napari_trihrge.napari._qt._session`) listens to its events and draws it on the layers.
Widgets talk to the model, not to each other (as napari-spatialdata's model and view).

Events (psygnal signals; connect a callable, it receives the argument shown):

========================  =====================================================================
``sample_changed``        the new sample (AnnData)
``result_added``          ``(task, result)`` of a finished run ('recovery', 'enhance', 'predict')
``recovery_changed``      the recovery result (or None)
``enhance_changed``       the enhance or prediction result (or None)
``outputs_opened``        results opened from a run folder (no argument)
``display_requested``     a :class:`GeneDisplay` to draw (the view's job)
``gene_changed``          the shown gene, after it was drawn
``scores_changed``        the last run's scores (a dict with ``task``), or {}
========================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psygnal import Signal

from ..errors import TrihrgeInputError
from ..features.registry import DEFAULT_ENCODER
from . import layers as L

#: kinds of results the model keeps one current source of ('recovered' and 'virtual': AnnData of
#: predicted spots; 'map': DenseMaps)
SOURCE_KINDS = ("recovered", "virtual", "map")
#: kinds of points drawn per gene, in the order the view colours them
POINT_KINDS = ("spots", "recovered", "virtual")
#: values of recently shown genes kept per source (switching back is then instant)
VALUE_CACHE_SIZE = 64


@dataclass
class GeneDisplay:
    """What showing one gene means: the values of every kind of result that has the gene, on one
    shared colour scale."""

    gene: str
    #: per-spot values of 'spots', 'recovered', 'virtual' (only the kinds that have the gene)
    values: dict[str, np.ndarray]
    #: the dense map of the gene (rows x cols) or None
    map_values: np.ndarray | None
    #: the maps it was read from (None without maps)
    maps: Any
    limits: tuple[float, float]
    #: why the map is not shown for this gene ('' when it is, or when there are no maps)
    map_missing: str = ""
    #: what was drawn (filled by the model, refined by the view); see :meth:`SessionModel.show_gene`
    shown: dict[str, Any] = field(default_factory=dict)


class SessionModel:
    """Shared state of one viewer (see the module docstring for the events)."""

    sample_changed = Signal(object)
    result_added = Signal(str, object)
    recovery_changed = Signal(object)
    enhance_changed = Signal(object)
    outputs_opened = Signal()
    display_requested = Signal(object)
    gene_changed = Signal(str)
    scores_changed = Signal(dict)

    def __init__(self) -> None:
        self._sample = None
        self._recovery = None
        self._enhance = None
        #: the current source of each kind (the latest added wins), see SOURCE_KINDS
        self._sources: dict[str, list[Any]] = {k: [] for k in SOURCE_KINDS}
        self.gene: str | None = None
        self.contrast_limits: tuple[float, float] | None = None
        #: what the last shown gene updated (GeneDisplay.shown)
        self.last_shown: dict[str, Any] = {}
        self.colormap = L.DEFAULT_COLORMAP
        self.scores: dict[str, Any] = {}
        self._values: dict[tuple[int, str], np.ndarray] = {}
        # set by the Sample widget; read when a run starts, never stored
        self.encoder = lambda: DEFAULT_ENCODER
        self.token = lambda: None
        self.device = lambda: "auto"

    # -- sample ---------------------------------------------------------------------------
    @property
    def adata(self):
        """The current sample (AnnData) or None."""
        return self._sample

    def set_sample(self, adata) -> None:
        """Make ``adata`` the current sample; the previous sample's run results are dropped."""
        if adata is self._sample:
            return
        self._sample = adata
        self._recovery = None
        self._enhance = None
        self._values.clear()
        self.sample_changed.emit(adata)

    # -- results --------------------------------------------------------------------------
    @property
    def recovery(self):
        """The last recovery result (RecoveryResult) or None."""
        return self._recovery

    @recovery.setter
    def recovery(self, result) -> None:
        self._recovery = result
        pred = getattr(result, "predictions", None)
        if pred is not None:
            self.add_source("recovered", pred)
        self.recovery_changed.emit(result)

    @property
    def enhance(self):
        """The last enhance (or prediction) result or None."""
        return self._enhance

    @enhance.setter
    def enhance(self, result) -> None:
        self._enhance = result
        if getattr(result, "virtual", None) is not None:
            self.add_source("virtual", result.virtual)
        if getattr(result, "maps", None) is not None:
            self.add_source("map", result.maps)
        self.enhance_changed.emit(result)

    def set_result(self, task: str, result, adata=None) -> dict[str, Any]:
        """A run finished: keep its result (``task``: 'recovery', 'enhance' or 'predict'), tell
        the view to add its layers, record its scores and show a gene of it (the shown gene
        when the result has it). ``adata``: the sample the run used, made current. Returns
        what was shown (:meth:`show_gene`)."""
        if task not in ("recovery", "enhance", "predict"):
            raise ValueError(f"unknown task {task!r}")
        if adata is not None and adata is not self._sample:
            self.set_sample(adata)
        if task == "recovery":
            self._recovery = result
            self.add_source("recovered", result.predictions, notify=False)
        else:
            self._enhance = result
            if getattr(result, "virtual", None) is not None:
                self.add_source("virtual", result.virtual, notify=False)
            self.add_source("map", getattr(result, "maps", None), notify=False)
        self.result_added.emit(task, result)
        if task == "recovery":
            self.recovery_changed.emit(result)
        else:
            self.enhance_changed.emit(result)
        metrics = dict(getattr(result, "metrics", {}) or {})
        if task != "predict":  # a prediction's scores are of another kind (measured spots)
            self.scores = {"task": task, **metrics}
            self.scores_changed.emit(self.scores)
        return self.show_gene(self.default_gene(task, result))

    def default_gene(self, task: str, result) -> str:
        """The gene to show after a run: the shown gene when the result has it, else the best
        recovered gene, else a marker gene of the synthetic sample, else the first."""
        if task == "recovery":
            genes = [str(g) for g in result.predictions.var_names]
            if self.gene in genes:
                return self.gene
            return str(result.per_gene.index[0])
        genes = [str(g) for g in result.virtual.var_names]
        if self.gene in genes:
            return self.gene
        var = getattr(getattr(result, "spots", None), "var", None)
        if task == "enhance" and var is not None and "gene_class" in var:
            marker = [g for g in genes if var["gene_class"].get(g) == "marker"]
            if marker:
                return marker[0]
        return genes[0]

    # -- results opened from run folders ---------------------------------------------------
    def add_source(self, kind: str, obj, *, notify: bool = True) -> None:
        """``obj`` (predicted spots AnnData for 'recovered'/'virtual', DenseMaps for 'map')
        becomes the current source of ``kind``; ``notify`` emits ``outputs_opened``."""
        if kind not in SOURCE_KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if obj is None:
            return
        lst = self._sources[kind]
        if lst and lst[-1] is obj:
            return
        self._sources[kind] = [o for o in lst if o is not obj] + [obj]
        if notify:
            self.outputs_opened.emit()

    def remove_source(self, kind: str, obj) -> None:
        """Forget ``obj`` (its layer was removed); the previous source of ``kind`` comes back."""
        if kind in self._sources:
            self._sources[kind] = [o for o in self._sources[kind] if o is not obj]
            self._values.clear()  # cached by id(): a freed object's id can be reused

    def source(self, kind: str):
        """The current source of ``kind`` (see :data:`SOURCE_KINDS`) or None."""
        lst = self._sources.get(kind) or []
        return lst[-1] if lst else None

    def maps(self):
        """The dense maps shown: of the last run, else of a reopened run folder."""
        return self.source("map")

    def genes(self) -> list[str]:
        """Every gene that can be shown: the sample's, the results' and the maps'."""
        names: dict[str, None] = {}
        if self._sample is not None:
            names.update(dict.fromkeys(map(str, self._sample.var_names)))
        for kind in ("virtual", "recovered"):
            ad = self.source(kind)
            if ad is not None:
                names.update(dict.fromkeys(map(str, ad.var_names)))
        maps = self.maps()
        if maps is not None:
            names.update(dict.fromkeys(map(str, maps.gene_names)))
        return list(names)

    # -- trust ---------------------------------------------------------------------------
    def trust(self, gene: str) -> dict | None:
        """How far ``gene``'s prediction can be trusted: the per-gene trust columns of the
        enhance run behind the map, else of the last recovery, else of reopened outputs; None
        when it was not scored."""
        tables = []  # (per-gene table, the predictions it belongs to, or None)
        if self._enhance is not None:  # the model behind the map first
            for name in ("virtual", "spots"):
                ad = getattr(self._enhance, name, None)
                tables.append((getattr(ad, "var", None), ad))
        if self._recovery is not None:
            tables += [(getattr(self._recovery, "per_gene", None), None),
                       (getattr(getattr(self._recovery, "predictions", None), "var", None), None)]
        for kind in ("virtual", "recovered"):
            ad = self.source(kind)
            tables.append((None if ad is None else ad.var, ad))
        tables.append((getattr(self.maps(), "trust", None), None))
        for table, ad in tables:
            t = L.gene_trust(table, gene) if table is not None else None
            if t is not None:
                # a prediction on a slide where nothing was measured: trust from elsewhere
                t["measured_here"] = ad is None or L.measured_here(ad)
                return t
        return None

    # -- the shown gene -------------------------------------------------------------------
    def display(self, gene: str) -> GeneDisplay:
        """What showing ``gene`` means (values per kind, one colour scale); raises
        :class:`TrihrgeInputError` when no data has the gene."""
        values: dict[str, np.ndarray] = {}
        for kind, ad in (("spots", self._sample), ("recovered", self.source("recovered")),
                         ("virtual", self.source("virtual"))):
            if ad is not None and gene in ad.var_names:
                values[kind] = self._gene_values(ad, gene)
        maps = self.maps()
        map_vals = None
        if maps is not None and gene in list(maps.gene_names):
            map_vals = L.map_values(maps, gene)
        if not values and map_vals is None:
            raise TrihrgeInputError(f"gene {gene!r} is not in the sample or the enhanced maps",
                                    "pick a gene from the completion list")
        limits = L.shared_contrast_limits(map_vals, *values.values())
        missing = ""
        if maps is not None and map_vals is None:
            missing = (f"No enhanced map for {gene}: it was not among the genes of the Enhance "
                       "run. Add it to Extra genes (Train and enhance) and run Enhance again.")
        shown = {"limits": limits, "map_missing": missing, "map": map_vals is not None,
                 "spread": False, **{k: k in values for k in POINT_KINDS}}
        return GeneDisplay(gene, values, map_vals, maps, limits, missing, shown)

    def show_gene(self, gene: str) -> dict[str, Any]:
        """Show ``gene`` everywhere on one colour scale; returns what was shown (``spots``,
        ``recovered``, ``virtual``, ``map``, ``spread``: bool, ``limits``, ``map_missing``:
        why the map is hidden, or ''). Emits ``display_requested`` then ``gene_changed``."""
        plan = self.display(gene)
        self.display_requested.emit(plan)  # the view draws it and refines plan.shown
        self.gene = gene
        self.contrast_limits = plan.limits
        self.last_shown = plan.shown
        self.gene_changed.emit(gene)
        return plan.shown

    def adopt_gene(self, gene: str, limits: tuple[float, float], shown: dict[str, Any]) -> None:
        """Record a gene that is already drawn (a layer opened coloured by it) and emit
        ``gene_changed``."""
        self.gene = gene
        self.contrast_limits = tuple(float(v) for v in limits)
        self.last_shown = dict(shown)
        self.gene_changed.emit(gene)

    def _gene_values(self, adata, gene: str) -> np.ndarray:
        key = (id(adata), gene)
        vals = self._values.get(key)
        if vals is None:
            vals = L.gene_expression(adata, [gene])[gene].to_numpy()
            if len(self._values) >= VALUE_CACHE_SIZE:
                self._values.pop(next(iter(self._values)))
            self._values[key] = vals
        return vals


__all__ = ["SessionModel", "GeneDisplay"]
