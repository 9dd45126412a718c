"""The run folder: what a run writes and how to read it back.

```
<out>/
  summary.json        sample, encoder, n_spots, n_genes, device, timings_s, peak_rss_mb, scores
  enhanced.h5ad       virtual spots (enhance): predictions, obsm['spatial'] in full-res pixels,
                      per-gene trust in var and uns['trihrge']['trust']
  maps.store.zarr     the dense maps (enhance with --stride-um) as the factorised map store,
                      every gene computed on demand (docs/map-store.md)
  maps.ome.zarr       with --materialise-maps: every gene's map (genes, rows, cols) with physical
                      pixel size; maps_std.ome.zarr the ensemble spread when --ensemble > 1
  recovery.h5ad       hidden spots (recovery): predicted X, layers 'measured' and 'knn'
  recovery_genes.csv  per-gene scores on the hidden spots, next to the kNN baseline, with the
                      trust columns (pcc, pcc_baseline_knn, pcc_gain, beats_interpolation)
  enhance_genes.csv   enhance: the same per-gene scores from the run's internal held-out split
                      (not written with --no-trust)
  model/              self-describing model folder (io/model_folder.py): model.pt (state dict),
                      model.json (config + description), genes.csv, member_<k>/ (ensemble)
  overview.png        image, measured spots and enhanced result for a few genes, with colour bars
  run_complete.json   written last: readers refuse a folder without it (interrupted run)
```

A run is written into a temporary folder beside ``<out>`` and swapped in when complete
(:func:`run_folder`); a lock (``.<out>.lock``) refuses a second run into the same folder.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path, recover_interrupted_swap, replace_folder
from ..errors import TrihrgeInputError


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0))


#: Written last into every finished run folder; readers refuse a folder without it.
COMPLETE_MARKER = "run_complete.json"
_PARTIAL_TAG = "trihrge-partial"


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that is a file, or a non-empty folder unless ``overwrite``.

    Nothing is created or deleted.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrihrgeInputError(f"{out} is a file, not a folder", "pass a folder with --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TrihrgeInputError(f"the output folder {out} already has files in it",
                                "choose another --out folder or pass --overwrite")
    return out


def input_paths(*items: Any) -> list[Path]:
    """Return the files and folders a run reads.

    These are paths as given, a sample's source and the path it was read from, its
    full-resolution image and its SpatialData store (``uns['trihrge']``), a model's folder
    (``.path``); sequences are walked, None is skipped.
    """
    out: list[Path] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, (str, Path)):
            out.append(Path(item))
        elif isinstance(item, (list, tuple)):
            out += input_paths(*item)
        elif hasattr(item, "uns"):  # an AnnData
            info = item.uns.get("trihrge", {}) or {}
            store = info.get("spatialdata") or {}
            out += input_paths(info.get("source"), info.get("read_from"),
                               info.get("fullres_image_path"),
                               store.get("store") if isinstance(store, dict) else None)
        elif getattr(item, "path", None) is not None:  # a TrainedModel read from a folder
            out.append(Path(item.path))
    return out


def check_outside_inputs(out_dir: str | Path, inputs: Any, flag: str = "--out") -> Path:
    """Refuse an output that is one of the run's inputs, lies inside one, or holds one.

    An ``--overwrite`` would replace such an input: an output must never change what the run
    reads. ``inputs`` is anything :func:`input_paths` takes.
    """
    out = Path(out_dir).resolve()
    for src in input_paths(inputs):
        src = src.resolve()
        if out == src or src in out.parents:
            raise TrihrgeInputError(
                f"the output {out} is {'the input' if out == src else 'inside the input'} "
                f"{src}: writing there would change what the run reads",
                f"choose an output folder outside the inputs ({flag})")
        if out in src.parents:
            raise TrihrgeInputError(
                f"the output {out} holds the input {src}: writing the run there would "
                "replace it", f"choose an output folder that does not contain the inputs ({flag})")
    return out


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrihrgeInputError(f"cannot create the folder {path}: {exc.strerror or exc}",
                                "choose an output folder you can write to (--out)") from exc


def mark_complete(out_dir: str | Path, **extra: Any) -> Path:
    """Write the completion marker (last file of a run folder)."""
    import datetime

    from .. import __version__

    out = Path(out_dir)
    files = sorted(p.name for p in out.iterdir() if p.name != COMPLETE_MARKER)
    return write_json(out / COMPLETE_MARKER, {
        "complete": True, "napari_trihrge": __version__, "files": files,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(), **extra})


def is_complete_run(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` is a run folder whose run finished (it has the completion marker)."""
    return (Path(out_dir) / COMPLETE_MARKER).is_file()


def check_complete_run(out_dir: str | Path) -> Path:
    """``out_dir`` if it is a finished run folder, else an actionable error."""
    out = Path(out_dir)
    if not out.is_dir():
        raise TrihrgeInputError(f"run folder not found: {out}",
                                "pass the folder given to --out of a trihrge run")
    if not is_complete_run(out):
        if (out / "summary.json").exists() or any(out.iterdir()):
            raise TrihrgeInputError(
                f"{out} is not a finished run folder (no {COMPLETE_MARKER}): the run was "
                "interrupted, is still running, or was written by an older version",
                "run it again (with --overwrite to replace the folder)")
        raise TrihrgeInputError(f"{out} is not a napari-trihrge run folder",
                                "pass the folder given to --out of a trihrge run")
    return out


