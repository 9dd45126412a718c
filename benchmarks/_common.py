"""Shared helpers for the benchmark scripts: where the shared samples are, how to load a sample of
any supported layout, wall time and peak memory of a step, and a plain-text/Markdown table.

Kept small and stable: other benchmark scripts import it.

    from _common import SHARED_DATA, load_sample, measure, print_table
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: ../shared/data relative to the project root (absent in a user's clone)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def limit_threads(n: int | None) -> None:
    """Cap torch / BLAS threads (benchmarks share the CPU); call before heavy imports."""
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TRIHRGE_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(int(n))


def shared_samples(data_dir: str | os.PathLike = SHARED_DATA) -> dict[str, Path]:
    """The shared samples found under ``data_dir``: {'dlpfc_151673': path, 'her2st/C2': path, ...}."""
    data_dir = Path(data_dir)
    out: dict[str, Path] = {}
    if (data_dir / "dlpfc_151673").is_dir():
        out["dlpfc_151673"] = data_dir / "dlpfc_151673"
    her2st = data_dir / "her2st"
    if her2st.is_dir():
        for sec in sorted(p for p in her2st.iterdir() if p.is_dir()):
            out[f"her2st/{sec.name}"] = sec
    return out


def load_sample(path: str | os.PathLike):
    """Read a sample of any supported layout ('synthetic' = the embedded sample)."""
    from napari_trihrge import io

    if str(path) == "synthetic":
        from napari_trihrge.datasets import synthetic_sample

        return synthetic_sample(seed=0)
    return io.read(path)


def annotation_file(path: str | os.PathLike) -> Path | None:
    """A Visium-style truth file next to the sample (``*_truth.txt``), if any."""
    p = Path(path)
    if not p.is_dir():
        return None
    found = sorted(p.glob("*_truth.txt"))
    return found[0] if found else None


@dataclass
class Measurement:
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0


@contextmanager
def measure(interval_s: float = 0.05):
    """Wall time and peak resident memory (MiB, whole process, sampled by a thread) of a block.

        with measure() as m:
            ...
        print(m.wall_s, m.peak_rss_mb)
    """
    import psutil

    proc = psutil.Process()
    m = Measurement(peak_rss_mb=proc.memory_info().rss / 2**20)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            m.peak_rss_mb = max(m.peak_rss_mb, proc.memory_info().rss / 2**20)
            stop.wait(interval_s)

    t = threading.Thread(target=poll, daemon=True)
    t0 = time.perf_counter()
    t.start()
    try:
        yield m
    finally:
        stop.set()
        t.join()
        m.wall_s = time.perf_counter() - t0
        m.peak_rss_mb = max(m.peak_rss_mb, proc.memory_info().rss / 2**20)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Measurement]:
    """``fn(*args, **kwargs)`` with its :func:`measure`."""
    with measure() as m:
        out = fn(*args, **kwargs)
    return out, m


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """'0.123 ± 0.004' (population sd; just the value for one number; 'n/a' for none)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts); floats with 3 decimals, missing cells empty."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                title: str | None = None) -> None:
    if title:
        print(f"\n### {title}\n")
    print(format_table(rows, columns), flush=True)
