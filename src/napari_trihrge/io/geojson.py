"""QuPath GeoJSON in and out: annotations as regions, detections and cells as labels.

QuPath (File > Export objects as GeoJSON; drag a ``.geojson`` onto QuPath to import) writes a
FeatureCollection (or a plain list) of Features whose coordinates are **full-resolution pixels,
x/y, origin at the top-left corner of the image**; ``properties.objectType`` is ``annotation``,
``detection`` or ``cell``, ``properties.classification`` ``{name, color}``, a cell may carry its
nucleus as ``nucleusGeometry`` and numbers as ``measurements``.

QuPath's pixel ``(row i, col j)`` covers ``[j, j + 1) x [i, i + 1)``; the project's pixel index is
the pixel's centre (:mod:`napari_trihrge.geometry`), so coordinates are shifted by
:data:`QUPATH_PIXEL_CENTRE_PX` on the way in and out and otherwise converted only with
``geometry.xy_px_to_rc_um`` / ``rc_um_to_xy_px``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import geometry
from ..errors import TrihrgeInputError

#: QuPath's coordinate of the centre of pixel 0 (its pixels span [k, k + 1))
QUPATH_PIXEL_CENTRE_PX = 0.5
OBJECT_TYPES = ("annotation", "detection", "cell")
#: above this share of vertices outside the image, a GeoJSON is taken to be in another
#: coordinate system (an error); any share above 0 gives a warning
MAX_OUTSIDE_SHARE = 0.5
HINT_EXPORT = ("export the objects from QuPath with File > Export objects as GeoJSON, on the same "
               "full-resolution image the sample uses (pixel coordinates, not micrometres)")


@dataclass
class QuPathObject:
    """One QuPath object with its outline in full-resolution px.

    ``parts`` of the outline are x/y in full-resolution px (the project's pixel-centre
    convention), each part ``[exterior, hole, ...]``; ``nucleus`` the same for a cell's
    nucleus, or None.
    """

    object_type: str
    name: str
    parts: list[list[np.ndarray]]
    nucleus: list[list[np.ndarray]] | None = None
    id: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)


@dataclass
class GeoRegion:
    """A region (QuPath annotations of one class) in row/col micrometres.

    ``parts``: each ``[exterior, hole, ...]`` as (k, 2) arrays. ``regions.points_in_regions``
    and ``regions.region_statistics`` accept it where they accept a polygon.
    """

    name: str
    parts: list[list[np.ndarray]]

    def contains_rc_um(self, points_rc_um: np.ndarray) -> np.ndarray:
        """Whether each point lies in the region (inside an exterior, outside its holes)."""
        return _in_parts(self.parts, np.asarray(points_rc_um, dtype=np.float64).reshape(-1, 2))

    @property
    def area_um2(self) -> float:
        """Area in square micrometres (holes left out)."""
        return float(sum(_area(p[0]) - sum(_area(h) for h in p[1:]) for p in self.parts))


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _in_parts(parts: list[list[np.ndarray]], pts: np.ndarray) -> np.ndarray:
    from skimage.measure import points_in_poly

    out = np.zeros(len(pts), dtype=bool)
    for part in parts:
        ext = part[0]
        lo, hi = ext.min(axis=0), ext.max(axis=0)
        near = np.flatnonzero(np.all((pts >= lo) & (pts <= hi), axis=1) & ~out)
        if not near.size:
            continue
        inside = points_in_poly(pts[near], ext)
        for hole in part[1:]:
            inside &= ~points_in_poly(pts[near], hole)
        out[near[inside]] = True
    return out


# -----------------------------------------------------------------------------------------
# Reading
# -----------------------------------------------------------------------------------------
def _features(data: Any, what: str) -> list[dict]:
    if isinstance(data, list):
        feats = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, dict) and data.get("type") in ("Polygon", "MultiPolygon"):
        feats = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise TrihrgeInputError(f"{what} is not a GeoJSON FeatureCollection", HINT_EXPORT)
    return [f for f in feats if isinstance(f, dict)]


def _rings(geom: dict | None) -> list[list[np.ndarray]] | None:
    """Polygon / MultiPolygon -> parts of rings (x, y QuPath px); None for anything else."""
    if not isinstance(geom, dict):
        return None
    kind = geom.get("type")
    coords = geom.get("coordinates")
    if kind == "Polygon":
        polys = [coords]
    elif kind == "MultiPolygon":
        polys = coords
    elif kind == "GeometryCollection":
        parts = [p for g in geom.get("geometries", []) for p in (_rings(g) or [])]
        return parts or None
    else:
        return None
    parts = []
    for poly in polys or []:
        rings = []
        for ring in poly or []:
            arr = np.asarray(ring, dtype=np.float64).reshape(-1, 2) if len(ring) else None
            if arr is None or len(arr) < 3 or not np.isfinite(arr).all():
                continue
            if np.allclose(arr[0], arr[-1]):
                arr = arr[:-1]
            if len(arr) >= 3:
                rings.append(arr - QUPATH_PIXEL_CENTRE_PX)
        if rings:
            parts.append(rings)
    return parts or None


def _name(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name"):
        return str(cls["name"])
    if isinstance(cls, str) and cls:
        return cls
    return str(props.get("name") or "")


def read_geojson(path: str | os.PathLike, *, image_shape_px: tuple[int, int] | None = None,
                 object_types: Sequence[str] | None = None) -> list[QuPathObject]:
    """Read the polygon objects of a QuPath GeoJSON file (full-resolution px, x/y).

    Features that are not polygons (points, lines) or have no coordinates are skipped with a
    warning; a file with no polygon at all, duplicate object ids, or (with ``image_shape_px``,
    height x width in full-resolution px) more than :data:`MAX_OUTSIDE_SHARE` of the vertices
    outside the image is refused with what was found. ``object_types``: keep only these
    (``objectType``; a feature without one counts as an annotation).
    """
    path = Path(path)
    what = f"the GeoJSON {path.name}"
    if not path.is_file():
        raise TrihrgeInputError(f"{what} not found: {path}", "check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrihrgeInputError(f"{what} is not valid JSON ({exc})", HINT_EXPORT) from exc
    feats = _features(data, what)
    objects: list[QuPathObject] = []
    skipped: dict[str, int] = {}
    ids: dict[str, int] = {}
    for f in feats:
        props = f.get("properties") or {}
        kind = str(props.get("objectType") or "annotation").lower()
        if object_types is not None and kind not in object_types:
            continue
        parts = _rings(f.get("geometry"))
        if parts is None:
            gtype = (f.get("geometry") or {}).get("type", "no geometry")
            skipped[gtype] = skipped.get(gtype, 0) + 1
            continue
        fid = f.get("id", props.get("id"))
        if fid is not None:
            ids[str(fid)] = ids.get(str(fid), 0) + 1
        meas = props.get("measurements") or {}
        if isinstance(meas, list):  # older QuPath: [{name, value}, ...]
            meas = {str(m.get("name")): m.get("value") for m in meas if isinstance(m, dict)}
        objects.append(QuPathObject(
            object_type=kind, name=_name(props), parts=parts,
            nucleus=_rings(f.get("nucleusGeometry") or props.get("nucleusGeometry")),
            id=None if fid is None else str(fid),
            measurements={str(k): v for k, v in meas.items()} if isinstance(meas, dict) else {}))
    if skipped:
        warnings.warn(f"{what}: skipped {sum(skipped.values())} feature(s) that are not polygons "
                      f"({', '.join(f'{n} {k}' for k, n in skipped.items())})", stacklevel=2)
    if not objects:
        kinds = f" of type {', '.join(object_types)}" if object_types else ""
        raise TrihrgeInputError(f"{what} holds no polygon objects{kinds} ({len(feats)} features)",
                                HINT_EXPORT)
    dups = sorted(k for k, n in ids.items() if n > 1)
    if dups:
        raise TrihrgeInputError(f"{what} has {len(dups)} duplicate object id(s), e.g. {dups[0]!r}",
                                "re-export the objects from QuPath (every object has its own id)")
    if image_shape_px is not None:
        check_inside_image(objects, image_shape_px, what)
    return objects


def check_inside_image(objects: Sequence[QuPathObject], image_shape_px: tuple[int, int],
                       what: str = "the GeoJSON") -> float:
    """Return the share of the objects' vertices outside the image (height x width px).

    Refused above :data:`MAX_OUTSIDE_SHARE` (another coordinate system), a warning above 0.
    """
    h, w = float(image_shape_px[0]), float(image_shape_px[1])
    pts = np.concatenate([r for o in objects for p in o.parts for r in p])
    lo = -QUPATH_PIXEL_CENTRE_PX
    outside = ~((pts[:, 0] >= lo) & (pts[:, 0] <= w + lo) & (pts[:, 1] >= lo)
                & (pts[:, 1] <= h + lo))
    share = float(outside.mean())
    if share > MAX_OUTSIDE_SHARE:
        raise TrihrgeInputError(
            f"{share:.0%} of the vertices in {what} lie outside the {int(w)} x {int(h)} px image "
            f"(x {pts[:, 0].min():.0f}..{pts[:, 0].max():.0f}, y {pts[:, 1].min():.0f}.."
            f"{pts[:, 1].max():.0f}); it is probably in another coordinate system or image",
            HINT_EXPORT)
    if share > 0:
        warnings.warn(f"{share:.1%} of the vertices in {what} lie outside the image",
                      stacklevel=3)
    return share


def read_regions(path: str | os.PathLike, um_per_px: float, *,
                 image_shape_px: tuple[int, int] | None = None) -> list[GeoRegion]:
    """Read QuPath annotations as regions in row/col um.

    ``um_per_px``: the full-resolution pixel size. Annotations of one class become one region
    named after the class (unclassified ones keep their own name, else ``annotation <k>``);
    holes and MultiPolygons are kept.
    """
    objects = read_geojson(path, image_shape_px=image_shape_px, object_types=("annotation",))
    regions: dict[str, GeoRegion] = {}
    for k, obj in enumerate(objects):
        name = obj.name or f"annotation {k + 1}"
        parts = [[geometry.xy_px_to_rc_um(r, um_per_px) for r in part] for part in obj.parts]
        if name in regions:
            regions[name].parts.extend(parts)
        else:
            regions[name] = GeoRegion(name=name, parts=parts)
    return list(regions.values())


def rasterize(objects: Sequence[QuPathObject], shape_px: tuple[int, int], *,
              px_per_fullres_px: float = 1.0, nucleus: bool = False) -> np.ndarray:
    """Fill the objects' outlines (or their nuclei) into int32 labels on a grid of ``shape_px``.

    Object ``k`` becomes label ``k + 1``; ``px_per_fullres_px`` scales full-resolution px to
    the grid. A pixel belongs to the polygon its centre lies in; where objects overlap the
    later one wins. With ``nucleus`` only objects that have a nucleus are filled.
    """
    from skimage.draw import polygon as fill

    out = np.zeros(shape_px, dtype=np.int32)
    for k, obj in enumerate(objects):
        parts = obj.nucleus if (nucleus and obj.nucleus) else obj.parts
        if nucleus and not obj.nucleus:
            continue
        for part in parts:
            rings = [r[:, ::-1] * px_per_fullres_px for r in part]  # row/col on the grid
            lo = np.maximum(np.floor(rings[0].min(axis=0)).astype(int), 0)
            hi = np.minimum(np.ceil(rings[0].max(axis=0)).astype(int) + 1, shape_px)
            if np.any(hi <= lo):
                continue
            local = np.zeros(tuple(hi - lo), dtype=bool)
            for j, ring in enumerate(rings):
                rr, cc = fill(ring[:, 0] - lo[0], ring[:, 1] - lo[1], local.shape)
                local[rr, cc] = j == 0  # the exterior filled, the holes cleared
            out[lo[0]:hi[0], lo[1]:hi[1]][local] = k + 1
    return out


def labels_from_geojson(path: str | os.PathLike, shape_px: tuple[int, int], *,
                        px_per_fullres_px: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a QuPath GeoJSON of cells or detections as label images on a grid of ``shape_px``.

    Returns ``(cells, nuclei)``; nuclei is None when no object has a ``nucleusGeometry`` (the
    outlines are then taken as nuclei by the caller).
    """
    full = (shape_px[0] / px_per_fullres_px, shape_px[1] / px_per_fullres_px)
    objects = read_geojson(path, image_shape_px=full, object_types=("cell", "detection"))
    cells = rasterize(objects, shape_px, px_per_fullres_px=px_per_fullres_px)
    if not any(o.nucleus for o in objects):
        return cells, None
    nuc = rasterize(objects, shape_px, px_per_fullres_px=px_per_fullres_px, nucleus=True)
    return cells, nuc


