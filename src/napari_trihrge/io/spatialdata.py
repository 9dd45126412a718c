"""SpatialData (scverse) stores in and out: needs the ``napari-trihrge[spatialdata]`` extra.

Reading (:func:`read_spatialdata`): a ``.zarr`` store written by ``spatialdata-io``'s Visium /
Visium HD readers, by ``SpatialData.write`` or by :func:`write_spatialdata` becomes a sample of the
data model (``docs/architecture.md``). One table is chosen (``table=``), the shapes it annotates
give the spots (circles: centre and radius; squares such as Visium HD bins: centroid and side), one
coordinate system (``coordinate_system=``) holds the spots and an RGB image (``image_element=``). The
coordinate system's units play the role of "full-resolution pixels": ``obsm['spatial']`` holds
x/y in those units, and ``uns['trihrge']['um_per_px']`` is micrometres per unit, taken from the
store (our own stores record it), else from the spot lattice and the spot size, and checked
against the lattice. The image stays in the store and is opened lazily (``uns['trihrge']
['spatialdata']`` says where).

Writing (:func:`write_spatialdata`): a new self-contained store in micrometres (coordinate system
``global``): the H&E (``he_image``, multiscale), the measured spots (``spots``, circles, table
``spots_table`` with raw counts), the virtual spots (``virtual_spots``, circles, table
``virtual_spots_table`` with predictions and per-gene trust in ``var``) and the dense maps (``enhanced_maps``, multiscale, one channel per
gene). With ``into_input=True`` the results are added to the store the sample was read from
(``trihrge_virtual_spots`` + ``_table``, ``trihrge_enhanced_maps``, transformed into its coordinate system); nothing there is replaced unless
``overwrite=True``.

Pixel convention: SpatialData places image pixel ``(i, j)`` over ``[i, i + 1) x [j, j + 1)`` of its
intrinsic coordinates, so its centre is at ``(i + 0.5, j + 0.5)`` (napari-spatialdata draws it so);
:mod:`napari_trihrge.geometry` puts pixel centres at ``(i, j) * s``. Written images therefore carry
``Scale(s)`` then ``Translation(origin - s / 2)``; when reading, an image whose pixel centres are
within half a pixel of ``(i, j) * s`` is taken as is (spatialdata-io writes ``Scale(s)`` alone).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import geometry
from ..errors import TrihrgeInputError
from ._store_image import image_levels, require_spatialdata

STORE_HINT = ("pass a SpatialData .zarr store with a table annotating spot shapes (circles or "
              "squares) and an RGB H&E image in the same coordinate system")
#: the coordinate system of a new store; its unit is the micrometre
COORDINATE_SYSTEM = "global"
#: element names of a new store
HE_IMAGE, SPOTS, VIRTUAL_SPOTS, MAPS, MAPS_STD = (
    "he_image", "spots", "virtual_spots", "enhanced_maps", "enhanced_maps_std")
#: tables are named after the shapes they annotate, with this suffix (names are unique per store)
TABLE_SUFFIX = "_table"
#: prefix of the elements added to an input store
INPUT_PREFIX = "trihrge_"
_HD_TABLE_RE = re.compile(r"square_(\d{3})um")
#: Relative disagreement between two pixel-size estimates that warns (as geometry does).
PIXEL_SIZE_TOLERANCE = geometry.PIXEL_SIZE_DISAGREEMENT


def table_write_settings():
    """Write a store's tables unsharded, as they are today.

    Said explicitly so that anndata does not warn, once per array, that zarr v3 autosharding will
    become its default.
    """
    import contextlib

    import anndata

    if not hasattr(anndata.settings, "auto_shard_zarr_v3"):  # anndata before the setting
        return contextlib.nullcontext()
    return anndata.settings.override(auto_shard_zarr_v3=False)


def is_spatialdata_store(path: str | os.PathLike) -> bool:
    """Tell whether ``path`` looks like a SpatialData Zarr store. Needs no extra.

    A store is a zarr group with at least one of images/, shapes/, tables/, points/, labels/.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    is_group = any((p / f).exists() for f in (".zgroup", "zarr.json", ".zattrs"))
    return is_group and any((p / d).is_dir() for d in ("tables", "shapes", "images", "points",
                                                      "labels"))


# -------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------
def _role(table: Any) -> str | None:
    return ((table.uns.get("trihrge") or {}) if hasattr(table, "uns") else {}).get("role")