def run_sample_path(summary: dict[str, Any]) -> str | None:
    """Return the path a run's sample can be read again from, as its ``summary.json`` says.

    The path the run read it from (``read_from``), else its ``source``; a counts table inside a
    her2st-like section folder stands for that folder (a run written before ``read_from`` was
    recorded: the table alone cannot be read without its positions and H&E). None when the
    summary records neither.
    """
    from . import _TABLE_SUFFIXES
    from .spot_table import is_her2st_folder

    path = summary.get("read_from") or summary.get("source")
    if not path:
        return None
    p = Path(str(path))
    if p.name.lower().endswith(_TABLE_SUFFIXES) and is_her2st_folder(p.parent):
        return str(p.parent)
    return str(path)


class RunLock:
    """A lock beside a run folder (``.<name>.lock``).

    A second run into the same folder is refused while one is active. A lock left by a process that
    no longer runs (killed) is taken over.
    """

    def __init__(self, out_dir: str | Path):
        out = Path(out_dir)
        self.path = out.parent / f".{out.name}.lock"
        self.out = out
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, or raise when another live run holds it."""
        import os
        import socket
        import time

        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale(me["host"]):
                    self.path.unlink(missing_ok=True)
                    continue
                other = self._owner()
                raise TrihrgeInputError(
                    f"another run (process {other.get('pid', '?')} on "
                    f"{other.get('host', '?')}) is writing into {self.out}",
                    f"wait for it to finish or choose another --out; if no run is active, "
                    f"delete {self.path}") from None
            except OSError as exc:
                raise TrihrgeInputError(
                    f"cannot create the lock {self.path}: {exc.strerror or exc}",
                    "choose an output folder you can write to (--out)") from exc
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise TrihrgeInputError(f"cannot take the lock {self.path}",
                                f"delete {self.path} if no run is active")

    def _owner(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return {}

    def _stale(self, host: str) -> bool:
        """Tell whether the lock's process is gone (same machine only).

        An unreadable lock written more than a minute ago counts as stale too.
        """
        import os
        import time

        owner = self._owner()
        if not owner:
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if owner.get("host") != host:
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def release(self) -> None:
        """Give the lock back (remove its file) when this run holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def run_folder(out_dir: str | Path, overwrite: bool = False, *, inputs: Any = ()
               ) -> Iterator[Path]:
    """Write a run into a new temporary folder beside ``out_dir`` and swap it in at the end.

    Yields the temporary folder. On success the caller has written the run (the savers of
    :mod:`napari_trihrge.workflows.runs` end with the completion marker) and the folder replaces
    ``out_dir`` (only with ``overwrite`` when ``out_dir`` has files); on any error the
    temporary folder is deleted and ``out_dir`` is left as it was (nothing is created). A lock
    refuses a second run into the same folder while this one is active. ``inputs`` (samples,
    models, paths: :func:`input_paths`) are refused as the output or around it.
    """
    import os
    import shutil
    import uuid

    check_outside_inputs(out_dir, inputs)
    out = check_out_dir(out_dir, overwrite)
    _make_folder(out.parent)
    with RunLock(out):
        recover_interrupted_swap(out)  # a run killed while swapping its folder in
        for stale in out.parent.glob(f".{out.name}.{_PARTIAL_TAG}-*"):  # runs killed earlier
            shutil.rmtree(stale, ignore_errors=True)
        staging = out.parent / f".{out.name}.{_PARTIAL_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _make_folder(staging)
        try:
            yield staging
            if not is_complete_run(staging):
                mark_complete(staging)
            check_out_dir(out, overwrite)  # still true at the end
            replace_folder(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


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
    """Write ``data`` as JSON to ``path`` atomically (numpy values as plain numbers)."""
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
    from .writers import write_h5ad_atomic

    adata = adata.copy()
    adata.uns = _h5ad_safe(dict(adata.uns))
    return write_h5ad_atomic(adata, path, overwrite=overwrite)


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
    if getattr(result, "trust", None) is not None:
        with atomic_path(out_dir / "enhance_genes.csv") as tmp:
            result.trust.to_csv(tmp)
        files["per_gene"] = "enhance_genes.csv"
    store = getattr(result.maps, "path", None) is not None  # a factorised map store
    if store:
        from .map_store import STORE_NAME

        files["maps_store"] = STORE_NAME
    if result.maps is not None and (not store or (out_dir / "maps.ome.zarr").exists()):
        files["maps"] = "maps.ome.zarr"  # materialised (with the store: --materialise-maps)
        if result.maps.std is not None:
            files["maps_std"] = "maps_std.ome.zarr"
    return files


def read_run(out_dir: str | Path) -> dict[str, Any]:
    """Read a run folder back: summary, enhanced / recovery AnnData and the maps (lazy)."""
    import anndata as ad

    out = check_complete_run(out_dir)
    run: dict[str, Any] = {"summary": json.loads((out / "summary.json").read_text())}
    for name in ("enhanced", "recovery"):
        if (out / f"{name}.h5ad").exists():
            run[name] = ad.read_h5ad(out / f"{name}.h5ad")
    if (out / "maps.ome.zarr").exists():
        from .writers import read_map

        run["maps"] = read_map(out / "maps.ome.zarr", with_origin=True)
        if (out / "maps_std.ome.zarr").exists():
            run["maps_std"] = read_map(out / "maps_std.ome.zarr", with_origin=True)
    from .map_store import STORE_NAME, open_map_store

    if (out / STORE_NAME).exists():
        run["maps_store"] = open_map_store(out / STORE_NAME)
    return run
