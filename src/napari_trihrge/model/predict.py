"""Prediction with trained TriHRGENet models, in bounded memory.

* :func:`predict` -- one model, all locations -> (M, G) float32.
* :func:`predict_ensemble` -- several models -> per-location mean and std (population std).
* :func:`predict_in_chunks` -- generator over location chunks, for inputs that do not fit in
  memory (arrays, memmaps, dask arrays, or a ``features_fn(start, stop)`` that computes them).

Prediction runs in float32 on the chosen device (``'auto'``: CUDA if available), in eval mode
under ``torch.inference_mode``; the model's train/eval mode is restored afterwards. CPU thread
pools are sized by :func:`napari_trihrge.threads.cpu_threads`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..errors import TrihrgeInputError
from ..progress import Progress, ensure_progress
from ..threads import cpu_threads
from .network import TriHRGENet

FeaturesFn = Callable[[int, int], tuple[Any, Any]]


def _as_models(models: TriHRGENet | Sequence[TriHRGENet]) -> list[TriHRGENet]:
    if isinstance(models, torch.nn.Module):
        return [models]
    models = list(models)
    if not models:
        raise TrihrgeInputError("no model given", "train or load a model first")
    g = {m.config.n_genes for m in models}
    if len(g) != 1:
        raise TrihrgeInputError(f"ensemble models predict different numbers of genes {g}",
                                "combine models trained on the same genes")
    return models


@contextlib.contextmanager
def _eval_on(models: list[TriHRGENet], device: torch.device) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.to(device)
        m.eval()
    try:
        with torch.inference_mode(), cpu_threads():
            yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def _to_tensor(block: Any, device: torch.device) -> torch.Tensor | None:
    if block is None:
        return None
    arr = np.asarray(block, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def _n_locations(features: Any, neighbour: Any) -> int:
    src = features if features is not None else neighbour
    if src is None:
        raise TrihrgeInputError("no input to predict from", "pass features and/or neighbour")
    if features is not None and neighbour is not None and len(features) != len(neighbour):
        raise TrihrgeInputError(f"{len(features)} feature rows but {len(neighbour)} neighbour "
                                "rows", "pass one neighbour vector per location")
    return len(src)


def _check(models: list[TriHRGENet], features: Any, neighbour: Any) -> None:
    for m in models:
        bag = features if m.config.n_scales > 0 else None
        nb = neighbour if m.config.neighbour_input else None
        m.check_inputs(bag, nb)


def _block_stats(models: list[TriHRGENet], feats: Any, nb: Any, device: torch.device,
                 batch_size: int, want_std: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (and population std) over models of the predictions for one block of locations."""
    n = _n_locations(feats, nb)
    g = models[0].config.n_genes
    mean = np.empty((n, g), dtype=np.float32)
    std = np.empty((n, g), dtype=np.float32) if want_std else None
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        x = _to_tensor(feats[s:e], device) if feats is not None else None
        v = _to_tensor(nb[s:e], device) if nb is not None else None
        preds = torch.stack([
            m(x if m.config.n_scales > 0 else None,
              v if m.config.neighbour_input else None).float() for m in models])
        mean[s:e] = preds.mean(dim=0).cpu().numpy()
        if want_std:
            std[s:e] = preds.std(dim=0, correction=0).cpu().numpy()
    return mean, std


def predict(model: TriHRGENet, features: Any = None, neighbour: Any = None, *,
            batch_size: int = 4096, device: str | torch.device = "auto",
            progress: Progress | None = None) -> np.ndarray:
    """Predictions (M, G) float32 for features (M, S, D) [and neighbour (M, G_nb)]."""
    mean, _ = _predict_all([model], features, neighbour, batch_size, device, progress, False)
    return mean


def predict_ensemble(models: Sequence[TriHRGENet], features: Any = None, neighbour: Any = None,
                     *, batch_size: int = 4096, device: str | torch.device = "auto",
                     progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std over the models' predictions, each (M, G) float32."""
    mean, std = _predict_all(models, features, neighbour, batch_size, device, progress, True)
    return mean, std


def _predict_all(models, features, neighbour, batch_size, device, progress, want_std):
    models = _as_models(models)
    n = _n_locations(features, neighbour)
    mean = np.empty((n, models[0].config.n_genes), dtype=np.float32)
    std = np.empty_like(mean) if want_std else None
    for sl, *vals in predict_in_chunks(models, features, neighbour, chunk_size=batch_size,
                                       batch_size=batch_size, device=device,
                                       return_std=want_std, progress=progress):
        mean[sl] = vals[0]
        if want_std:
            std[sl] = vals[1]
    return mean, std


def predict_last_hidden(models: Sequence[TriHRGENet], features: Any = None,
                        neighbour: Any = None, *, batch_size: int = 4096,
                        device: str | torch.device = "auto") -> np.ndarray:
    """Each model's last hidden layer (:meth:`TriHRGENet.last_hidden`, eval mode) at every
    location: (models, M, H) float32, computed by :class:`~napari_trihrge.model.trunk.FusedTrunk`."""
    from .trunk import FusedTrunk, trunk_last_hidden

    models = _as_models(models)
    _n_locations(features, neighbour)
    _check(models, features, neighbour)
    dev = resolve_device(device)
    with cpu_threads():
        return trunk_last_hidden([FusedTrunk(m, dev) for m in models], features,
                                 neighbour=neighbour, batch_size=batch_size)


def predict_in_chunks(models: TriHRGENet | Sequence[TriHRGENet], features: Any = None,
                      neighbour: Any = None, *, n_locations: int | None = None,
                      chunk_size: int = 65536, batch_size: int = 4096,
                      device: str | torch.device = "auto", return_std: bool = False,
                      progress: Progress | None = None) -> Iterator[tuple]:
    """Yield ``(slice, predictions)`` (or ``(slice, mean, std)`` with ``return_std``) per chunk.

    ``features``/``neighbour`` are array-likes sliceable along the first axis (numpy, memmap,
    dask: only one chunk is materialised at a time), or ``features`` is a callable
    ``features_fn(start, stop) -> (features_block or None, neighbour_block or None)`` together with
    ``n_locations``. Several models give their mean (ensemble). Progress: stage 'prediction',
    one step per chunk.
    """
    models = _as_models(models)
    if batch_size < 1 or chunk_size < 1:
        raise TrihrgeInputError("batch_size and chunk_size must be >= 1", "pass positive sizes")
    if callable(features):
        if n_locations is None:
            raise TrihrgeInputError("n_locations is needed with a features function",
                                    "pass n_locations=<number of locations>")
        fn: FeaturesFn = features
        n = int(n_locations)
    else:
        n = _n_locations(features, neighbour)
        _check(models, features, neighbour)

        def fn(s: int, e: int) -> tuple[Any, Any]:
            return (features[s:e] if features is not None else None,
                    neighbour[s:e] if neighbour is not None else None)

    dev = resolve_device(device)
    progress = ensure_progress(progress)
    progress.stage("prediction", total=max(1, -(-n // chunk_size)))
    with _eval_on(models, dev):
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            feats, nb = fn(s, e)
            if callable(features):
                _check(models, feats, nb)
                if _n_locations(feats, nb) != e - s:
                    raise TrihrgeInputError(
                        f"features_fn({s}, {e}) returned {_n_locations(feats, nb)} rows",
                        f"return exactly {e - s} rows")
            mean, std = _block_stats(models, feats, nb, dev, batch_size, return_std)
            yield (slice(s, e), mean, std) if return_std else (slice(s, e), mean)
            progress.advance(1)


__all__ = ["predict", "predict_ensemble", "predict_in_chunks", "predict_last_hidden"]