# -----------------------------------------------------------------------------------------
# Writing
# -----------------------------------------------------------------------------------------
def _ring_out(ring_xy_px: np.ndarray) -> list[list[float]]:
    ring = np.asarray(ring_xy_px, dtype=np.float64) + QUPATH_PIXEL_CENTRE_PX
    ring = np.round(ring, 3)
    return [*ring.tolist(), ring[0].tolist()]


def _polygon_geometry(parts: list[list[np.ndarray]]) -> dict:
    polys = [[_ring_out(r) for r in part] for part in parts]
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def _feature(object_type: str, parts, name: str = "", *, fid: str | None = None,
             nucleus=None, measurements: dict | None = None, color: Sequence[int] | None = None
             ) -> dict:
    props: dict[str, Any] = {"objectType": object_type}
    if name:
        props["classification"] = {"name": name,
                                   "color": list(color) if color is not None else _colour(name)}
    if measurements:
        props["measurements"] = {k: (None if v is None or not np.isfinite(v) else float(v))
                                 for k, v in measurements.items()}
    feat: dict[str, Any] = {"type": "Feature", "geometry": _polygon_geometry(parts),
                            "properties": props}
    if fid is not None:
        feat["id"] = fid
    if nucleus:
        feat["nucleusGeometry"] = _polygon_geometry(nucleus)
    return feat


