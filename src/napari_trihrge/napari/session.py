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
``trust_changed``         the per-gene trust of the shown results (:meth:`SessionModel.trust_table`)
``genes_asked``           the genes the user asked for in the viewer (a list), see ``asked_genes``
========================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
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
    #: the maps have the gene but its map is still being computed (:attr:`SessionModel.defer_map`)
    map_pending: bool = False
    #: what was drawn (filled by the model, refined by the view); see :meth:`SessionModel.show_gene`
    shown: dict[str, Any] = field(default_factory=dict)


def viewable_maps_told(maps):
    """The part of ``maps`` the viewer shows (:func:`layers.viewable_maps`); a napari
    notification tells the user when it is not all of it. None for None."""
    if maps is None:
        return None
    shown, note = L.viewable_maps(maps)
    if note is not None:
        from napari.utils.notifications import show_info

        show_info(note)
    return shown


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
    trust_changed = Signal(object)
    genes_asked = Signal(list)

    def __init__(self) -> None:
        self._sample = None
        self._recovery = None
        self._enhance = None
        #: the sources of each kind, oldest first (the latest of the current sample wins), see
        #: SOURCE_KINDS; the sample name each belongs to is kept in _source_sample
        self._sources: dict[str, list[Any]] = {k: [] for k in SOURCE_KINDS}
        self._source_sample: dict[int, str | None] = {}
        #: run results of the other samples open in the viewer (id(adata) -> (adata,
        #: recovery, enhance)), restored when their sample becomes current again
        self._other_runs: dict[int, tuple[Any, Any, Any]] = {}
        self.gene: str | None = None
        self.contrast_limits: tuple[float, float] | None = None
        #: what the last shown gene updated (GeneDisplay.shown)
        self.last_shown: dict[str, Any] = {}
        self.colormap = L.DEFAULT_COLORMAP
        self.scores: dict[str, Any] = {}
        #: genes the user asked for (shown by name) in this viewer, in order: a run started now
        #: maps those its sample has too (RunConfig.extra_genes), on every section alike
        self.asked_genes: list[str] = []
        self._values: dict[tuple[int, str], np.ndarray] = {}
        # set by the Sample widget; read when a run starts, never stored
        self.encoder = lambda: DEFAULT_ENCODER
        self.token = lambda: None
        self.device = lambda: "auto"
        #: ``defer_map(maps, gene)``: True leaves ``gene``'s map pending (computed elsewhere, then
        #: shown again) instead of computing it now; set by the view, whose thread must not wait
        self.defer_map = lambda maps, gene: False

    # -- sample ---------------------------------------------------------------------------
    @property
    def adata(self):
        """The current sample (AnnData) or None."""
        return self._sample

    @property
    def sample_name(self) -> str | None:
        """The current sample's name (``uns['trihrge']['sample']``), None without a sample."""
        return None if self._sample is None else L.sample_name(self._sample)

    def set_sample(self, adata) -> None:
        """Make ``adata`` the current sample. The previous sample's run results are kept aside
        (they come back when it is current again); results and sources of other samples are
        never shown or used for this one."""
        if adata is self._sample:
            return
        if self._sample is not None and (self._recovery is not None or
                                         self._enhance is not None):
            self._other_runs[id(self._sample)] = (self._sample, self._recovery, self._enhance)
        _, self._recovery, self._enhance = self._other_runs.pop(id(adata), (None, None, None))
        self._sample = adata
        self._values.clear()
        self.sample_changed.emit(adata)
        self.trust_changed.emit(self.trust_table())

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
        self.add_source("map", viewable_maps_told(getattr(result, "maps", None)))
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
        pred = result.predictions if task == "recovery" else getattr(result, "virtual", None)
        owner = self.result_sample(pred) or ""
        if task == "recovery":
            self._recovery = result
            self.add_source("recovered", result.predictions, notify=False, sample=owner)
        else:
            self._enhance = result
            if getattr(result, "virtual", None) is not None:
                self.add_source("virtual", result.virtual, notify=False, sample=owner)
            self.add_source("map", viewable_maps_told(getattr(result, "maps", None)),
                            notify=False, sample=owner)
        self.result_added.emit(task, result)
        if task == "recovery":
            self.recovery_changed.emit(result)
        else:
            self.enhance_changed.emit(result)
        self.scores = run_scores(task, result)
        self.scores_changed.emit(self.scores)
        self.trust_changed.emit(self.trust_table())
        return self.show_gene(self.default_gene(task, result), asked=False)

    def result_sample(self, predictions) -> str | None:
        """The sample a run's predictions belong to: the current sample's name when they were
        made on it; None for a model applied to an H&E opened alone (no sample open here), whose
        results are shown whichever sample is current."""
        made_on = (predictions.uns.get("trihrge", {}).get("sample")
                   if predictions is not None else None)
        return self.sample_name if made_on in (None, self.sample_name) else None

    def default_gene(self, task: str, result) -> str:
        """The gene to show after a run: the last gene the user asked for when the result has
        it, else the best-trusted gene of the run (the highest held-out PCC among the genes
        that beat interpolation), else the first gene of the run."""
        if task == "recovery":
            genes = [str(g) for g in result.predictions.var_names]
            table = L.trust_table(getattr(result, "per_gene", None))
        else:
            ad = getattr(result, "virtual", None)
            maps = getattr(result, "maps", None)
            genes = ([str(g) for g in ad.var_names] if ad is not None
                     else [str(g) for g in maps.gene_names])
            table = L.trust_table(_run_trust_source(result))
        for gene in reversed(self.asked_genes):
            if gene in genes:
                return gene
        if table is not None:
            table = table[table.index.isin(genes)]
            best = table[table["beats_interpolation"].map(lambda b: b is True).to_numpy()]
            if len(best):
                return str(best.index[0])
            if len(table):
                return str(table.index[0])
        return genes[0]

    # -- results opened from run folders ---------------------------------------------------
    def add_source(self, kind: str, obj, *, notify: bool = True,
                   sample: str | None = None) -> None:
        """``obj`` (predicted spots AnnData for 'recovered'/'virtual', DenseMaps for 'map')
        becomes the current source of ``kind`` for its sample (``sample``, else the name an
        AnnData records, else the current sample); ``notify`` emits ``outputs_opened``."""
        if kind not in SOURCE_KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if obj is None:
            return
        if sample is None:
            info = getattr(obj, "uns", {}).get("trihrge", {}) if hasattr(obj, "uns") else {}
            sample = info.get("sample") or self.sample_name
        self._source_sample[id(obj)] = sample or None  # '' or None: any sample
        lst = self._sources[kind]
        if lst and lst[-1] is obj:
            return
        self._sources[kind] = [o for o in lst if o is not obj] + [obj]
        if notify:
            self.outputs_opened.emit()
            self.trust_changed.emit(self.trust_table())

    def remove_source(self, kind: str, obj) -> None:
        """Forget ``obj`` (its layer was removed); the previous source of ``kind`` comes back."""
        if kind in self._sources:
            self._sources[kind] = [o for o in self._sources[kind] if o is not obj]
            self._values.clear()  # cached by id(): a freed object's id can be reused

    def source(self, kind: str):
        """The current source of ``kind`` (see :data:`SOURCE_KINDS`): the latest of the current
        sample (or of no known sample), else None."""
        name = self.sample_name
        for obj in reversed(self._sources.get(kind) or []):
            owner = self._source_sample.get(id(obj))
            if name is None or owner is None or owner == name:
                return obj
        return None

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
    def _trust_sources(self) -> list[tuple[Any, Any]]:
        """(per-gene table, the predictions it belongs to or None) in the order trust is
        looked up: the enhance run behind the map, the last recovery, reopened outputs."""
        tables = []
        if self._enhance is not None:  # the model behind the map first
            tables.append((getattr(self._enhance, "trust", None),
                           getattr(self._enhance, "virtual", None)))
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
        return [(t, ad) for t, ad in tables if t is not None]

    def trust(self, gene: str) -> dict | None:
        """How far ``gene``'s prediction can be trusted: the per-gene trust columns of the
        enhance run behind the map, else of the last recovery, else of reopened outputs; None
        when it was not scored."""
        for table, ad in self._trust_sources():
            t = L.trust_of_gene(table, gene)
            if t is not None:
                # a prediction on a slide where nothing was measured: trust from elsewhere
                t["measured_here"] = ad is None or L.measured_here(ad)
                return t
        return None

    def trust_table(self) -> pd.DataFrame | None:
        """The per-gene trust of the shown results (the first scored table of :meth:`trust`'s
        order; :func:`~napari_trihrge.napari.layers.trust_table` columns, the best first, with
        ``measured_here``), or None before any scored run."""
        for table, ad in self._trust_sources():
            t = L.trust_table(table)
            if t is not None and len(t):
                return t.assign(measured_here=ad is None or L.measured_here(ad))
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
        pending = False
        if maps is not None and gene in list(maps.gene_names):
            pending = bool(self.defer_map(maps, gene))
            if not pending:
                map_vals = L.map_values(maps, gene)
        if not values and map_vals is None and not pending:
            raise TrihrgeInputError(f"gene {gene!r} is not in the sample or the enhanced maps",
                                    "pick a gene from the completion list")
        limits = L.shared_contrast_limits(map_vals, *values.values())
        clipped = {k: L.clipped_share(v, limits) for k, v in values.items()}
        if map_vals is not None:
            clipped["map"] = L.clipped_share(map_vals, limits)
        missing = ""
        if maps is not None and map_vals is None and not pending:
            missing = (f"No enhanced map for {gene}: it was not among the genes of the Enhance "
                       "run. Add it to Extra genes (Train and enhance) and run Enhance again.")
        shown = {"limits": limits, "map_missing": missing, "map": map_vals is not None,
                 "map_pending": pending, "spread": False, "clipped": clipped,
                 **{k: k in values for k in POINT_KINDS}}
        return GeneDisplay(gene, values, map_vals, maps, limits, missing, pending, shown)

    def show_gene(self, gene: str, *, asked: bool = True) -> dict[str, Any]:
        """Show ``gene`` everywhere on one colour scale; returns what was shown (``spots``,
        ``recovered``, ``virtual``, ``map``, ``spread``: bool, ``limits``, ``map_missing``:
        why the map is hidden, or '', ``map_pending``: its map is being computed and is shown
        when ready, ``clipped``: the share of each kind's values beyond the scale). Emits
        ``display_requested`` then ``gene_changed``. ``asked``: the user chose the gene (it
        joins :attr:`asked_genes`; a run started now maps it too)."""
        plan = self.display(gene)
        if asked:
            self.ask_gene(gene)
        self.display_requested.emit(plan)  # the view draws it and refines plan.shown
        self.gene = gene
        self.contrast_limits = plan.limits
        self.last_shown = plan.shown
        self.gene_changed.emit(gene)
        return plan.shown

    def ask_gene(self, gene: str) -> None:
        """Record that the user asked for ``gene`` (emits ``genes_asked``)."""
        if self.asked_genes[-1:] != [gene]:
            self.asked_genes = [g for g in self.asked_genes if g != gene] + [gene]
            self.genes_asked.emit(list(self.asked_genes))

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


