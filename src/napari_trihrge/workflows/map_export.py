"""A finished run's dense maps: read them (factorised store or materialised OME-Zarr) and
export chosen genes as OME-Zarr or SpatialData for other tools (``trihrge export-maps``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import refuse_overwrite
from ..errors import TrihrgeInputError
from ..io.map_store import (
    STORE_NAME,
    FactorMaps,
    check_materialised_dtype,
    is_map_store,
    materialise_ome_zarr,
    open_map_store,
    resolve_genes,
)
from ..io.outputs import (
    check_complete_run,
)
from ..tl import DenseMaps

#: formats :func:`export_maps` writes
EXPORT_FORMATS = ("ome-zarr", "spatialdata")


def read_run_maps(source: str | Path, *, materialised: bool = True) -> FactorMaps | DenseMaps:
    """The dense maps of a finished run folder, or of a map store path.

    With ``materialised``, a run's ``maps.ome.zarr`` (``--materialise-maps``, or an older run) is
    preferred and read lazily as :class:`~napari_trihrge.tl.DenseMaps`: its genes are read, not
    computed. Otherwise, or without one, the factorised map store (:data:`STORE_NAME`: any
    gene's map computed when asked). Raises :class:`TrihrgeInputError` saying what is missing.
    """
    source = Path(source)
    if materialised and (source / "maps.ome.zarr").exists():
        from ..io import read_map

        arr, stride_um, genes, origin = read_map(
            check_complete_run(source) / "maps.ome.zarr", with_origin=True)
        return DenseMaps(values=arr, stride_um=float(stride_um),
                         origin_rc_um=np.asarray(origin), gene_names=list(genes),
                         mask=np.isfinite(np.asarray(arr[0])))
    if (source / STORE_NAME).exists():
        return open_map_store(check_complete_run(source) / STORE_NAME)
    if is_map_store(source) or source.name.endswith(STORE_NAME):
        return open_map_store(source)
    if (source / "maps.ome.zarr").exists():
        raise TrihrgeInputError(
            f"{source} holds materialised maps (maps.ome.zarr) but no map store",
            "open maps.ome.zarr directly, or re-run enhance (it writes the store)")
    if materialised:
        raise TrihrgeInputError(f"the run {source} has no dense maps",
                                "run enhance or predict with --stride-um (e.g. 8) first")
    raise TrihrgeInputError(f"no map store in {source}",
                            f"pass a run folder written with --map-store, or its {STORE_NAME}")


def open_run_maps(source: str | Path) -> FactorMaps:
    """The factorised maps of a run folder (its :data:`STORE_NAME`) or of a store path."""
    return read_run_maps(source, materialised=False)


def default_export_path(source: str | Path, fmt: str) -> Path:
    """Where :func:`export_maps` writes without an explicit output: beside the run folder."""
    source = Path(source)
    run = source.parent if source.name == STORE_NAME else source
    suffix = "_maps.ome.zarr" if fmt == "ome-zarr" else "_maps.spatialdata.zarr"
    return run.with_name(run.name + suffix)


def export_maps(source: str | Path, out: str | Path | None = None, *,
                genes: Sequence[str] | None = None, fmt: str = "ome-zarr",
                dtype: Any = np.float32, overwrite: bool = False,
                window_um: Sequence[float] | None = None, progress: Any = None) -> list[Path]:
    """Materialise the maps of ``genes`` (all by default) from a run folder's map store (or a
    store path) as a multiscale OME-Zarr map (and its spread, ``<name>_std.ome.zarr``) or as a
    SpatialData store holding them as images (micrometre coordinates), in ``dtype``
    (:data:`~napari_trihrge.io.map_store.MATERIALISED_DTYPES`). ``window_um``: (row start,
    row stop, col start, col stop) in micrometres: only the maps inside that rectangle
    (:meth:`~napari_trihrge.io.map_store.FactorMaps.window`), at their place. Everything is
    checked (store, genes, format, dtype, rectangle, an existing output refused without
    ``overwrite``) before any map is computed. Returns the paths written."""
    if fmt not in EXPORT_FORMATS:
        raise TrihrgeInputError(f"unknown map format {fmt!r}",
                                f"use one of: {', '.join(EXPORT_FORMATS)}")
    dtype = check_materialised_dtype(dtype)
    maps = open_run_maps(source)
    names = resolve_genes(maps, genes)
    if window_um is not None:
        if len(window_um) != 4:
            raise TrihrgeInputError(
                f"a rectangle is 4 numbers of micrometres, got {len(window_um)}",
                "give row start, row stop, col start, col stop, e.g. 1000 2000 3000 4000")
        maps = maps.window(window_um[:2], window_um[2:])
    out = Path(out) if out is not None else default_export_path(source, fmt)
    if fmt == "ome-zarr":
        if not out.name.endswith(".ome.zarr"):
            out = out.with_name(out.name + ".ome.zarr")
        return materialise_ome_zarr(maps, out, genes=names, overwrite=overwrite, dtype=dtype,
                                    progress=progress)
    from ..io.spatialdata import require_spatialdata, write_maps_spatialdata

    require_spatialdata()
    refuse_overwrite(out, overwrite)
    return [write_maps_spatialdata(out, maps, names, overwrite=overwrite, dtype=dtype,
                                   progress=progress)]
