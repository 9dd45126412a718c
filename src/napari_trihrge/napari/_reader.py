"""npe2 reader: Space Ranger folders, .h5ad files, TriHRGE run folders and maps -> layers.

* a Space Ranger ``outs/`` folder (or a her2st-like section folder), an ``.h5ad`` of a sample:
  the H&E (RGB image, micrometres) and the spots (points with expression features);
* a run folder written by ``trihrge enhance|recovery`` (``summary.json``), ``enhanced.h5ad``,
  ``recovery.h5ad``: the H&E, the virtual / predicted spots and the first enhanced map;
* a map (``maps.ome.zarr`` folder, ``*.ome.tif``): one enhanced-map image layer whose gene can be
  switched in the Gene explorer;
* a SpatialData ``.zarr`` store (needs the ``spatialdata`` extra): the H&E and the spots, and the
  first enhanced map when the store holds napari-trihrge results.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrihrgeInputError
from . import layers as L
from .session import viewable_maps_told

_MAP_SUFFIXES = (".ome.tif", ".ome.tiff")

#: how to decode a large JPEG/PNG in the background while a preview shows, lent for one call by
#: the viewer's reader hook (:mod:`napari_trihrge.napari._qt._open`), so that this module stays
#: Qt-free; without one (scripts, tests, workers) the image is decoded in the calling thread
LARGE_IMAGE_LOADER: contextvars.ContextVar[Callable[..., Any] | None] = contextvars.ContextVar(
    "trihrge_large_image_loader", default=None)
#: whether a map store's map whose networks still have to run opens as a pending layer (filled
#: by the viewer's worker, :mod:`napari_trihrge.napari._qt._map_worker`) instead of being
#: computed here; set for one call by the viewer's reader hook, never in scripts or workers
DEFER_MAPS: contextvars.ContextVar[bool] = contextvars.ContextVar("trihrge_defer_maps",
                                                                  default=False)


@dataclass
class FileMaps:
    """Maps read back from disk (lazy dask values; NaN outside the tissue)."""

    values: Any
    stride_um: float
    origin_rc_um: np.ndarray
    gene_names: list[str]
    mask: Any = None
    std: Any = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def gene(self, name: str) -> np.ndarray:
        return np.asarray(self.values[self.gene_names.index(name)])


def read_maps(path: str | os.PathLike) -> FileMaps:
    """An OME-Zarr / OME-TIFF map written by napari-trihrge, as :class:`FileMaps`."""
    from ..io import read_map

    arr, um, names, origin = read_map(path, with_origin=True)
    # the ensemble spread written next to the map (maps.ome.zarr -> maps_std.ome.zarr)
    path = Path(path)
    std_path = path.with_name(path.name.replace(".ome.zarr", "_std.ome.zarr"))
    std = read_map(std_path)[0] if std_path != path and std_path.exists() else None
    return FileMaps(values=arr, stride_um=float(um), origin_rc_um=np.asarray(origin, float),
                    gene_names=list(names), std=std, source=str(path))


def _is_run_folder(p: Path) -> bool:
    """A run folder, finished or not (an unfinished one is refused by the reader with the
    reason, rather than not opened at all)."""
    from ..io.outputs import COMPLETE_MARKER

    return p.is_dir() and ((p / COMPLETE_MARKER).is_file() or (p / "summary.json").is_file())


def _is_zarr_map(p: Path) -> bool:
    return p.is_dir() and p.name.endswith(".zarr") and (
        (p / ".zattrs").exists() or (p / "zarr.json").exists())


def _is_spatialdata_store(p: Path) -> bool:
    from ..io import is_spatialdata_store

    return is_spatialdata_store(p)


def read_spatialdata_layers(path) -> list:
    """A SpatialData store: the H&E and the spots, with the first enhanced map (between them)
    when the store holds napari-trihrge results."""
    from .. import io
    from ..io.spatialdata import read_store_maps

    try:
        adata = io.read(_one(path))
    except TrihrgeInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - turn library errors into an actionable one
        raise TrihrgeInputError(f"cannot read {_one(path)}: {exc}", io.READ_HINT) from exc
    out = _image_layers(adata) + L.sample_layers(adata, with_image=False)
    stored = read_store_maps(adata)
    if stored is not None:
        maps = FileMaps(values=stored["values"], stride_um=float(stored["stride_um"]),
                        origin_rc_um=stored["origin_rc_um"], gene_names=stored["gene_names"],
                        std=stored["std"], source=_one(path))
        img_n = 1 if out and out[0][2] == "image" else 0
        out[img_n:img_n] = L.map_layers(maps, [maps.gene_names[0]])
    return out


def _is_sample_folder(p: Path) -> bool:
    from ..io import is_her2st_folder, is_visium_folder, is_visium_hd_folder

    try:
        return bool(is_visium_folder(p) or is_her2st_folder(p) or is_visium_hd_folder(p))
    except Exception:  # noqa: BLE001 - not ours
        return False


def get_reader(path: str | list[str]):
    """A reader function for paths we understand, else ``None`` (Qt-free; the hook napari calls,
    :func:`napari_trihrge.napari._qt._open.get_reader`, adds the viewer's session and the
    background decoding of large images). A folder opened with it makes napari pick this reader
    for the folders next to it (see :func:`remember_sibling_folders`)."""
    reader = _get_reader(path)
    if reader is None:
        return None
    if Path(_one(path)).is_dir():
        return functools.partial(_read_folder, reader)
    return reader


def _read_folder(reader, path) -> list:
    layers = reader(path)
    if layers and _viewer_thread_with_qt():  # napari opening it, not a script or a test
        try:
            from napari import current_viewer

            if current_viewer() is not None:
                remember_sibling_folders(_one(path))
        except ImportError:
            pass
    return layers


PLUGIN_NAME = "napari-trihrge"


def remember_sibling_folders(folder: str | os.PathLike) -> str | None:
    """Make napari open the folders next to ``folder`` with this plugin, with no reader chooser.

    napari offers every folder to every reader that accepts folders (its builtins too) and
    cannot pick one by what a folder holds (napari/npe2#155), so Space Ranger folders not named
    ``outs`` and run folders would ask each time. After this plugin opened one sample or run
    folder, the pattern ``<its parent>/*/`` is recorded as this plugin's in napari's reader
    preferences (Preferences > Plugins), unless a preference already covers that folder or the
    parent is the home or root folder; the other sections of a study then open directly (a
    folder there that is not a sample gets napari's chooser, with the reason). Returns the
    pattern recorded, or None."""
    import glob
    from fnmatch import fnmatch

    try:
        from napari.settings import get_settings

        settings = get_settings().plugins
    except Exception:  # noqa: BLE001 - no napari settings: nothing to remember
        return None
    real = Path(os.path.realpath(str(folder)))
    parent = real.parent
    if parent == parent.parent or parent == Path.home().resolve():
        return None
    prefs = dict(settings.extension2reader)
    if any(fnmatch(str(real) + os.sep, pat) for pat in prefs):
        return None  # the user (or this plugin) decided for this folder already
    pattern = glob.escape(str(parent)) + os.sep + "*" + os.sep
    settings.extension2reader = {**prefs, pattern: PLUGIN_NAME}
    return pattern


def _get_reader(path: str | list[str]):
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    name = p.name.lower()
    if p.is_dir():
        if _is_run_folder(p):
            return read_run_layers
        from ..io.cell_formats import is_cells_spatialdata, is_labels_ome_zarr

        if is_cells_spatialdata(p):
            return read_cells_store_layers
        if is_labels_ome_zarr(p):
            return read_labels_zarr_layers
        if _is_spatialdata_store(p):
            return read_spatialdata_layers
        if _is_map_store(p):
            return read_map_store_layers
        if _is_zarr_map(p):
            return read_map_layers
        if _is_sample_folder(p):
            return read_sample_layers
        return None
    if name.endswith(".h5ad"):
        return read_sample_layers
    if name.endswith(_MAP_SUFFIXES):
        return read_map_layers
    return None


def _one(path) -> str:
    return str(path[0] if isinstance(path, list | tuple) else path)


def read_sample_layers(path, image_path: str | None = None, **read_kwargs) -> list:
    """Layers of a sample (H&E + spots); an engine output .h5ad opens as predicted spots."""
    from .. import io

    path = _one(path)
    if image_path:
        read_kwargs.setdefault("image", image_path)
    p = Path(path)
    if p.suffix.lower() == ".h5ad":
        import anndata as ad

        peek = ad.read_h5ad(p, backed="r")
        task = (peek.uns.get("trihrge", {}) or {}).get("task")
        peek.file.close()
        if task in L.RESULT_LAYERS:
            return _tag_source(_result_h5ad_layers(ad.read_h5ad(p), source=p), p)
    with _ViewerProgress(f"Opening {p.name}", total=2) as bar:
        bar.step("reading the spots, counts and H&E preview")
        try:
            adata = io.read(path, **read_kwargs)
        except TrihrgeInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - turn library errors into an actionable one
            raise TrihrgeInputError(f"cannot read {path}: {exc}", io.READ_HINT) from exc
        bar.step("preparing the spots and the H&E layers")
        source = os.path.abspath(path)
        spots = L.sample_layers(adata, source=source, with_image=False)
        return _image_layers(adata, source=source) + spots


def _image_layers(adata, source: str | None = None) -> list:
    """The sample's H&E layer, never freezing the viewer and never failing silently.

    A large JPEG or PNG read in the viewer's thread (a drop, File > Open, ``viewer.open``) is
    decoded in a background thread with napari progress shown, by the loader the viewer's reader
    hook lends (:data:`LARGE_IMAGE_LOADER`): its in-memory preview (hires or lowres) is shown at
    once and replaced by the full image when it is ready. An image that
    cannot be shown (blank, unreadable) becomes a warning notification that says why and what
    to do, and the spots open all the same."""
    out: list = []
    load_later = LARGE_IMAGE_LOADER.get()
    if load_later is not None and L.image_decoded_whole(adata) and _viewer_thread_with_qt():
        preview = None
        res = L.preview_resolution(adata)
        if res is not None:
            try:
                preview = L.image_layer(adata, resolution=res)
            except TrihrgeInputError:
                preview = None  # the full image may still be fine: the loader says if not
        if load_later(adata, preview, source=source) is not None:
            return [preview] if preview is not None else []
    try:  # small, lazy (TIFF) or read in a worker already: decoded here
        img = L.image_layer(adata)
    except TrihrgeInputError as exc:
        notify_image_problem(adata, exc)
        return out
    if img is not None:
        if source is not None:
            img[1]["metadata"]["trihrge"]["source"] = str(source)
        out.append(img)
    return out


def notify_image_problem(adata, exc: Exception) -> None:
    """Tell the user (napari notification, a warning without napari) why the H&E of the
    sample is not shown and how to fix it; the spots are shown all the same."""
    import warnings

    msg = f"The H&E of {L.sample_name(adata)} is not shown (the spots are): {exc}"
    try:
        from napari.utils.notifications import show_warning

        show_warning(msg)
    except ImportError:
        warnings.warn(msg, stacklevel=3)


def _viewer_thread_with_qt() -> bool:
    """Whether this runs in the thread of a running Qt application (where napari calls
    readers for a drop or ``viewer.open``): there, slow decoding would freeze the window."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        from qtpy.QtWidgets import QApplication
    except Exception:  # noqa: BLE001 - no Qt binding: nothing to freeze
        return False
    return QApplication.instance() is not None


class _ViewerProgress:
    """A napari progress bar (activity panel) when the reader runs in the viewer's thread, as
    napari calls readers for dropped files; nothing in a worker thread or without napari."""

    def __init__(self, desc: str, total: int):
        self.desc, self.total, self.bar, self.n = desc, total, None, 0

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            try:
                from napari.utils import progress

                self.bar = progress(total=self.total, desc=self.desc)
            except Exception:  # noqa: BLE001 - no napari: no bar
                self.bar = None
        return self

    def step(self, what: str) -> None:
        if self.bar is not None:
            if self.n:
                self.bar.update(1)
            self.n += 1
            self.bar.set_description(f"{self.desc}: {what}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def _tag_source(layers: list, source) -> list:
    """Record where the layers came from: opening the same path again replaces them."""
    for _, kwargs, _ in layers:
        kwargs.setdefault("metadata", {}).setdefault("trihrge", {})["source"] = \
            os.path.abspath(str(source))
    return layers


def _result_h5ad_layers(adata, file_task: str | None = None, source: Path | None = None
                        ) -> list:
    """Layers of an engine output AnnData (virtual spots or recovered hidden spots), drawn as
    its task (``uns['trihrge']['task']``, one of :data:`layers.RESULT_LAYERS`; else
    ``file_task``, the task its file name in a run folder stands for) says."""
    task = adata.uns.get("trihrge", {}).get("task")
    task = task if task in L.RESULT_LAYERS else file_task
    out = _image_layers(adata, source=None if source is None else str(source))
    genes = None
    if task == "recovery" and "pcc" in adata.var:
        order = np.argsort(-np.nan_to_num(adata.var["pcc"].to_numpy(float), nan=-9))
        genes = [str(adata.var_names[i]) for i in order[:8]]
    out.append(L.result_spots_layer(adata, task, genes))
    return out


def read_map_layers(path) -> list:
    """One enhanced-map layer (the first gene) of an OME-Zarr / OME-TIFF map."""
    maps = read_maps(_one(path))
    return _tag_source(L.map_layers(maps), _one(path))


def _is_map_store(p: Path) -> bool:
    from ..io.map_store import is_map_store

    return is_map_store(p)


def read_map_store_layers(path) -> list:
    """One enhanced-map layer (the first gene) computed from a factorised map store; a store
    that is not whole is refused before any layer is made."""
    from ..io import open_map_store

    maps = viewable_maps_told(open_map_store(_one(path)))
    return _tag_source(_store_map_layers(maps, maps.gene_names[0]), _one(path))


def _store_map_layers(maps, gene: str, spot_values: dict | None = None) -> list:
    """``gene``'s map layer: computed now, or pending when the viewer's hook defers maps that
    are not ready (:data:`DEFER_MAPS`)."""
    if DEFER_MAPS.get() and not L.map_ready(maps, gene):
        return [L.pending_map_layer(maps, gene)]
    return L.map_layers(maps, [gene], spot_values=spot_values)


def read_run_layers(path) -> list:
    """A run folder: H&E, virtual or predicted spots, and the first enhanced map."""
    import anndata as ad

    from ..io.outputs import check_complete_run

    p = check_complete_run(_one(path))
    out: list = []
    if (p / "cells.h5ad").exists():  # `trihrge cells`
        return _tag_source(read_cells_layers(p), p)
    if (p / "enhanced.h5ad").exists():  # enhance and predict
        out += _result_h5ad_layers(ad.read_h5ad(p / "enhanced.h5ad"), "enhance")
    elif (p / "recovery.h5ad").exists():
        out += _result_h5ad_layers(ad.read_h5ad(p / "recovery.h5ad"), "recovery")
    from ..io.map_store import STORE_NAME

    if (p / "maps.ome.zarr").exists() or (p / STORE_NAME).exists():
        if (p / "maps.ome.zarr").exists():
            maps = read_maps(p / "maps.ome.zarr")
        else:  # a factorised store (checked whole before any layer is made)
            from ..io import open_map_store

            maps = viewable_maps_told(open_map_store(p / STORE_NAME))
        spot_vals = None
        virt = next((t for t in out if t[1].get("metadata", {}).get("trihrge", {}).get("kind")
                     == "virtual"), None)
        gene = maps.gene_names[0]
        if virt is not None:
            gene = virt[1]["metadata"]["trihrge"].get("gene") or gene
            if gene not in maps.gene_names:
                gene = maps.gene_names[0]
            feats = virt[1]["features"]
            if gene in feats:
                spot_vals = {gene: feats[gene].to_numpy()}
        maps_layers = _store_map_layers(maps, gene, spot_vals)
        pending = maps_layers[0][1]["metadata"]["trihrge"].get("pending", False)
        # one colour scale: the spots take the map's limits (a pending map: when it is drawn)
        if virt is not None and spot_vals is not None and not pending:
            virt[1]["face_contrast_limits"] = maps_layers[0][1]["contrast_limits"]
        img_n = 1 if out and out[0][2] == "image" else 0
        out[img_n:img_n] = maps_layers  # map above the H&E, below the spots
    if not out:
        raise TrihrgeInputError(f"{p} holds no enhanced.h5ad, recovery.h5ad or maps",
                                "open the folder given to --out of a finished trihrge run")
    out = _tag_source(out, p)
    spots = measured_spots_layer(p, out)
    return out + ([spots] if spots is not None else [])


def measured_spots_layer(run_dir: Path, layers: list) -> tuple | None:
    """The measured spots of a run folder's sample (read again from the sample path its
    ``summary.json`` records), coloured by the gene and on the scale of the run's layers, so a
    reopened run has everything side by side needs; None when the run records no readable
    sample (a model applied to an H&E alone, a sample moved since)."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    from ..io.outputs import run_sample_path

    source = run_sample_path(summary)
    if not source or not Path(str(source)).exists():
        return None  # no sample recorded, or moved since
    from .. import io

    try:
        um = summary.get("um_per_px")
        adata = io.read(str(source), **({"um_per_px": float(um)} if um else {}))
    except Exception:  # noqa: BLE001 - an H&E alone (nothing measured), a sample no longer
        return None    # readable: the run opens all the same, without the spots
    shown = next((kw for _, kw, kind in layers if kind == "image"
                  and kw["metadata"]["trihrge"].get("kind") == "map"), None)
    gene = shown["metadata"]["trihrge"]["gene"] if shown is not None else None
    if gene is not None and gene not in adata.var_names:
        gene = None
    same_scale = gene is not None and not shown["metadata"]["trihrge"].get("pending")
    layer = L.sample_layers(adata, None if gene is None else [gene], source=os.path.abspath(
        str(source)), with_image=False, color_by=gene,
        **({"contrast_limits": shown["contrast_limits"]} if same_scale else {}))[0]
    return layer


def read_cells_layers(folder) -> list:
    """A cells folder (``trihrge cells``): the cells as a Labels layer in micrometres,
    coloured by the first gene when they have expression."""
    import anndata as ad
    import tifffile

    p = Path(folder)
    cells = ad.read_h5ad(p / "cells.h5ad")
    labels = tifffile.imread(p / "cells.tif")
    um_per_px = float(cells.uns.get("trihrge", {}).get("cells", {}).get("label_um_per_px", 0)
                      or cells.uns.get("trihrge", {}).get("um_per_px", 1.0))
    gene = str(cells.var_names[0]) if cells.n_vars else None
    return [L.cells_layer(labels, um_per_px, cells, gene=gene)]


def read_cells_store_layers(path) -> list:
    """A cells SpatialData store (``trihrge cells --formats spatialdata``): the cells as a
    Labels layer in micrometres (read lazily, multiscale), coloured by the first gene."""
    from ..io.cell_formats import read_cells_spatialdata

    cells, levels, um_per_px = read_cells_spatialdata(_one(path))
    gene = str(cells.var_names[0]) if cells.n_vars else None
    return _tag_source([L.cells_layer(levels, um_per_px, cells, gene=gene)], _one(path))


def read_labels_zarr_layers(path) -> list:
    """An OME-Zarr of label images (``labels.ome.zarr``): one Labels layer each, in
    micrometres, read lazily."""
    from ..io.cell_formats import read_labels_ome_zarr

    return _tag_source([(levels, {"name": name, "scale": (um, um), "units": ("um", "um"),
                                  "metadata": {"trihrge": {"kind": "labels"}}}, "labels")
                        for name, (levels, um) in read_labels_ome_zarr(_one(path)).items()],
                       _one(path))