def _run_trust_source(result):
    """The per-gene trust table of an enhance or predict result (its held-out table, else its
    virtual spots' var), or None."""
    table = getattr(result, "trust", None)
    if isinstance(table, pd.DataFrame):
        return table
    ad = getattr(result, "virtual", None)
    return None if ad is None else ad.var


def run_scores(task: str, result) -> dict[str, Any]:
    """The held-out summary of a finished run, with ``task``: a recovery's scores; an enhance
    run's internal trust split (``metrics['trust']``); a prediction's model trust from its
    training sections (``trust_source``: 'training sections') and, where the slide has measured
    spots, ``spots`` (the model at them vs kNN of the other spots). Scores the run did not
    measure are absent."""
    metrics = dict(getattr(result, "metrics", {}) or {})
    if task == "recovery":
        return {"task": task, **metrics}
    if task == "enhance":
        trust = metrics.get("trust")
        return {"task": task, **(trust if isinstance(trust, dict) else {})}
    out: dict[str, Any] = {"task": task}
    table = L.trust_table(_run_trust_source(result))
    if table is not None and len(table):
        beats = table["beats_interpolation"].map(lambda b: b is True)
        out.update(trust_source="training sections", pcc_mean=float(table["pcc"].mean()),
                   baseline_knn_pcc_mean=float(np.nanmean(table["pcc_baseline_knn"]))
                   if np.isfinite(table["pcc_baseline_knn"]).any() else None,
                   n_genes_scored=int(len(table)),
                   n_genes_beating_interpolation=int(beats.sum()))
    if isinstance(metrics.get("spots"), dict):
        out["spots"] = dict(metrics["spots"])
    return out


__all__ = ["SessionModel", "GeneDisplay", "run_scores"]
