"""Generic spot tables (counts + positions + image), including the legacy ST / her2st layout."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import TrihrgeInputError
from ..geometry import resolve_pixel_size
from ._common import array_index_of, match_ids, read_table

#: Pixel x/y column pairs recognised in a positions table, in order of preference.
XY_COLUMNS = [("pixel_x", "pixel_y"), ("pxl_col_in_fullres", "pxl_row_in_fullres"),
              ("x_px", "y_px"), ("imagecol", "imagerow"), ("x", "y")]
ID_COLUMNS = ("barcode", "barcodes", "spot", "spot_id", "spots", "id")
#: Longest side of the preview stored as the 'hires' image of table-based samples.
HIRES_MAX_PX = 2000


def _read_counts(counts: Any) -> Any:
    """Read counts as AnnData (float32 CSR).

    ``counts`` is a path to tsv/csv[.gz] or .h5ad, a DataFrame or an AnnData.
    """
    import anndata as ad

    if isinstance(counts, ad.AnnData):
        return counts.copy()
    if isinstance(counts, pd.DataFrame):
        df = counts
        what = "the counts table"
    else:
        path = Path(counts)
        if path.name.lower().endswith(".h5ad"):
            if not path.is_file():
                raise TrihrgeInputError(f"counts file not found: {path}", "check the path")
            try:
                return ad.read_h5ad(path)
            except Exception as exc:
                raise TrihrgeInputError(f"cannot read {path.name}: {exc}",
                                        "pass a valid .h5ad file") from exc
        df = read_table(path, index_col=0, what="counts table")
        what = path.name
    bad = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise TrihrgeInputError(f"{what} has non-numeric values (column {bad[0]!r})",
                                "pass spots x genes raw counts with the spot id as first column")
    if df.isna().to_numpy().any():
        n_nan = int(df.isna().to_numpy().sum())
        raise TrihrgeInputError(f"{what} has {n_nan} missing (NaN) count(s)",
                                "pass raw counts with every value present (0 for no reads)")
    X = sp.csr_matrix(df.to_numpy(dtype=np.float32))
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=df.index.astype(str)),
                       var=pd.DataFrame(index=df.columns.astype(str)))
    if not adata.obs_names.is_unique:
        raise TrihrgeInputError(f"{what} lists some spot ids twice",
                                "each row must be one spot with a unique id")
    adata.var_names_make_unique()
    return adata


def _read_positions(positions: Any) -> tuple[pd.DataFrame, str]:
    """Positions -> DataFrame indexed by spot id with float columns x_px, y_px (+ array x/y)."""
    if isinstance(positions, pd.DataFrame):
        df, what = positions.copy(), "the positions table"
    else:
        path = Path(positions)
        if path.name.startswith("tissue_positions"):
            from .visium import read_positions

            pos = read_positions(path)
            pos = pos[pos["in_tissue"].astype(int) == 1]
            return pd.DataFrame({"x_px": pos["pxl_col_in_fullres"].astype(float),
                                 "y_px": pos["pxl_row_in_fullres"].astype(float),
                                 "array_row": pos["array_row"], "array_col": pos["array_col"]},
                                index=pos.index), path.name
        df, what = read_table(path, what="positions table"), path.name
    cols = {c.lower(): c for c in map(str, df.columns)}
    pair = next(((cols[a], cols[b]) for a, b in XY_COLUMNS if a in cols and b in cols), None)
    if pair is None:
        raise TrihrgeInputError(
            f"{what} has no pixel coordinate columns (found {list(df.columns)[:8]})",
            "name them pixel_x/pixel_y (full-resolution pixels), or pxl_col_in_fullres/"
            "pxl_row_in_fullres")
    her2st = {"x", "y", "pixel_x", "pixel_y"} <= set(cols)
    if her2st:  # ST selection file: spot id '<x>x<y>' from the array coordinates
        ids = (df[cols["x"]].round().astype(int).astype(str) + "x"
               + df[cols["y"]].round().astype(int).astype(str))
    else:
        id_col = next((cols[c] for c in ID_COLUMNS if c in cols), None)
        if id_col is None and not pd.api.types.is_numeric_dtype(df.iloc[:, 0]):
            id_col = df.columns[0]
        if id_col is not None:
            ids = df[id_col].astype(str)
        elif not isinstance(df.index, pd.RangeIndex):
            ids = pd.Series(df.index.astype(str), index=df.index)
        else:
            raise TrihrgeInputError(f"{what} has no spot id column",
                                    "add a 'barcode' (or 'spot') column matching the counts")
    out = pd.DataFrame({"x_px": pd.to_numeric(df[pair[0]], errors="coerce").to_numpy(float),
                        "y_px": pd.to_numeric(df[pair[1]], errors="coerce").to_numpy(float)},
                       index=pd.Index(ids.to_numpy(), dtype=str))
    if her2st:
        out["array_x"] = df[cols["x"]].to_numpy()
        out["array_y"] = df[cols["y"]].to_numpy()
    for flag in ("selected", "in_tissue"):
        if flag in cols:
            out["_keep"] = pd.to_numeric(df[cols[flag]], errors="coerce").fillna(0).to_numpy() == 1
            break
    if not out.index.is_unique:
        raise TrihrgeInputError(f"{what} lists some spot ids twice", "keep one row per spot")
    if out[["x_px", "y_px"]].isna().to_numpy().any():
        raise TrihrgeInputError(f"{what} has missing or non-numeric pixel coordinates",
                                "every spot needs numeric x/y full-resolution pixel coordinates")
    return out, what


def read_spot_table(counts: Any, positions: Any = None, image: str | os.PathLike | None = None,
                    *, spot_diameter_um: float | None = None,
                    spot_diameter_px: float | None = None, um_per_px: float | None = None,
                    platform: str = "st", library_id: str | None = None,
                    sample: str | None = None, load_images: bool = True) -> Any:
    """Read counts, spot positions and the H&E into a sample.

    Counts are spots x genes (tsv/csv[.gz], .h5ad, DataFrame or AnnData), positions a table with x/y
    full-resolution pixel columns (also the her2st ``<id>_selection.tsv`` layout) and ``image`` the
    full-resolution H&E.

    Pixel size (:func:`napari_trihrge.geometry.resolve_pixel_size`), in order: ``um_per_px``;
    the spot lattice fitted on the array indices (her2st ``x``/``y``, Visium
    ``array_row``/``array_col``); ``spot_diameter_px`` with the spot diameter in um
    (``spot_diameter_um`` or the platform's); the measured spot spacing against the platform's
    known spacing. ``uns['trihrge']['um_per_px_source']`` records which one was used. With
    ``load_images``, a preview of at most 2000 px per side is stored as the 'hires' image.
    """
    from .image import image_size_px, read_preview
    from .sample import validate_sample

    adata = _read_counts(counts)
    counts_what = Path(counts).name if isinstance(counts, (str, os.PathLike)) else "the counts"
    if positions is None:
        if "spatial" not in adata.obsm:
            raise TrihrgeInputError(
                "no spot positions: pass positions=<table with x/y pixel columns>",
                "for example the her2st <id>_selection.tsv, or a csv with barcode, pixel_x, "
                "pixel_y in full-resolution pixels")
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    else:
        pos, pos_what = _read_positions(positions)
        try:
            match_ids(adata.obs_names, pos.index, counts_what, pos_what,
                      "the counts and positions must describe the same spots (rows of the counts "
                      "are spots, with ids like the positions' ids)")
        except TrihrgeInputError:
            # genes x spots? transpose when the columns are the spot ids
            if adata.var_names.isin(pos.index).sum() >= 0.5 * adata.n_vars:
                adata = adata.T.copy()
                adata.X = sp.csr_matrix(adata.X)
            else:
                raise
        if "_keep" in pos:
            listed = adata.obs_names.isin(pos.index)
            pos = pos[pos["_keep"]]
            n_unselected = int(listed.sum() - adata.obs_names.isin(pos.index).sum())
            if n_unselected:
                warnings.warn(f"{n_unselected} spot(s) of {counts_what} are not selected (not "
                              f"under tissue) in {pos_what} and are left out", stacklevel=2)
        keep = adata.obs_names[adata.obs_names.isin(pos.index)]
        if len(keep) == 0:
            raise TrihrgeInputError(f"none of the spots in {counts_what} is selected (under "
                                    f"tissue) in {pos_what}", "check the 'selected' column")
        n_dropped = adata.n_obs - len(keep)
        if n_dropped:
            adata = adata[keep].copy()
        pos = pos.loc[adata.obs_names]
        xy = pos[["x_px", "y_px"]].to_numpy(np.float64)
        for col in ("array_x", "array_y", "array_row", "array_col"):
            if col in pos:
                adata.obs[col] = pos[col].to_numpy()
    adata.obsm["spatial"] = xy
    name = sample or (Path(counts).name.split(".")[0]
                      if isinstance(counts, (str, os.PathLike)) else "sample")
    pixel_size = resolve_pixel_size(
        xy, platform, array_index=array_index_of(adata.obs, platform), um_per_px=um_per_px,
        spot_diameter_px=spot_diameter_px, spot_diameter_um=spot_diameter_um,
        what=f"sample {name}")
    um, diam_um = pixel_size.um_per_px, pixel_size.spot_diameter_um
    lib = str(library_id) if library_id is not None else name
    scalefactors: dict[str, float] = {"spot_diameter_fullres": diam_um / um}
    images: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {
        "library_id": lib, "sample": name, "platform": platform, **pixel_size.record(),
        "source": str(Path(counts).resolve()) if isinstance(counts, (str, os.PathLike))
        else "in-memory counts",
    }
    if image is not None:
        # a preview only (a JPEG at a reduced decoding scale): the full image stays on disk
        if load_images:
            images["hires"], scalefactors["tissue_hires_scalef"] = read_preview(
                image, HIRES_MAX_PX)
        else:
            image_size_px(image)  # unreadable or missing: fails here, before any work
        info["fullres_image_path"] = str(Path(image).resolve())
    adata.uns["spatial"] = {lib: {"images": images, "scalefactors": scalefactors}}
    adata.uns["trihrge"] = info
    return validate_sample(adata)


def find_her2st_files(section_dir: str | os.PathLike, need_image: bool = True
                      ) -> dict[str, Path | None]:
    """Return ``{'id', 'counts', 'positions', 'image'}`` for a her2st-like section folder.

    ``image`` is None when absent and not ``need_image``.
    """
    d = Path(section_dir)
    hint = ("a her2st section folder holds <id>.tsv.gz (counts), <id>_selection.tsv "
            "(positions) and <id>_HE.jpg (full-resolution H&E)")
    if not d.is_dir():
        raise TrihrgeInputError(f"section folder not found: {d}", hint)
    sels = sorted(d.glob("*_selection.tsv"))
    if len(sels) != 1:
        raise TrihrgeInputError(
            f"expected one <id>_selection.tsv in {d}, found {len(sels)}", hint)
    sid = sels[0].name[: -len("_selection.tsv")]
    counts = next((d / f"{sid}{ext}" for ext in (".tsv.gz", ".tsv", ".csv.gz", ".csv")
                   if (d / f"{sid}{ext}").is_file()), None)
    if counts is None:
        raise TrihrgeInputError(f"counts file {sid}.tsv.gz not found in {d}", hint)
    image = next((p for pat in (f"{sid}_HE.*", f"{sid}*.jpg", f"{sid}*.tif*")
                  for p in sorted(d.glob(pat))), None)
    if image is None and need_image:
        raise TrihrgeInputError(f"H&E image {sid}_HE.jpg not found in {d}",
                                hint + "; or pass the image with --image")
    return {"id": sid, "counts": counts, "positions": sels[0], "image": image}


def is_her2st_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a her2st-style section folder (one ``*_selection.tsv``)."""
    p = Path(path)
    return p.is_dir() and len(list(p.glob("*_selection.tsv"))) == 1


def read_her2st(section_dir: str | os.PathLike, **kwargs: Any) -> Any:
    """Read a her2st-like legacy ST section folder.

    The folder holds ``<id>.tsv.gz``, ``<id>_selection.tsv`` and ``<id>_HE.jpg``; keyword arguments
    go to :func:`read_spot_table`.
    """
    given = kwargs.get("image") or kwargs.get("fullres_image")
    f = find_her2st_files(section_dir, need_image=given is None)
    kwargs.setdefault("platform", "st")
    kwargs.setdefault("library_id", f["id"])
    kwargs.setdefault("sample", f["id"])
    image = kwargs.pop("image", None) or kwargs.pop("fullres_image", None) or f["image"]
    positions = kwargs.pop("positions", None) or f["positions"]
    return read_spot_table(f["counts"], positions, image, **kwargs)