def _choose(what: str, options: list[str], chosen: str | None, flag: str,
            preferred: list[str] | None = None) -> str:
    if chosen is not None:
        if chosen not in options:
            raise TrihrgeInputError(f"no {what} {chosen!r} in the store",
                                    f"available: {options or 'none'} ({flag})")
        return chosen
    pool = preferred if preferred else options
    if len(pool) == 1:
        return pool[0]
    if not pool:
        raise TrihrgeInputError(f"the store has no usable {what}", STORE_HINT)
    raise TrihrgeInputError(f"the store holds several {what}s: {pool}",
                            f"choose one with {flag} (API: {flag.lstrip('-').replace('-', '_')}"
                            "=...)")


def _affine_xy(transform: Any) -> np.ndarray:
    """3x3 affine (x, y, 1) of a spatialdata transformation."""
    return np.asarray(transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")),
                      dtype=np.float64)


def _transforms(element: Any) -> dict[str, Any]:
    from spatialdata.transformations import get_transformation

    return dict(get_transformation(element, get_all=True))


def _scale_of(affine: np.ndarray, what: str) -> tuple[float, np.ndarray]:
    """(scale, translation x/y) of an affine that must be a uniform scale plus translation."""
    a = affine[:2, :2]
    sx, sy = float(a[0, 0]), float(a[1, 1])
    off = max(abs(a[0, 1]), abs(a[1, 0]))
    if sx <= 0 or sy <= 0 or off > 1e-6 * max(abs(sx), abs(sy)) or \
            abs(sx - sy) > 1e-3 * max(sx, sy):
        raise TrihrgeInputError(
            f"{what} is rotated, flipped or scaled differently in x and y "
            f"(affine {np.round(a, 4).tolist()})",
            "use a coordinate system in which the H&E is only scaled (and shifted by less than a "
            "pixel), e.g. the one spatialdata-io names after the dataset")
    return sx, affine[:2, 2].copy()


def _is_rgb(element: Any) -> bool:
    level = image_levels(element)[0]
    return "c" in level.dims and level.sizes["c"] in (3, 4)


