"""Results recorded on the AnnData a task was given, in the scanpy manner.

``tl.recovery(adata)``, ``tl.transfer(..., target)`` and ``tl.enhance(adata)`` return their result
objects and also write onto ``adata`` (``key_added``, by default ``trihrge_<task>``):

- ``adata.uns[key]``: the task, its summary metrics and its settings;
- ``adata.var[f"{key}_{column}"]``: the per-gene trust (:data:`napari_trihrge.metrics.TRUST_COLUMNS`,
  measured on held-out spots) for the modelled genes, missing for the others;
- recovery and transfer only: ``adata.obs[f"{key}_scored"]`` marks the spots that were predicted
  and scored, and ``adata.obsm[key]`` holds their predictions (one column per modelled gene,
  NaN on the other spots).

Everything written can be saved with ``adata.write_h5ad``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..metrics import TRUST_COLUMNS


def result_key(task: str, key_added: str | None) -> str:
    """Return the key a task's results are stored under."""
    return key_added or f"trihrge_{task}"


def _h5ad_safe(obj: Any) -> Any:
    """Nested dicts of plain values that ``write_h5ad`` accepts (no None, no numpy scalars)."""
    if isinstance(obj, dict):
        return {str(k): _h5ad_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        items = [_h5ad_safe(v) for v in obj if v is not None]
        if items and all(isinstance(v, (int, float, bool, np.number)) for v in items):
            return np.asarray(items)
        if items and all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object)
        return {str(i): v for i, v in enumerate(items)}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def store_result(adata: AnnData, task: str, *, metrics: dict[str, Any], config: dict[str, Any],
                 per_gene: pd.DataFrame | None = None, predictions: AnnData | None = None,
                 key_added: str | None = None) -> str:
    """Write a task's result onto ``adata`` (see the module docstring); returns the key used."""
    key = result_key(task, key_added)
    adata.uns[key] = _h5ad_safe({"task": task, "metrics": metrics, "config": config})
    if per_gene is not None:
        for col in TRUST_COLUMNS:
            if col not in per_gene:
                continue
            values = per_gene[col].reindex(adata.var_names)
            values = values.astype("boolean" if col == "beats_interpolation" else np.float64)
            adata.var[f"{key}_{col}"] = values.array
    if predictions is not None:
        scored = adata.obs_names.isin(predictions.obs_names)
        adata.obs[f"{key}_scored"] = scored
        table = pd.DataFrame(np.nan, index=adata.obs_names,
                             columns=pd.Index(predictions.var_names, dtype=str), dtype=np.float32)
        x = predictions.X
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
        table.loc[predictions.obs_names] = x
        adata.obsm[key] = table
    return key