def _colour(name: str) -> list[int]:
    import zlib

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return [int(v) for v in rng.integers(40, 220, 3)]


def regions_to_features(regions: Sequence[GeoRegion], um_per_px: float) -> list[dict]:
    """Turn GeoRegions (row/col um) into QuPath annotation Features (full-resolution px)."""
    return [_feature("annotation", [[geometry.rc_um_to_xy_px(r, um_per_px) for r in part]
                                    for part in reg.parts], reg.name, fid=_uuid(reg.name, k))
            for k, reg in enumerate(regions)]


def _uuid(text: str, k: int) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari-trihrge/{text}/{k}"))


def label_outlines(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Trace every label's outline (its largest piece) as an x/y ring in the image's pixels.

    The ring runs along the pixel edges (pixel-centre convention), so filling it again gives
    the same pixels.
    """
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    out: dict[int, np.ndarray] = {}
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == k
        big = np.kron(np.pad(mask, 1), np.ones((2, 2), dtype=bool)).astype(np.float32)
        contours = find_contours(big, 0.5)
        if not contours:
            continue
        ring = max(contours, key=len)
        # upsampled coordinate u -> original (u + 0.5) / 2 - 0.25 - 1 (the padding)
        rc = (ring + 0.5) / 2.0 - 0.25 - 1.0 + [sl[0].start, sl[1].start]
        rc = _drop_collinear(rc)
        out[k] = rc[:, ::-1]
    return out


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    if np.allclose(ring[0], ring[-1]):
        ring = ring[:-1]
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1]) - \
        (ring[:, 1] - prev[:, 1]) * (nxt[:, 0] - ring[:, 0])
    keep = np.abs(cross) > 1e-9
    return ring[keep] if keep.sum() >= 3 else ring


def cells_to_features(cells: Any, cell_labels: np.ndarray, label_um_per_px: float,
                      fullres_um_per_px: float, *, nuclei: np.ndarray | None = None,
                      genes: Sequence[str] = (), object_type: str = "cell",
                      classification: str = "") -> list[dict]:
    """Turn cells into QuPath cell Features in full-resolution px.

    ``cells``: the AnnData of :func:`napari_trihrge.tl.cells`, with its label images. The
    chosen ``genes``' predicted values, the cell area and the nucleus area become
    ``measurements``, the nucleus ``nucleusGeometry``.
    """
    if object_type not in OBJECT_TYPES:
        raise TrihrgeInputError(f"unknown object type {object_type!r}",
                                f"use one of {', '.join(OBJECT_TYPES)}")
    missing = [g for g in genes if g not in cells.var_names]
    if missing:
        raise TrihrgeInputError(f"{len(missing)} gene(s) not predicted for the cells, e.g. "
                                f"{missing[0]!r}", "choose genes of the enhanced run")
    scale = label_um_per_px / fullres_um_per_px  # label px -> full-resolution px
    outlines = label_outlines(cell_labels)
    nuc_outlines = label_outlines(nuclei) if nuclei is not None else {}
    cols = [list(cells.var_names).index(g) for g in genes]
    x = np.asarray(cells.X[:, cols], dtype=np.float64) if cols else None
    ids = cells.obs["cell_id"].to_numpy() if "cell_id" in cells.obs else np.arange(
        1, cells.n_obs + 1)
    feats = []
    for row, k in enumerate(ids):
        ring = outlines.get(int(k))
        if ring is None:
            continue
        meas = {"Area um^2": float(cells.obs["area_um2"].iloc[row])} \
            if "area_um2" in cells.obs else {}
        if "nucleus_area_um2" in cells.obs:
            meas["Nucleus: Area um^2"] = float(cells.obs["nucleus_area_um2"].iloc[row])
        if x is not None:
            meas.update({g: x[row, j] for j, g in enumerate(genes)})
        nring = nuc_outlines.get(int(k))
        feats.append(_feature(
            object_type, [[ring * scale]], classification, fid=_uuid("cell", int(k)),
            nucleus=[[nring * scale]] if nring is not None else None, measurements=meas))
    return feats


def write_geojson(path: str | os.PathLike, features: Sequence[dict], *,
                  overwrite: bool = False) -> Path:
    """Write Features as a GeoJSON FeatureCollection that QuPath opens.

    Written whole or not at all; an existing file is kept unless ``overwrite``.
    """
    from .._atomic import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}),
                       encoding="utf-8")
    return path
