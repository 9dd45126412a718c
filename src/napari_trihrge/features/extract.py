"""Feature bags for locations: ``(N, S, D)`` = locations x window sizes x embedding, cached.

The on-disk cache (``cache_dir``; None = no cache) holds one ``.npy`` per request, named by the
sha1 of the image's :meth:`key`, the locations rounded to 0.01 um, the window sizes, the mode
(windows or dense) and :meth:`Encoder.config_key`; files are written atomically
(``_atomic.atomic_path``) so an interrupted run never leaves a truncated cache entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._atomic import atomic_path
from ..errors import TrihrgeInputError
from ..progress import Progress, ensure_progress
from .base import Encoder, as_centres_rc_um, check_window_um, dense_window_sizes
from .factory import create_encoder
from .registry import DEFAULT_ENCODER

if TYPE_CHECKING:  # pragma: no cover
    from ..io.image import TissueImage

DEFAULT_WINDOWS_UM = (112.0, 336.0)


def cache_key(image: TissueImage, centres_rc_um: np.ndarray, windows_um: Sequence[float],
              encoder: Encoder, mode: str = "windows") -> str:
    """sha1 identifying one feature request (image pixels, locations, windows, encoder)."""
    h = hashlib.sha1()
    h.update(str(image.key()).encode())
    h.update(np.round(np.asarray(centres_rc_um, dtype=np.float64), 2).tobytes())
    h.update(repr(tuple(round(float(w), 4) for w in windows_um)).encode())
    h.update(mode.encode())
    h.update(encoder.config_key().encode())
    return h.hexdigest()


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != shape or arr.dtype != np.float32:
        return None
    return arr


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def extract_features(image: TissueImage, centres_rc_um: np.ndarray,
                     encoder: Encoder | str = DEFAULT_ENCODER,
                     windows_um: Sequence[float] = DEFAULT_WINDOWS_UM, *,
                     cache_dir: str | os.PathLike | None = None,
                     progress: Progress | None = None, dense: bool = False,
                     local_window_um: float | None = None) -> np.ndarray:
    """Embed a window of each size in ``windows_um`` around every location.

    Returns ``(N, S, D)`` float32 with ``S = len(windows_um)``. ``dense=True`` uses the
    encoder's :meth:`~Encoder.embed_dense` (patch-token pooling for ViTs; then a leading
    ``local_window_um`` entry is added when given). Runs the 'features' progress stage
    (total = N x S). ``encoder`` may be an Encoder or anything :func:`create_encoder` accepts.
    """
    progress = ensure_progress(progress)
    enc = create_encoder(encoder) if not isinstance(encoder, Encoder) else encoder
    centres = as_centres_rc_um(centres_rc_um)
    if dense:
        sizes = dense_window_sizes(windows_um, local_window_um)
    else:
        sizes = [check_window_um(w) for w in windows_um]
        if not sizes:
            raise TrihrgeInputError("no window sizes given",
                                    "pass at least one window size in um, e.g. 112 336")
    n, s = len(centres), len(sizes)
    shape = (n, s, enc.embed_dim)
    progress.stage("features", total=n * s)
    path = None
    if cache_dir is not None:
        mode = "dense" if dense else "windows"
        path = Path(cache_dir) / f"features_{cache_key(image, centres, sizes, enc, mode)}.npy"
        cached = _load_cached(path, shape) if path.is_file() else None
        if cached is not None:
            progress.advance(n * s)
            return cached
    if dense:
        out = np.ascontiguousarray(
            enc.embed_dense(image, centres, sizes[1:] if local_window_um is not None else sizes,
                            local_window_um, progress=progress), dtype=np.float32)
    else:
        out = np.empty(shape, dtype=np.float32)
        for k, w in enumerate(sizes):
            out[:, k] = enc.embed_windows(image, centres, w, progress=progress)
    if out.shape != shape:
        raise RuntimeError(f"encoder {enc.name} returned {out.shape}, expected {shape}")
    if path is not None:
        _save_atomic(path, out)
    return out
