"""A map store's maps prepared off the viewer's thread.

A factorised map (:class:`~napari_trihrge.io.map_store.FactorMaps`) opened from a run folder or
a store computes its networks on the first gene: seconds to a minute for a whole section. The
layer view asks :class:`MapPreparer` for such a map instead of computing it: a worker
(:func:`._worker.engine_worker`, napari progress bars, cancellable) computes the location
chunks (:meth:`FactorMaps.warm`) and then the map of the gene asked for last, and hands it back
on the viewer's thread. A gene asked for meanwhile replaces the one it will compute; closing the
map's layer (or the viewer, which removes every layer) cancels the work. The maps keep as many
factors as a share of the free memory allows (:func:`napari_trihrge.tl._maps.display_cache_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_error

from .. import layers as L
from ._stage_bars import StageBars
from ._worker import Outcome, QueueProgress, engine_worker


class _Job:
    """One worker preparing one maps object; ``gene``: the gene asked for last."""

    def __init__(self, maps: Any, gene: str):
        self.maps, self.gene = maps, gene
        self.progress = QueueProgress()
        self.bars = StageBars(lambda text: None)
        self.worker: Any = None


def _prepare(maps: Any, job: _Job, *, progress: QueueProgress) -> str:
    """The worker's work: every chunk the cache holds, then the gene asked for last (its map
    and spread kept by the maps); returns that gene."""
    maps.warm(progress=progress)
    while True:
        gene = job.gene
        progress.check_cancelled()
        maps.compute([maps.gene_index(gene)], with_std=True)
        if job.gene == gene:  # no other gene asked for meanwhile
            return gene


class MapPreparer:
    """Prepares the maps of a viewer in workers, one per maps object.

    ``on_ready(maps, gene)`` is called on the viewer's thread when ``gene``'s map is ready
    (then computed at once); an error becomes a napari notification and
    ``on_failed(maps, gene)`` (nothing is shown of that map).
    """

    def __init__(self, on_ready: Callable[[Any, str], None],
                 on_failed: Callable[[Any, str], None] | None = None):
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._jobs: dict[int, _Job] = {}

    def busy(self, maps: Any = None) -> bool:
        """Whether a worker prepares ``maps`` (any maps when None)."""
        return bool(self._jobs) if maps is None else id(maps) in self._jobs

    def request(self, maps: Any, gene: str) -> Any:
        """Prepare ``gene``'s map of ``maps`` in a worker (the running one takes the new
        gene instead of its earlier one); returns the worker."""
        job = self._jobs.get(id(maps))
        if job is not None:
            job.gene = gene
            return job.worker
        from ...tl._maps import display_cache_bytes

        # every gene is shown next: keep as many factors as a share of the free memory allows
        maps.cache_bytes = max(maps.cache_bytes, display_cache_bytes())
        job = _Job(maps, gene)
        worker = engine_worker(_prepare, maps, job, progress=job.progress)
        worker.yielded.connect(job.bars.handle)
        worker.returned.connect(lambda outcome: self._done(job, outcome))
        worker.finished.connect(job.bars.close)
        job.worker = worker
        self._jobs[id(maps)] = job
        job.bars.start()
        worker.start()
        return worker

    def cancel(self, maps: Any = None) -> None:
        """Stop preparing ``maps`` (every maps when None) at the next chunk."""
        for key, job in list(self._jobs.items()):
            if maps is None or key == id(maps):
                job.progress.cancel()
                job.bars.stop()

    def _done(self, job: _Job, outcome: Outcome) -> None:
        if self._jobs.get(id(job.maps)) is job:
            del self._jobs[id(job.maps)]
        job.bars.stop()
        if outcome.status == "cancelled" or job.progress.cancelled:
            return
        if outcome.status != "ok":
            show_error(f"The map of {job.gene} could not be computed: {outcome.message}")
            if self._on_failed is not None:
                self._on_failed(job.maps, job.gene)
            return
        if not L.map_ready(job.maps, job.gene):  # asked for after the worker's last check
            self.request(job.maps, job.gene)
            return
        try:
            self._on_ready(job.maps, job.gene)
        except Exception as exc:  # noqa: BLE001 - never crash the viewer
            show_error(f"The map of {job.gene} could not be shown: {exc}")
