"""How many CPU threads the engine's training and prediction use, and sizing every pool to it.

A process running the engine holds several thread pools: torch's intra-op pool (OpenMP, torch's
own ``libgomp``), torch's inter-op pool (created on first use; the engine never uses it), the
OpenMP runtimes that other packages bring (numba's threading layer, loaded by scanpy, scikit-learn's
``libgomp``) and OpenBLAS (numpy, scipy). Setting ``OMP_NUM_THREADS`` before torch loads is not
enough: scanpy's ``highly_variable_genes`` starts numba's OpenMP layer, which sizes its team to
every core and, because torch loads its ``libgomp`` globally, resizes torch's OpenMP team as well.
An OpenMP team whose threads are not all running at once spins at every barrier, so next to one
other busy program the small per-step kernels (Adam's update, BatchNorm) run many times slower.

:func:`cpu_threads` therefore sizes torch (``torch.set_num_threads``) and every OpenMP/BLAS pool
(``threadpoolctl.threadpool_limits``) explicitly for the duration of a training or prediction
call, and restores them afterwards. The number comes from :func:`choose_threads`: the user's
choice (``threads=``, ``RunConfig.threads``, ``trihrge --threads``, or the ``TRIHRGE_THREADS``
environment variable), else the cores this process may use (its CPU affinity) that other
programs are not using right now.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
import time
from collections.abc import Iterator

from .errors import TrihrgeInputError

#: environment variable with the user's thread count (a positive integer)
THREADS_ENV = "TRIHRGE_THREADS"

#: how long a measured count of free cores is reused before measuring again, seconds
_REUSE_S = 30.0
#: how long the CPU use of other programs is sampled, seconds
_SAMPLE_S = 0.2

_active: contextvars.ContextVar[int | None] = contextvars.ContextVar("trihrge_threads",
                                                                   default=None)
_lock = threading.Lock()
_cached: tuple[float, int] | None = None  # (time.monotonic(), free cores)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _busy_cores_of_others(sample_s: float) -> float | None:
    """Cores kept busy by other processes over ``sample_s`` (machine-wide CPU time minus this
    process's own), or None when it cannot be measured."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with napari
        return None
    try:
        me = psutil.Process()
        t_all0, t_me0 = psutil.cpu_times(), me.cpu_times()
        w0 = time.monotonic()
        time.sleep(sample_s)
        t_all1, t_me1 = psutil.cpu_times(), me.cpu_times()
        wall = time.monotonic() - w0
    except (OSError, psutil.Error):  # pragma: no cover - restricted /proc
        return None

    def busy(t) -> float:
        return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq",
                                                "steal"))

    mine = (t_me1.user + t_me1.system) - (t_me0.user + t_me0.system)
    others = busy(t_all1) - busy(t_all0) - mine
    # machine-wide CPU time counts every core, including those outside our affinity
    scale = usable_cores() / max(1, psutil.cpu_count() or 1)
    return max(0.0, others * scale / max(wall, 1e-3))


