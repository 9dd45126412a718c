"""The run folder: what a run writes and how to read it back.

```
<out>/
  summary.json        sample, encoder, n_spots, n_genes, device, timings_s, peak_rss_mb, scores
  enhanced.h5ad       virtual spots (enhance): predictions, obsm['spatial'] in full-res pixels
  maps.ome.zarr       dense per-gene maps (genes, rows, cols) with physical pixel size (enhance
                      with --stride-um); maps_std.ome.zarr the ensemble spread when --ensemble > 1
  recovery.h5ad       hidden spots (recovery): predicted X, layers 'measured' and 'knn'
  recovery_genes.csv  per-gene scores on the hidden spots, next to the kNN baseline
  model/              self-describing model folder (io/model_folder.py): model.pt (state dict),
                      model.json (config + description), genes.csv, member_<k>/ (ensemble)
  overview.png        image, measured spots and enhanced result for a few genes, with colour bars
```
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path
from .errors import TrihrgeInputError


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0))


def prepare_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Create the run folder; refuse a non-empty existing one unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrihrgeInputError(f"{out} is a file, not a folder", "pass a folder with --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TrihrgeInputError(f"the output folder {out} already has files in it",
                                "choose another --out folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    return Path(path)


def _h5ad_safe(value: Any) -> Any:
    """``uns`` values h5ad can store: tuples become lists, None becomes the string 'None'."""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        items = [_h5ad_safe(v) for v in value]
        return np.asarray(items) if items and all(
            isinstance(v, int | float | str | np.number) for v in items) else items
    if value is None:
        return "None"
    return value


def write_h5ad(adata, path: str | Path, overwrite: bool = True) -> Path:
    """Write an AnnData atomically; ``uns`` is made storable first (tuples, None)."""
    from .io.writers import write_h5ad_atomic

    adata = adata.copy()
    adata.uns = _h5ad_safe(dict(adata.uns))
    return write_h5ad_atomic(adata, path, overwrite=overwrite)


def write_models(out_dir: Path, fits: list, extra: dict[str, Any]) -> list[Path]:
    """Save each trained model (one per ensemble member) as ``model/`` or ``model_<k>/``."""
    from .model import save_model

    paths = []
    for k, fit in enumerate(fits):
        path = out_dir / ("model" if k == 0 else f"model_{k}")
        save_model(path, fit.model, None, {**extra, "ensemble_member": k},
                   overwrite=True)
        paths.append(path)
    return paths


def write_recovery(out_dir: Path, result) -> dict[str, str]:
    """Write a recovery result into ``out_dir`` (already prepared)."""
    write_h5ad(result.predictions, out_dir / "recovery.h5ad")
    with atomic_path(out_dir / "recovery_genes.csv") as tmp:
        result.per_gene.to_csv(tmp)
    return {"predictions": "recovery.h5ad", "per_gene": "recovery_genes.csv"}


def write_enhance(out_dir: Path, result) -> dict[str, str]:
    """Write an enhance result (the dense maps were streamed to the folder while predicting)."""
    write_h5ad(result.virtual, out_dir / "enhanced.h5ad")
    files = {"virtual_spots": "enhanced.h5ad"}
    if result.maps is not None:
        files["maps"] = "maps.ome.zarr"
        if result.maps.std is not None:
            files["maps_std"] = "maps_std.ome.zarr"
    return files


def read_run(out_dir: str | Path) -> dict[str, Any]:
    """Read a run folder back: summary, enhanced / recovery AnnData and the maps (lazy)."""
    import anndata as ad

    out = Path(out_dir)
    if not (out / "summary.json").exists():
        raise TrihrgeInputError(f"{out} is not a napari-trihrge run folder (no summary.json)",
                                "pass the folder given to --out of a trihrge run")
    run: dict[str, Any] = {"summary": json.loads((out / "summary.json").read_text())}
    for name in ("enhanced", "recovery"):
        if (out / f"{name}.h5ad").exists():
            run[name] = ad.read_h5ad(out / f"{name}.h5ad")
    if (out / "maps.ome.zarr").exists():
        from .io.writers import read_map

        run["maps"] = read_map(out / "maps.ome.zarr", with_origin=True)
        if (out / "maps_std.ome.zarr").exists():
            run["maps_std"] = read_map(out / "maps_std.ome.zarr", with_origin=True)
    return run
