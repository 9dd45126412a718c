"""The :class:`Encoder` interface every image encoder implements.

An encoder turns square windows of the H&E image, centred on given locations and defined in
micrometres, into one embedding vector per location. Windows that cross the image border are
padded with white (the slide's background), never dropped, so the output always has one row per
input location.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TrihrgeInputError
from ..progress import Progress, ensure_progress

if TYPE_CHECKING:  # pragma: no cover
    from ..io.image import TissueImage

def as_centres_rc_um(centres_rc_um: Any) -> np.ndarray:
    """Validate and return locations as a float64 ``(N, 2)`` row/col micrometre array."""
    arr = np.asarray(centres_rc_um, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 2:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise TrihrgeInputError(
            f"locations must have shape (n, 2) (row, col in micrometres), got {arr.shape}",
            "pass one row and one column coordinate in micrometres per location",
        )
    if not np.all(np.isfinite(arr)):
        raise TrihrgeInputError("some locations are NaN or infinite",
                                "drop spots without valid coordinates before embedding")
    return arr


def check_window_um(window_um: float) -> float:
    """Return ``window_um`` as a float if it is a positive finite size, else raise."""
    w = float(window_um)
    if not np.isfinite(w) or w <= 0:
        raise TrihrgeInputError(f"window size must be a positive number of micrometres, got "
                                f"{window_um}", "use for example --windows-um 112 336")
    return w


class Encoder:
    """Base class: embeds square windows (sizes in micrometres) around locations.

    Subclasses set ``name`` and ``embed_dim`` and implement :meth:`embed_windows`; they must return
    float32 arrays and pad windows outside the image with white.
    """

    name: str = "encoder"
    embed_dim: int = 0

    def config_key(self) -> str:
        """A string that changes whenever the embeddings would change (used as cache key)."""
        return f"{type(self).__name__}|{self.name}|{self.embed_dim}"

    def embed_windows(self, image: TissueImage, centres_rc_um: np.ndarray, window_um: float,
                      *, progress: Progress | None = None) -> np.ndarray:
        """Embed one ``window_um`` x ``window_um`` window centred on each location.

        Returns ``(N, embed_dim)`` float32. ``progress.advance`` is called with the number of
        locations done (per batch); the caller owns the stage.
        """
        raise NotImplementedError

    def embed_dense(self, image: TissueImage, points_rc_um: np.ndarray,
                    windows_um: Sequence[float], local_window_um: float | None = None,
                    *, progress: Progress | None = None) -> np.ndarray:
        """Embeddings for dense map points: ``(M, S, embed_dim)`` float32.

        ``S = len(windows_um)``, plus one leading entry for ``local_window_um`` when given. The
        default embeds each window with :meth:`embed_windows`; encoders with a cheaper dense
        path (ViT patch tokens) override it. Their dense embeddings need not equal
        :meth:`embed_windows` output, so train and predict with the same method.
        """
        sizes = dense_window_sizes(windows_um, local_window_um)
        progress = ensure_progress(progress)
        pts = as_centres_rc_um(points_rc_um)
        out = np.empty((len(pts), len(sizes), self.embed_dim), dtype=np.float32)
        for s, w in enumerate(sizes):
            out[:, s] = self.embed_windows(image, pts, w, progress=progress)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, embed_dim={self.embed_dim})"


def dense_window_sizes(windows_um: Sequence[float], local_window_um: float | None) -> list[float]:
    """Window sizes of a dense bag: ``[local_window_um] + windows_um`` (local only when given)."""
    sizes = [check_window_um(w) for w in windows_um]
    if local_window_um is not None:
        sizes = [check_window_um(local_window_um), *sizes]
    if not sizes:
        raise TrihrgeInputError("no window sizes given", "pass at least one window size in um")
    return sizes