def _spot_geometry(gdf: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Return (centres x/y, diameters, kind) of shapes in the shapes' own units.

    Circles give their radius, polygons (Visium HD squares) their centroid and the side of a square
    of the same area.
    """
    geom = gdf.geometry
    kinds = set(geom.geom_type.unique())
    if kinds == {"Point"}:
        if "radius" not in gdf:
            raise TrihrgeInputError("the spot shapes are points without a radius", STORE_HINT)
        xy = np.stack([geom.x.to_numpy(), geom.y.to_numpy()], axis=1)
        return xy, 2.0 * gdf["radius"].to_numpy(np.float64), "circle"
    if kinds <= {"Polygon", "MultiPolygon"}:
        c = geom.centroid
        return (np.stack([c.x.to_numpy(), c.y.to_numpy()], axis=1),
                np.sqrt(geom.area.to_numpy(np.float64)), "square")
    raise TrihrgeInputError(f"spot shapes of type {sorted(kinds)} are not supported", STORE_HINT)


def _lattice_check(um: float, xy_units: np.ndarray, array_index: np.ndarray | None,
                   platform: str | None, bin_um: float | None, what: str) -> float | None:
    """Pixel size measured on the spot lattice; warns when it and ``um`` disagree."""
    measured = None
    if bin_um is not None and array_index is not None:
        measured = geometry.lattice_um_per_px(array_index, xy_units, bin_um)
    elif platform in geometry.PLATFORMS:
        plat = geometry.PLATFORMS[platform]
        if array_index is not None and "array_step_um" in plat:
            res = geometry.fit_array_lattice(array_index, xy_units, tuple(plat["array_step_um"]))
            measured = None if res is None else float(res.um_per_px)
        if measured is None and len(xy_units) >= 3:
            lat = geometry.detect_lattice(np.asarray(xy_units)[:, ::-1], kind=str(plat["lattice"]))
            measured = float(plat["spot_spacing_um"]) / lat.spacing_um
    geometry.warn_if_pixel_sizes_disagree(um, measured, what, label="the scale in use",
                                          unit="um per unit")
    return measured


def _resolve_units(xy: np.ndarray, diameter: float, array_index: np.ndarray | None,
                   platform: str | None, bin_um: float | None, recorded: float | None,
                   um_per_px: float | None, spot_diameter_um: float | None, what: str
                   ) -> tuple[float, str, float, str]:
    """(um per coordinate unit, its source, spot diameter um, platform)."""
    if bin_um is not None:
        platform = "generic"
        diam_um = float(bin_um)
    elif platform is None:
        platform = "visium" if array_index is not None else "generic"
    if bin_um is None:
        plat = geometry.PLATFORMS.get(platform)
        diam_um = float(spot_diameter_um if spot_diameter_um is not None else
                        (plat["spot_diameter_um"] if plat else np.nan))
    if um_per_px is not None:
        um, source = float(um_per_px), "given"
    elif recorded is not None:
        um, source = float(recorded), "store"
    elif bin_um is not None:
        measured = geometry.lattice_um_per_px(array_index, xy, bin_um) if array_index is not None else None
        um, source = (measured, "lattice") if measured is not None else (
            bin_um / diameter, "bin_size")
        if measured is not None and abs(measured - bin_um / diameter) / measured > \
                PIXEL_SIZE_TOLERANCE:
            warnings.warn(f"{what}: the bin squares are {diameter:.2f} units wide but the bin "
                          f"lattice says {bin_um / measured:.2f}", stacklevel=3)
        return geometry.validate_um_per_px(um, what=f"of {what} ({source})"), source, diam_um, \
            platform
    elif platform in geometry.PLATFORMS:
        # the lattice fit first, the spot diameter as a fallback
        ps = geometry.resolve_pixel_size(xy, platform, array_index=array_index,
                                         spot_diameter_px=diameter,
                                         spot_diameter_um=spot_diameter_um, what=what)
        return ps.um_per_px, ps.source, ps.spot_diameter_um, platform
    else:
        raise TrihrgeInputError(
            f"the micrometre size of the coordinate units of {what} is unknown",
            "pass um_per_px=... (--um-per-px; micrometres per coordinate unit) or the platform "
            "(--platform visium)")
    um = geometry.validate_um_per_px(float(um), what=f"of {what} ({source})")
    _lattice_check(um, xy, array_index, platform, None, what)
    return um, source, float(diam_um), platform


def read_spatialdata(path: str | os.PathLike, *, table: str | None = None,
                     image_element: str | None = None, coordinate_system: str | None = None,
                     um_per_px: float | None = None, platform: str | None = None,
                     spot_diameter_um: float | None = None, library_id: str | None = None
                     ) -> Any:
    """Read a SpatialData store into the sample data model (see the module docstring).

    ``table``, ``image_element`` and ``coordinate_system`` pick one when the store holds several;
    ``um_per_px`` (micrometres per coordinate unit) overrides what the store and the lattice say.
    """
    sd = require_spatialdata()
    from anndata import AnnData
    from spatialdata.models import get_table_keys

    from .sample import validate_sample

    path = Path(path)
    if not is_spatialdata_store(path):
        raise TrihrgeInputError(f"{path} is not a SpatialData store", STORE_HINT)
    try:
        sdata = sd.read_zarr(path)
    except Exception as exc:
        raise TrihrgeInputError(f"cannot read the SpatialData store {path}: {exc}",
                                "pass a store written by spatialdata / spatialdata-io") from exc

    def annotates_shapes(name: str) -> bool:
        try:
            region = get_table_keys(sdata.tables[name])[0]
        except Exception:  # noqa: BLE001 - a table without spatial annotation
            return False
        regions = [region] if isinstance(region, str) else list(region)
        return any(r in sdata.shapes for r in regions)

    tables = [t for t in sdata.tables if annotates_shapes(t)]
    measured = [t for t in tables if _role(sdata.tables[t]) in (None, "measured")]
    tname = _choose("table", tables, table, "--table",
                    preferred=[t for t in measured if _role(sdata.tables[t]) == "measured"]
                    or measured)
    tab = sdata.tables[tname]
    region, region_key, instance_key = get_table_keys(tab)
    regions = [r for r in ([region] if isinstance(region, str) else list(region))
               if r in sdata.shapes]
    if len(regions) > 1:
        raise TrihrgeInputError(f"table {tname!r} annotates several shape elements: {regions}",
                                "write one table per shape element")
    shapes_name = regions[0]
    if region_key in tab.obs:
        tab = tab[tab.obs[region_key].astype(str).to_numpy() == shapes_name]
    gdf = sdata.shapes[shapes_name]
    ids = tab.obs[instance_key].to_numpy()
    missing = ~pd.Index(ids).isin(gdf.index)
    if missing.any():
        raise TrihrgeInputError(f"{int(missing.sum())} rows of table {tname!r} have no shape in "
                                f"{shapes_name!r}", "the table and its shapes must match")
    xy_own, diam_own, kind = _spot_geometry(gdf.loc[ids])

    # coordinate system shared by the spots and an RGB image
    shape_cs = _transforms(gdf)
    rgb = [n for n, el in sdata.images.items() if _is_rgb(el)]
    image_cs = {n: _transforms(sdata.images[n]) for n in rgb}
    candidates = [cs for cs in shape_cs if any(cs in t for t in image_cs.values())]
    identity = [cs for cs in candidates if np.allclose(_affine_xy(shape_cs[cs]), np.eye(3))]
    if len(identity) > 1:  # spatialdata-io's image-pixel systems, identical when scalef is 1
        identity = [cs for cs in identity if "_downscaled_" not in cs] or identity
    cs = _choose("coordinate system", candidates, coordinate_system, "--coordinate-system",
                 preferred=identity)
    aff = _affine_xy(shape_cs[cs])
    xy = (np.column_stack([xy_own, np.ones(len(xy_own))]) @ aff.T)[:, :2]
    diam = diam_own * float(np.sqrt(abs(np.linalg.det(aff[:2, :2]))))
    diameter = float(np.median(diam))

    # the finest RGB image in that coordinate system
    in_cs = [n for n in rgb if cs in image_cs[n]]
    scales = {n: _scale_of(_affine_xy(image_cs[n][cs]), f"image {n!r}")[0] for n in in_cs}
    iname = _choose("image", in_cs, image_element, "--image-element",
                    preferred=[min(in_cs, key=lambda n: scales[n])]
                    if in_cs and image_element is None else None)
    scale, shift = _scale_of(_affine_xy(image_cs[iname][cs]), f"image {iname!r}")
    centre0 = shift + 0.5 * scale  # where the centre of pixel (0, 0) lies
    if np.any(np.abs(centre0) > 0.5 * scale + 1e-9):
        raise TrihrgeInputError(
            f"image {iname!r} is shifted by {np.round(centre0, 2).tolist()} units in {cs!r} "
            "(more than half a pixel)",
            "use an image placed at the origin of the coordinate system, or choose another "
            "one with --image-element")

    obs = tab.obs.copy()
    array_index = (obs[["array_row", "array_col"]].to_numpy(np.float64)
                   if {"array_row", "array_col"} <= set(obs.columns) else None)
    bin_um = None
    m = _HD_TABLE_RE.search(f"{tname} {shapes_name}")
    if kind == "square" and m:
        bin_um = float(m.group(1))
    info_in = dict(tab.uns.get("trihrge") or {})
    recorded = (info_in.get("um_per_unit") or {}).get(cs) if isinstance(
        info_in.get("um_per_unit"), dict) else None
    what = f"{path.name} ({tname!r} in {cs!r})"
    um, source, diam_um, plat = _resolve_units(
        xy, diameter, array_index, platform if platform is not None else info_in.get("platform"),
        bin_um, recorded, um_per_px, spot_diameter_um, what)
    if recorded is not None and um_per_px is None:
        _lattice_check(um, xy, array_index, plat, bin_um, what)

    keep = np.ones(len(obs), dtype=bool)
    if "in_tissue" in obs:
        keep = obs["in_tissue"].astype(int).to_numpy() == 1
    X = tab.X
    adata = AnnData(X=X, obs=obs, var=tab.var.copy())
    adata = adata[keep].copy() if not keep.all() else adata
    adata.obsm["spatial"] = np.ascontiguousarray(xy[keep], dtype=np.float64)
    adata.var_names_make_unique()
    sample = str(info_in.get("sample") or path.name.removesuffix(".zarr"))
    lib = str(library_id) if library_id is not None else sample
    adata.uns["spatial"] = {lib: {"images": {}, "scalefactors": {
        "spot_diameter_fullres": diameter}}}
    info: dict[str, Any] = {
        "library_id": lib, "sample": sample, "platform": plat, "um_per_px": um,
        "um_per_px_source": source, "spot_diameter_um": diam_um, "source": str(path.resolve()),
        "spatialdata": {"store": str(path.resolve()), "table": tname, "shapes": shapes_name,
                        "image": iname, "coordinate_system": cs, "image_scale": scale},
    }
    if bin_um is not None:
        info.update(assay="visium_hd", bin_size_um=bin_um)
    adata.uns["trihrge"] = info
    return validate_sample(adata)


def read_store_maps(adata: Any, name: str | None = None) -> dict[str, Any] | None:
    """Return the enhanced maps stored next to the sample's spots, None when there are none.

    ``enhanced_maps`` in a new store, ``trihrge_enhanced_maps`` in an input store, in micrometres:
    ``values`` (dask, genes x rows x cols), ``stride_um``, ``origin_rc_um``, ``gene_names`` and
    ``std`` (or None).
    """
    sd = require_spatialdata()
    info = adata.uns["trihrge"]
    ref = info["spatialdata"]
    um_per_unit = float(info["um_per_px"])
    sdata = sd.read_zarr(ref["store"], selection=("images",))
    names = [name] if name else [n for n in (MAPS, INPUT_PREFIX + MAPS) if n in sdata.images]
    if not names or names[0] not in sdata.images:
        return None
    out: dict[str, Any] = {}
    for key, el_name in (("values", names[0]), ("std", names[0].replace(MAPS, MAPS_STD))):
        if el_name not in sdata.images:
            out[key] = None
            continue
        element = sdata.images[el_name]
        aff = _affine_xy(_transforms(element)[ref["coordinate_system"]])
        scale, shift = _scale_of(aff, f"map {el_name!r}")
        level = image_levels(element)[0]
        out[key] = level.data
        if key == "values":
            centre0 = np.asarray(shift[::-1], dtype=np.float64) + 0.5 * scale
            out.update(stride_um=scale * um_per_unit, origin_rc_um=centre0 * um_per_unit,
                       gene_names=[str(c) for c in level.coords["c"].values])
    return out


# -------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------
def _circles(rc_um: np.ndarray, diameter_um: float, transformations: dict) -> Any:
    from spatialdata.models import ShapesModel

    rc_um = np.asarray(rc_um, dtype=np.float64)
    return ShapesModel.parse(np.ascontiguousarray(rc_um[:, ::-1]), geometry=0,
                             radius=np.full(len(rc_um), float(diameter_um) / 2.0),
                             index=pd.Index(np.arange(len(rc_um)), name="spot_id"),
                             transformations=transformations)


def _table(adata: Any, region: str, role: str, extra_uns: dict) -> Any:
    from anndata import AnnData
    from spatialdata.models import TableModel

    from .outputs import _h5ad_safe

    t = AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(),
                layers={k: v for k, v in adata.layers.items()})
    t.obs_names = adata.obs_names
    t.obs["region"] = pd.Categorical([region] * t.n_obs)
    t.obs["spot_id"] = np.arange(t.n_obs)
    t.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    info = dict(adata.uns.get("trihrge", {}) or {})
    info.pop("spatialdata", None)
    t.uns["trihrge"] = _h5ad_safe({**info, **extra_uns, "role": role})
    return TableModel.parse(t, region=region, region_key="region", instance_key="spot_id")


def _multiscale(data: Any, dims: tuple[str, ...], transformations: dict,
                c_coords: list[str] | None = None) -> Any:
    from spatialdata.models import Image2DModel

    from .writers import pyramid_factors

    factors = pyramid_factors(data.shape[1], data.shape[2])
    return Image2DModel.parse(data, dims=dims, scale_factors=factors or None,
                              transformations=transformations, c_coords=c_coords)


def _scale_translate(scale: float, origin_rc: Any, cs: str) -> dict:
    """Return the transformation of an image whose pixel ``(i, j)`` is centred at a lattice point.

    The centre is ``origin_rc + (i, j) * scale`` (see the pixel convention in the module
    docstring).
    """
    from spatialdata.transformations import Scale, Sequence, Translation

    corner = [float(v) - scale / 2.0 for v in np.asarray(origin_rc, dtype=np.float64).reshape(2)]
    return {cs: Sequence([Scale([scale, scale], axes=("y", "x")),
                          Translation(corner, axes=("y", "x"))])}


def _map_array(values: Any) -> Any:
    import dask.array as da

    if isinstance(values, da.Array):
        return values.astype(np.float32)
    if hasattr(values, "to_dask"):  # maps computed from a factorised store, gene by gene
        return values.to_dask()
    arr = getattr(values, "array", values)  # a ZarrMapWriter holds its zarr array
    if hasattr(arr, "chunks") and not isinstance(arr, np.ndarray):
        return da.from_zarr(arr).astype(np.float32)
    return da.from_array(np.asarray(arr, dtype=np.float32),
                         chunks=(min(32, arr.shape[0]), *arr.shape[1:]))


def _result_elements(result: Any, scale_to_cs: float, cs: str, prefix: str) -> tuple[dict, dict]:
    """Return (shapes + images, tables) of an enhance result in a coordinate system.

    The coordinate system's unit is ``1 / scale_to_cs`` micrometres, i.e. cs = um * scale_to_cs.
    """
    from spatialdata.transformations import Scale

    to_cs = {cs: Scale([scale_to_cs, scale_to_cs], axes=("x", "y"))}
    virtual = result.virtual
    um_per_px = float(virtual.uns["trihrge"]["um_per_px"])
    diameter_um = float(virtual.uns["trihrge"].get("spot_diameter_um", 55.0))
    rc_um = geometry.xy_px_to_rc_um(virtual.obsm["spatial"], um_per_px)
    elements: dict[str, Any] = {
        prefix + VIRTUAL_SPOTS: _circles(rc_um, diameter_um, to_cs)}
    tables = {prefix + VIRTUAL_SPOTS + TABLE_SUFFIX: _table(virtual, prefix + VIRTUAL_SPOTS,
                                                           "virtual", {})}
    maps = result.maps
    if maps is not None:
        tr = _scale_translate(maps.stride_um * scale_to_cs,
                              np.asarray(maps.origin_rc_um) * scale_to_cs, cs)
        genes = [str(g) for g in maps.gene_names]
        elements[prefix + MAPS] = _multiscale(_map_array(maps.values), ("c", "y", "x"), tr, genes)
        if maps.std is not None:
            elements[prefix + MAPS_STD] = _multiscale(_map_array(maps.std), ("c", "y", "x"), tr,
                                                      genes)
    return elements, tables


def write_spatialdata(path: str | os.PathLike, adata: Any, result: Any, *,
                      overwrite: bool = False) -> Path:
    """Write the sample and an enhance result into a new, self-contained SpatialData store.

    The store at ``path`` is in micrometres (see the module docstring); it is written to a temporary
    store beside ``path`` and moved into place; ``path`` is not replaced unless ``overwrite``.
    """
    require_spatialdata()
    from spatialdata import SpatialData
    from spatialdata.transformations import Identity

    from .._atomic import atomic_path, refuse_overwrite
    from .sample import get_image

    path = Path(path)
    refuse_overwrite(path, overwrite)
    info = adata.uns["trihrge"]
    um_per_px = float(info["um_per_px"])
    cs = COORDINATE_SYSTEM
    identity = {cs: Identity()}
    image = get_image(adata)
    he = image.array
    import dask.array as da

    he = he if isinstance(he, da.Array) else da.from_array(np.asarray(he), chunks=(2048, 2048, 3))
    images = {HE_IMAGE: _multiscale(da.moveaxis(he, -1, 0), ("c", "y", "x"),
                                    _scale_translate(image.um_per_px, (0, 0), cs),
                                    ["r", "g", "b"])}
    rc_um = geometry.xy_px_to_rc_um(adata.obsm["spatial"], um_per_px)
    shapes = {SPOTS: _circles(rc_um, float(info["spot_diameter_um"]), identity)}
    spots = adata.copy()
    spots.uns = {"trihrge": dict(info)}
    units = {"um_per_unit": {cs: 1.0}, "coordinate_system": cs}
    tables = {SPOTS + TABLE_SUFFIX: _table(spots, SPOTS, "measured", units)}
    elements, result_tables = _result_elements(result, 1.0, cs, "")
    for name, el in elements.items():
        (images if name in (MAPS, MAPS_STD) else shapes)[name] = el
    tables.update({k: v for k, v in result_tables.items()})
    tables[VIRTUAL_SPOTS + TABLE_SUFFIX].uns["trihrge"].update(units)
    sdata = SpatialData(images=images, shapes=shapes, tables=tables)
    with atomic_path(path, overwrite) as tmp, table_write_settings():
        sdata.write(tmp)
    return path


def write_maps_spatialdata(path: str | os.PathLike, maps: Any, genes: list[str], *,
                           overwrite: bool = False, dtype: Any = np.float32,
                           progress: Any = None) -> Path:
    """Write the maps of ``genes`` (and their spread) of ``maps`` to a new SpatialData store.

    ``maps`` are factorised maps (:class:`~napari_trihrge.io.map_store.FactorMaps`), written
    as the images ``trihrge_enhanced_maps`` (and ``..._std``) of the store, in micrometres;
    each gene is computed once (into a temporary OME-Zarr) and read back lazily. Refuses to
    replace ``path`` unless ``overwrite``.
    """
    import tempfile

    from spatialdata import SpatialData

    from .._atomic import atomic_path, refuse_overwrite
    from .map_store import materialise_ome_zarr
    from .writers import read_map

    path = Path(path)
    refuse_overwrite(path, overwrite)
    tr = _scale_translate(maps.stride_um, maps.origin_rc_um, COORDINATE_SYSTEM)
    with tempfile.TemporaryDirectory(prefix=".trihrge_maps_", dir=path.parent) as tmp:
        written = materialise_ome_zarr(maps, Path(tmp) / "maps.ome.zarr", genes=genes,
                                       dtype=dtype, progress=progress)
        images = {MAPS: _multiscale(read_map(written[0])[0], ("c", "y", "x"), tr, genes)}
        if len(written) > 1:
            images[MAPS_STD] = _multiscale(read_map(written[1])[0], ("c", "y", "x"), tr, genes)
        with atomic_path(path, overwrite) as out, table_write_settings():
            SpatialData(images=images).write(out)
    return path


#: beside an input store while results are swapped in: the new elements, the old ones set aside,
#: the journal that lets the next run roll an interrupted swap back
_PARTIAL, _ASIDE, _JOURNAL = "trihrge-partial", "trihrge-old", "trihrge-journal.json"
_KINDS = ("images", "labels", "points", "shapes", "tables")


def _sibling(store: Path, tag: str) -> Path:
    import uuid

    return store.parent / f".{store.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _root_meta(store: Path) -> dict | None:
    """Return the root ``zarr.json`` of a zarr v3 store with inline consolidated metadata.

    Returns None for any other store.
    """
    import json

    try:
        meta = json.loads((store / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cons = meta.get("consolidated_metadata") if isinstance(meta, dict) else None
    return meta if isinstance(cons, dict) and isinstance(cons.get("metadata"), dict) else None


def _write_root_meta(store: Path, meta: dict) -> None:
    import json

    from .._atomic import atomic_path

    with atomic_path(store / "zarr.json") as tmp:  # renamed into place: never half written
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _element_keys(metadata: dict, path: str) -> dict:
    return {k: v for k, v in metadata.items() if k == path or k.startswith(path + "/")}


def check_store_writable(store: str | os.PathLike) -> None:
    """Refuse a store this process cannot write results into (``--into-input``), before any work.

    Checked are the store, its element groups and the folder beside it (where results are
    staged).
    """
    store = Path(store)
    folders = [store, store.parent, *(store / k for k in _KINDS if (store / k).is_dir())]
    blocked = [str(f) for f in folders if not os.access(f, os.W_OK | os.X_OK)]
    if blocked:
        raise TrihrgeInputError(
            f"--into-input cannot write into the store {store}: no write permission in "
            f"{', '.join(blocked)}", "make the store writable, or write a new store with "
            "--format spatialdata (without --into-input)")


def repair_store(store: str | os.PathLike) -> bool:
    """Undo a results swap into ``store`` that was interrupted (killed).

    Elements set aside go back, the root metadata is restored from the journal, staged and
    leftover files beside the store are removed. Returns whether anything was repaired.
    """
    import json
    import shutil

    from .._atomic import replace_folder

    store = Path(store)
    repaired = False
    for journal_path in sorted(store.parent.glob(f".{store.name}.{_JOURNAL}")):
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        aside, old = Path(journal["aside"]), set(journal["set_aside"])
        now = (_root_meta(store) or {}).get("consolidated_metadata", {}).get("metadata", {})
        committed = all(_listed_as(now, journal["new_meta"], rel) for rel in journal["moved_in"])
        if not committed:
            for rel in journal["moved_in"]:  # new elements that reached the store: out again
                if rel in old and not (aside / rel).exists():
                    continue  # the old element was never set aside: it is still in place
                shutil.rmtree(store / rel, ignore_errors=True)
            for rel in old:  # old elements: back in place
                if (aside / rel).exists():
                    replace_folder(aside / rel, store / rel)
            _write_root_meta(store, journal["root_meta"])
        journal_path.unlink()
        repaired = True
    for tag in (_PARTIAL, _ASIDE):
        for leftover in store.parent.glob(f".{store.name}.{tag}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            repaired = True
    meta = _root_meta(store)
    if meta is not None:  # element folders a killed write of an older version left unlisted
        listed = meta["consolidated_metadata"]["metadata"]
        for kind in _KINDS:
            for folder in (store / kind).glob(f"{INPUT_PREFIX}*"):
                if folder.is_dir() and f"{kind}/{folder.name}" not in listed:
                    shutil.rmtree(folder, ignore_errors=True)
                    repaired = True
    return repaired


def write_into_input(adata: Any, result: Any, *, overwrite: bool = False) -> Path:
    """Add an enhance result to the SpatialData store ``adata`` was read from.

    It is added as ``trihrge_virtual_spots`` (shapes + ``trihrge_virtual_spots_table``) and
    ``trihrge_enhanced_maps`` (image), in the store's coordinate system. Existing elements are not
    replaced unless ``overwrite``.

    The store is never half written: the elements are written into a store beside it, moved in
    under their names while unlisted, and appear when the root metadata (listing the store's
    elements) is replaced in one rename; a journal beside the store lets the next run roll an
    interrupted swap back (:func:`repair_store`). A killed write leaves the store readable
    (results being replaced are hidden until the next run restores or replaces them).
    """
    import json
    import shutil

    from .._atomic import atomic_path, replace_folder

    sd = require_spatialdata()
    info = adata.uns.get("trihrge", {}) or {}
    ref = info.get("spatialdata")
    if not ref:
        raise TrihrgeInputError("the sample was not read from a SpatialData store",
                                "--into-input works only when PATH is a SpatialData .zarr "
                                "store; use --format spatialdata for a new store")
    store = Path(ref["store"])
    check_store_writable(store)
    if repair_store(store):
        warnings.warn(f"an interrupted earlier write into {store} was rolled back",
                      UserWarning, stacklevel=2)
    um_per_unit = float(info["um_per_px"])
    elements, tables = _result_elements(result, 1.0 / um_per_unit, ref["coordinate_system"],
                                        INPUT_PREFIX)
    sdata = sd.read_zarr(store)
    existing = set(sdata.images) | set(sdata.shapes) | set(sdata.tables)
    clash = sorted((set(elements) | set(tables)) & existing)
    if clash and not overwrite:
        raise TrihrgeInputError(f"the input store {store.name} already holds {clash}",
                                "pass --overwrite to replace them")
    root = _root_meta(store)
    if root is None:  # not a zarr v3 store with consolidated metadata: element by element
        for name in clash:  # the in-memory element is backed by these files: drop it first
            del sdata[name]
            sdata.delete_element_from_disk(name)
        with table_write_settings():
            for name, el in {**elements, **tables}.items():
                sdata[name] = el
                sdata.write_element(name)
        return store
    kind_of = {name: ("images" if name.endswith((MAPS, MAPS_STD)) else "shapes")
               for name in elements}
    kind_of.update({name: "tables" for name in tables})
    kind_of.update({name: k for k in _KINDS for name in getattr(sdata, k, {}) if name in clash})
    staged = _sibling(store, _PARTIAL)
    try:
        with table_write_settings():  # 1. the new elements, whole, beside the store
            sd.SpatialData(images={n: e for n, e in elements.items() if kind_of[n] == "images"},
                           shapes={n: e for n, e in elements.items() if kind_of[n] == "shapes"},
                           tables=tables).write(staged)
        new_meta = _root_meta(staged)["consolidated_metadata"]["metadata"]
        aside = _sibling(store, _ASIDE)
        journal_path = store.parent / f".{store.name}.{_JOURNAL}"
        moved = [f"{kind_of[n]}/{n}" for n in (*elements, *tables)]
        old_rels = [f"{kind_of[n]}/{n}" for n in clash]
        with atomic_path(journal_path) as tmp:  # 2. how to roll back
            tmp.write_text(json.dumps({
                "aside": str(aside), "moved_in": moved, "set_aside": old_rels,
                "root_meta": root, "new_meta": {rel: new_meta.get(rel) for rel in moved}}))
        listed = dict(root["consolidated_metadata"]["metadata"])
        for rel in old_rels:  # 3. the old elements unlisted, then set aside
            for key in _element_keys(listed, rel):
                listed.pop(key)
        if old_rels:
            _write_root_meta(store, _with_listing(root, listed))
        for rel in old_rels:
            (aside / rel).parent.mkdir(parents=True, exist_ok=True)
            replace_folder(store / rel, aside / rel)
        for rel in moved:  # 4. the new elements moved in, still unlisted
            kind = rel.split("/")[0]
            if not (store / kind).is_dir():
                (store / kind).mkdir()
                shutil.copy2(staged / kind / "zarr.json", store / kind / "zarr.json")
            listed.setdefault(kind, new_meta.get(kind, {"zarr_format": 3, "node_type": "group",
                                                        "attributes": {}}))
            replace_folder(staged / rel, store / rel)
            listed.update(_element_keys(new_meta, rel))
        _write_root_meta(store, _with_listing(root, listed))  # 5. they appear, in one rename
        journal_path.unlink()
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return store


def _with_listing(root: dict, listed: dict) -> dict:
    """Return ``root`` listing ``listed``, ordered as zarr writes it.

    The order is by depth, then path: zarr groups the children of one parent only when they
    are adjacent.
    """
    ordered = dict(sorted(listed.items(), key=lambda kv: (kv[0].count("/"), kv[0])))
    return {**root, "consolidated_metadata": {**root["consolidated_metadata"],
                                              "metadata": ordered}}


def _listed_as(listed: dict, new_meta: dict, rel: str) -> bool:
    """Whether the root listing holds ``rel`` with the metadata the swap wrote for it."""
    return rel in listed and listed[rel] == new_meta.get(rel)