def _load_of_others() -> float | None:
    """One-minute load average minus this process's own share of it, or None where there is
    no load average.

    This process's share is the cores it kept busy over about the last minute
    (:func:`_own_cores_last_minute`), at least one (the caller is running now): a run that
    used both cores of an idle machine must not read its own load as another program's.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None
    return max(0.0, load - max(1.0, _own_cores_last_minute()))


#: this process's CPU time at earlier measurements: (time.monotonic(), CPU seconds)
_own_history: list[tuple[float, float]] = []
#: the span of the one-minute load average, seconds
_LOAD_SPAN_S = 60.0


def _own_cores_last_minute() -> float:
    """Cores this process kept busy over about the last minute (0 where it cannot be read)."""
    try:
        import psutil

        me = psutil.Process()
        times = me.cpu_times()
        age_s = time.time() - me.create_time()
    except Exception:  # noqa: BLE001 - psutil missing or /proc restricted: count nothing
        return 0.0
    now, cpu_s = time.monotonic(), times.user + times.system
    cores = own_cores_since(_own_history, now, cpu_s, age_s)
    _own_history.append((now, cpu_s))
    del _own_history[:-16]
    return cores


def own_cores_since(history: list[tuple[float, float]], now: float, cpu_s: float,
                    age_s: float, *, span_s: float = _LOAD_SPAN_S) -> float:
    """Average cores used from the oldest earlier measurement within ``span_s`` (at least a
    tenth of it back) to ``now``; without one, since the process started ``age_s`` ago."""
    earlier = [(t, c) for t, c in history if span_s / 10 <= now - t <= span_s]
    if earlier:
        t0, c0 = earlier[0]
        return max(0.0, (cpu_s - c0) / (now - t0))
    return max(0.0, cpu_s / max(age_s, 1e-3))


def free_cores(*, refresh: bool = False) -> int:
    """Usable cores that other programs leave free now (at least 1).

    Two views are combined and the smaller number of free cores wins: the CPU time other
    processes used over the last fraction of a second (sees a program that just started) and the
    one-minute load average (sees programs that run in bursts). Measured at most every 30 s.
    """
    global _cached
    with _lock:
        now = time.monotonic()
        if not refresh and _cached is not None and now - _cached[0] < _REUSE_S:
            return _cached[1]
        cores = usable_cores()
        taken = [v for v in (_busy_cores_of_others(_SAMPLE_S), _load_of_others()) if v is not None]
        busy = max(taken) if taken else 0.0
        # a core counts as taken once others use more than a quarter of it
        free = max(1, min(cores, cores - math.floor(busy + 0.75)))
        _cached = (time.monotonic(), free)
        return free


def parse_threads(value: object, source: str = "threads") -> int | None:
    """A user's thread count: a positive int, or None for 'choose from the free cores' (None,
    0, '' or 'auto'); anything else raises TrihrgeInputError naming ``source``."""
    if value is None or value == "" or value == 0 or value == "auto":
        return None
    try:
        n = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n = -1
    if n < 1:
        raise TrihrgeInputError(f"{source} must be a positive number of threads, got {value!r}",
                                "use for example 1 or 2, or leave it unset to choose from the "
                                "free cores")
    return n


def choose_threads(threads: int | str | None = None, *, reserve_cores: int = 0) -> int:
    """Threads for the engine's CPU work: ``threads`` if given, else the number of an enclosing
    :func:`cpu_threads` block, else ``$TRIHRGE_THREADS``, else :func:`free_cores` less
    ``reserve_cores`` (e.g. 1 for a GUI thread that must stay responsive). At least 1, never
    more than the usable cores."""
    n = parse_threads(threads, "threads")
    if n is None:
        n = _active.get()
    if n is None:
        n = parse_threads(os.environ.get(THREADS_ENV), THREADS_ENV)
    if n is None:
        n = free_cores() - max(0, int(reserve_cores))
    return max(1, min(n, usable_cores()))


def pool_sizes() -> dict[str, int]:
    """Current size of torch's pools and of every OpenMP/BLAS pool threadpoolctl finds, keyed
    ``torch``, ``torch_interop`` and ``<internal_api>:<library file>``."""
    import torch
    from threadpoolctl import threadpool_info

    sizes = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    for info in threadpool_info():
        sizes[f"{info['internal_api']}:{os.path.basename(info['filepath'])}"] = int(
            info["num_threads"])
    return sizes


@contextlib.contextmanager
def cpu_threads(threads: int | str | None = None, *, reserve_cores: int = 0) -> Iterator[int]:
    """Run the body with torch and every OpenMP/BLAS pool sized to :func:`choose_threads`
    (``threads``, ``reserve_cores``); yields the number; the previous sizes are restored afterwards. Blocks nest:
    an inner block without ``threads`` keeps the outer block's number.

    Affects the calling thread's OpenMP teams (where the engine computes) and torch's
    process-wide setting; enter it in the thread that does the work.
    """
    import torch
    from threadpoolctl import threadpool_limits

    n = choose_threads(threads, reserve_cores=reserve_cores)
    previous = torch.get_num_threads()
    outer = _active.get()
    token = _active.set(n)
    try:
        with threadpool_limits(limits=n):
            torch.set_num_threads(n)
            try:
                yield n
            finally:
                torch.set_num_threads(previous)
    finally:
        try:
            _active.reset(token)
        except ValueError:  # closed from another context (a generator finalised elsewhere)
            _active.set(outer)


__all__ = ["THREADS_ENV", "parse_threads", "usable_cores", "free_cores", "choose_threads", "pool_sizes",
           "cpu_threads"]
