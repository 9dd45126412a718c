"""Geometry: the one coordinate convention, pixel size, spot lattices and sampling grids.

Coordinate convention (end to end)
----------------------------------
* On disk and in AnnData, spot positions are ``obsm['spatial']``: **x/y in full-resolution image
  pixels** (x = column, y = row), as Space Ranger, scanpy and squidpy store them.
* Inside the engine and in napari, positions are **row/col in micrometres** from the top-left
  corner of the full-resolution image (``*_rc_um`` arrays of shape ``(n, 2)``). napari layers use
  the same numbers as world coordinates, so its scale bar shows micrometres.
* A pixel index is the pixel's centre: full-resolution pixel ``(row=i, col=j)`` sits at
  ``(i * um_per_px, j * um_per_px)``.

:func:`xy_px_to_rc_um` and :func:`rc_um_to_xy_px` are the only conversions between the two; every
reader and writer goes through them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import TrihrgeInputError

#: Known platforms: spot diameter and centre-to-centre distance in micrometres, lattice kind, and
#: the lattice pitch per step of the two array indices (micrometres). Visium: spots 100 um centre
#: to centre on a hexagonal lattice indexed by ``array_row`` / ``array_col`` (neighbours in a row
#: are two ``array_col`` apart), so one ``array_col`` step is 50 um and one ``array_row`` step
#: 100 * sqrt(3) / 2 = 86.6 um. Legacy ST: a square lattice of 200 um per array step (x and y).
PLATFORMS: dict[str, dict[str, Any]] = {
    "visium": {"spot_diameter_um": 55.0, "spot_spacing_um": 100.0, "lattice": "hex",
               "array_columns": ("array_row", "array_col"),
               "array_step_um": (50.0 * np.sqrt(3.0), 50.0)},
    "st": {"spot_diameter_um": 100.0, "spot_spacing_um": 200.0, "lattice": "square",
           "array_columns": ("array_x", "array_y"), "array_step_um": (200.0, 200.0)},
}

#: Spot diameter assumed when a sample does not say (a Visium spot, 55 um).
DEFAULT_SPOT_DIAMETER_UM = float(PLATFORMS["visium"]["spot_diameter_um"])
#: Centre-to-centre spot distance assumed when a sample does not say (Visium, 100 um).
DEFAULT_SPOT_SPACING_UM = float(PLATFORMS["visium"]["spot_spacing_um"])

#: Relative disagreement between two pixel-size estimates above which the reader warns.
PIXEL_SIZE_DISAGREEMENT = 0.05
#: Relative disagreement between a declared pixel size (``--um-per-px``) and an independent
#: estimate above which a run is refused: the estimates agree within a few percent on real
#: slides, a wrong objective (20x given for 40x) is 2-fold (100 % apart).
PIXEL_SIZE_REFUSED = 0.5

#: A lattice fit whose RMS residual exceeds this fraction of the smaller array step is not trusted
#: (array indices that do not describe the pixel positions).
LATTICE_MAX_RESIDUAL = 0.25

#: Plausible range of full-resolution pixel sizes (micrometres per pixel). H&E scans are
#: 0.1-2 um/px; downsampled previews reach ~20 um/px. Outside this the input is almost surely wrong.
PLAUSIBLE_UM_PER_PX = (0.05, 30.0)


# -------------------------------------------------------------------------------------------
# Coordinate conversion (the only place)
# -------------------------------------------------------------------------------------------
def xy_px_to_rc_um(xy_px: np.ndarray, um_per_px: float) -> np.ndarray:
    """AnnData ``spatial`` (x/y, full-res pixels) -> engine/napari (row/col, micrometres)."""
    xy_px = np.asarray(xy_px, dtype=np.float64)
    if xy_px.ndim != 2 or xy_px.shape[1] != 2:
        raise TrihrgeInputError(
            f"spot coordinates must have shape (n_spots, 2), got {xy_px.shape}",
            "pass one x (column) and one y (row) pixel coordinate per spot",
        )
    return xy_px[:, ::-1] * float(um_per_px)


def rc_um_to_xy_px(rc_um: np.ndarray, um_per_px: float) -> np.ndarray:
    """Engine/napari (row/col, micrometres) -> AnnData ``spatial`` (x/y, full-res pixels)."""
    rc_um = np.asarray(rc_um, dtype=np.float64)
    return rc_um[:, ::-1] / float(um_per_px)


# -------------------------------------------------------------------------------------------
# Pixel size
# -------------------------------------------------------------------------------------------
def um_per_px_from_spot_diameter(spot_diameter_px: float, spot_diameter_um: float) -> float:
    """Full-resolution pixel size from a spot's known physical and pixel diameter."""
    if not np.isfinite(spot_diameter_px) or spot_diameter_px <= 0:
        raise TrihrgeInputError(
            f"spot diameter in pixels must be positive, got {spot_diameter_px}",
            "check 'spot_diameter_fullres' in scalefactors_json.json or pass --spot-diameter-px",
        )
    return validate_um_per_px(float(spot_diameter_um) / float(spot_diameter_px),
                              what="derived from the spot diameter")


def validate_um_per_px(um_per_px: float, what: str = "given") -> float:
    """Return ``um_per_px`` if it is a plausible H&E pixel size, else raise an actionable error."""
    lo, hi = PLAUSIBLE_UM_PER_PX
    if not np.isfinite(um_per_px) or not lo <= um_per_px <= hi:
        raise TrihrgeInputError(
            f"the pixel size {what} is {um_per_px:.4g} um/px, which is implausible for H&E "
            f"(expected {lo}-{hi} um/px; spots would be implausibly small or large)",
            "pass the real pixel size with --um-per-px, or the spot diameter in full-resolution "
            "pixels with --spot-diameter-px, or check that the coordinates are in full-resolution "
            "pixels (not hires/lowres)",
        )
    return float(um_per_px)


def platform_params(platform: str) -> dict[str, Any] | None:
    """Known platform parameters (:data:`PLATFORMS`); None for 'generic'; errors otherwise."""
    if platform in PLATFORMS:
        return dict(PLATFORMS[platform])
    if platform == "generic":
        return None
    raise TrihrgeInputError(f"unknown platform {platform!r}",
                            f"use one of {sorted(PLATFORMS) + ['generic']} (--platform)")


@dataclass(frozen=True)
class LatticeFit:
    """Least-squares fit of full-resolution pixel positions on array indices."""

    um_per_px: float
    step_px: tuple[float, float]  # pixel length of one step of each array index
    rms_residual_px: float
    n_spots: int


def fit_array_lattice(array_index: np.ndarray, xy_px: np.ndarray,
                      step_um: tuple[float, float]) -> LatticeFit | None:
    """Pixel size from the spot lattice: fit ``xy_px ~ array_index @ M + t`` by least squares;
    ``M``'s rows are the pixel vectors of one step of each index, whose physical lengths are
    ``step_um``. The pixel size is the area scale ``sqrt(step_a * step_b / |det M|)``, which holds
    for any rotation or flip of the image. None when the indices cannot determine it (fewer than
    three spots, collinear indices, or residuals larger than :data:`LATTICE_MAX_RESIDUAL` of a
    step)."""
    idx = np.asarray(array_index, dtype=np.float64)
    xy = np.asarray(xy_px, dtype=np.float64)
    ok = np.all(np.isfinite(idx), axis=1) & np.all(np.isfinite(xy), axis=1)
    idx, xy = idx[ok], xy[ok]
    if len(idx) < 3:
        return None
    design = np.column_stack([idx, np.ones(len(idx))])
    if np.linalg.matrix_rank(design) < 3:
        return None
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    m = coef[:2]
    det = abs(float(np.linalg.det(m)))
    if not np.isfinite(det) or det <= 0:
        return None
    step_px = (float(np.linalg.norm(m[0])), float(np.linalg.norm(m[1])))
    resid = xy - design @ coef
    rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
    if rms > LATTICE_MAX_RESIDUAL * min(step_px):
        return None
    um = float(np.sqrt(step_um[0] * step_um[1] / det))
    return LatticeFit(um_per_px=um, step_px=step_px, rms_residual_px=rms, n_spots=len(idx))


@dataclass(frozen=True)
class PixelSize:
    """The full-resolution pixel size of a sample and where it came from.

    ``source`` is 'given', 'lattice' (fit on the array indices), 'spot_diameter' or
    'spot_spacing' (measured nearest-neighbour distance against the platform's pitch);
    ``estimates`` holds every estimate that could be made (um/px by source)."""

    um_per_px: float
    source: str
    spot_diameter_um: float
    estimates: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The entries for ``uns['trihrge']``."""
        return {"um_per_px": self.um_per_px, "um_per_px_source": self.source,
                "um_per_px_estimates": dict(self.estimates),
                "spot_diameter_um": self.spot_diameter_um}


def _disagreement(a: float, b: float) -> float:
    return abs(a - b) / min(a, b)


def resolve_pixel_size(xy_px: np.ndarray, platform: str, *,
                       array_index: np.ndarray | None = None, um_per_px: float | None = None,
                       spot_diameter_px: float | None = None,
                       spot_diameter_um: float | None = None,
                       what: str = "the sample") -> PixelSize:
    """Full-resolution pixel size of a sample, in order of trust: ``um_per_px`` given by the
    user; the spot lattice (:func:`fit_array_lattice` on ``array_index``, the platform's array
    indices per spot); the spot diameter in pixels against ``spot_diameter_um`` (default: the
    platform's); the measured spot spacing against the platform's pitch. Warns when the lattice
    and another estimate disagree by more than :data:`PIXEL_SIZE_DISAGREEMENT`."""
    plat = platform_params(platform)
    diam_um = spot_diameter_um if spot_diameter_um is not None else (
        float(plat["spot_diameter_um"]) if plat else None)
    if diam_um is None:
        raise TrihrgeInputError(
            f"the spot diameter is unknown for platform {platform!r}",
            "pass the spot diameter in micrometres (--spot-diameter-um), or a known platform "
            "('visium' or 'st', --platform)")
    diam_um = _positive_number(diam_um, "the spot diameter in micrometres",
                               "pass --spot-diameter-um, for example 55 for Visium")
    estimates: dict[str, float] = {}
    if plat is not None and array_index is not None:
        fit = fit_array_lattice(array_index, xy_px, plat["array_step_um"])
        if fit is None:
            warnings.warn(f"the array indices of {what} do not fit a regular {platform} lattice; "
                          "the pixel size comes from the spot diameter or spacing instead",
                          stacklevel=3)
        else:
            estimates["lattice"] = fit.um_per_px
    if spot_diameter_px is not None:
        spot_diameter_px = _positive_number(
            spot_diameter_px, "the spot diameter in full-resolution pixels",
            "check 'spot_diameter_fullres' in scalefactors_json.json or pass --spot-diameter-px")
        estimates["spot_diameter"] = float(diam_um) / spot_diameter_px
    if um_per_px is not None:
        um_per_px = _positive_number(um_per_px, "the given pixel size", "pass --um-per-px > 0")
        source, um = "given", validate_um_per_px(um_per_px, what="given")
        if not estimates and plat is not None and len(xy_px) >= 3:  # an estimate to check it by
            spacing_px = spot_spacing_um(np.asarray(xy_px, dtype=np.float64))  # in pixels
            if np.isfinite(spacing_px) and spacing_px > 0:
                estimates["spot_spacing"] = float(plat["spot_spacing_um"]) / spacing_px
    elif "lattice" in estimates:
        source = "lattice"
        um = validate_um_per_px(estimates["lattice"], what=(
            f"fitted on the spot lattice of {what} ({platform}: "
            f"{', '.join(f'{s:.1f}' for s in plat['array_step_um'])} um per array step)"))
    elif "spot_diameter" in estimates:
        source = "spot_diameter"
        um = um_per_px_from_spot_diameter(spot_diameter_px, diam_um)
    elif plat is not None:
        lattice = detect_lattice(np.asarray(xy_px, dtype=np.float64)[:, ::-1],
                                 kind=str(plat["lattice"]))  # in pixel units
        source = "spot_spacing"
        um = validate_um_per_px(
            float(plat["spot_spacing_um"]) / lattice.spacing_um,
            what=f"measured from the spot spacing ({lattice.spacing_um:.1f} px taken as "
                 f"{plat['spot_spacing_um']:g} um for platform {platform!r})")
        estimates["spot_spacing"] = um
    else:
        raise TrihrgeInputError(
            f"cannot work out the pixel size of {what} for platform {platform!r}",
            "pass --um-per-px, or --spot-diameter-px with --spot-diameter-um")
    if "lattice" in estimates:
        for other in ("given", "spot_diameter"):
            value = um if other == "given" else estimates.get(other)
            if value is None:
                continue
            label = ("the given pixel size" if other == "given" else
                     f"the spot diameter ({spot_diameter_px:.1f} px taken as {diam_um:g} um)")
            warn_if_pixel_sizes_disagree(
                value, estimates["lattice"], what, label=label,
                advice=f"using {um:.4g} um/px ({source})"
                + ("" if source == "given" else "; pass --um-per-px to override"))
    return PixelSize(um_per_px=float(um), source=source, spot_diameter_um=float(diam_um),
                     estimates=estimates)


def pixel_size_disagreement(a_um_per_px: float, b_um_per_px: float) -> float:
    """How far apart two pixel sizes are, relative to the smaller (0.05: 5 %; 1.0: 2-fold)."""
    return _disagreement(float(a_um_per_px), float(b_um_per_px))


def pixel_sizes_disagree_text(what: str, label: str, value: float, other_label: str,
                              other_value: float, *, unit: str = "um/px") -> str:
    """The one "pixel sizes disagree" text, for the reader's warning and the door's refusal:
    ``what: label gives value but other_label gives other_value (how far apart)``."""
    apart = _disagreement(value, other_value)
    how_far = f"{apart:.0%} apart" if apart < 1 else f"{1 + apart:.1f}-fold apart"
    return (f"{what}: {label} gives {value:.4g} {unit} but {other_label} gives "
            f"{other_value:.4g} {unit} ({how_far})")


def warn_if_pixel_sizes_disagree(value_um_per_px: float, lattice_um_per_px: float | None,
                                 what: str, *, label: str, lattice: str = "the spot lattice",
                                 unit: str = "um/px", advice: str | None = None) -> bool:
    """The one "pixel sizes disagree" warning: when ``value_um_per_px`` (``label``) and the
    pixel size measured on ``lattice`` are more than :data:`PIXEL_SIZE_DISAGREEMENT` apart.
    ``advice`` ends the message (default: how to pass the right one). Returns whether it warned.
    """
    if lattice_um_per_px is None:
        return False
    if _disagreement(value_um_per_px, lattice_um_per_px) <= PIXEL_SIZE_DISAGREEMENT:
        return False
    text = pixel_sizes_disagree_text(what, label, value_um_per_px, lattice, lattice_um_per_px,
                                     unit=unit)
    warnings.warn(f"{text}; "
                  + (advice or "pass --um-per-px (um_per_px=...) if you know the right one"),
                  stacklevel=4)
    return True


def lattice_um_per_px(array_index: np.ndarray, xy_px: np.ndarray, step_um: float,
                      max_points: int = 20000) -> float | None:
    """Pixel size measured on a square bin lattice (one array step = ``step_um``), on a
    contiguous block of at most ``max_points`` bins; None when the indices do not fit a lattice.

    Uses :func:`fit_array_lattice` (least squares of pixel positions on array indices).
    """
    idx = np.asarray(array_index, dtype=np.float64)
    xy = np.asarray(xy_px, dtype=np.float64)
    if len(idx) > max_points:  # a square block of indices around the median bin
        centre = np.median(idx, axis=0)
        half = int(np.sqrt(max_points)) // 2
        near = np.all(np.abs(idx - centre) <= half, axis=1)
        if near.sum() >= 3:
            idx, xy = idx[near], xy[near]
    result = fit_array_lattice(idx, xy, (float(step_um), float(step_um)))
    return None if result is None else float(result.um_per_px)


def _positive_number(value: Any, what: str, hint: str) -> float:
    """``value`` as a finite positive float, else an actionable error (strings included)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TrihrgeInputError(f"{what} must be a number, got {value!r}", hint) from None
    if not np.isfinite(number) or number <= 0:
        raise TrihrgeInputError(f"{what} must be positive, got {value!r}", hint)
    return number


# -------------------------------------------------------------------------------------------
# Spot lattice
# -------------------------------------------------------------------------------------------
#: how many times denser than the measured lattice virtual spots may be (enhance, predict, the
#: CLI's --factor and the Train panel offer exactly these); :meth:`Lattice.offsets_rc_um` builds
#: any power of two, these are the ones whose virtual spots stay larger than a cell or two
DENSITY_FACTORS = (2, 4, 8, 16)
#: the density factor used when none is given
DEFAULT_DENSITY_FACTOR = 4


def validate_density_factor(factor: Any) -> int:
    """``factor`` as an int if it is one of :data:`DENSITY_FACTORS`, else an actionable error.

    Parameters
    ----------
    factor
        Virtual spots per measured spot.

    Returns
    -------
    The factor as an ``int``.
    """
    allowed = ", ".join(str(f) for f in DENSITY_FACTORS)
    try:
        value = int(factor)
    except (TypeError, ValueError):
        value = None
    if isinstance(factor, bool) or value is None or value != factor or value not in DENSITY_FACTORS:
        raise TrihrgeInputError(f"the density factor must be one of {allowed}, got {factor!r}",
                                f"use --factor (factor=) {allowed}")
    return value


@dataclass(frozen=True)
class Lattice:
    """A regular spot lattice measured from spot centres (row/col micrometres).

    ``basis_rc_um`` holds two primitive vectors (rows of a 2x2 array); for a hexagonal lattice they
    are 60 degrees apart, for a square lattice 90 degrees.
    """

    kind: str  # "hex" or "square"
    spacing_um: float
    basis_rc_um: np.ndarray

    def offsets_rc_um(self, factor: int) -> np.ndarray:
        """Offsets that turn each lattice point into ``factor`` points of a lattice ``factor``x
        denser (one of :data:`DENSITY_FACTORS`). Offset 0 (the measured spot) is always first.

        Even powers of two subdivide the basis (4x: half the spacing); odd powers add the centre of
        each cell ((a1 + a2) / 2m), which is itself a lattice of twice the density. Every offset
        set is one full set of coset representatives, so points never repeat.
        """
        factor = validate_density_factor(factor)
        k = int(np.log2(factor))
        m = 2 ** (k // 2)
        a1, a2 = self.basis_rc_um
        offs = [(i * a1 + j * a2) / m for i in range(m) for j in range(m)]
        if k % 2:
            centre = (a1 + a2) / (2 * m)
            offs = offs + [o + centre for o in offs]
        return np.asarray(offs, dtype=np.float64)


def nearest_neighbour_distance_um(rc_um: np.ndarray) -> np.ndarray:
    """Distance from every point to its nearest other point (micrometres)."""
    rc_um = np.asarray(rc_um, dtype=np.float64)
    if len(rc_um) < 2:
        raise TrihrgeInputError("at least two spots are needed to measure the spot spacing",
                                "check that the counts and the positions describe the same spots")
    from scipy.spatial import cKDTree  # here: importing geometry stays light (trihrge --help)

    dist, _ = cKDTree(rc_um).query(rc_um, k=2)
    return dist[:, 1]


def spot_spacing_um(rc_um: np.ndarray) -> float:
    """Centre-to-centre distance of the spot lattice: the median nearest-neighbour distance."""
    return float(np.median(nearest_neighbour_distance_um(rc_um)))


def detect_lattice(rc_um: np.ndarray, kind: str | None = None) -> Lattice:
    """Measure the spot lattice (kind, spacing, basis) from spot centres.

    ``kind`` ('hex' or 'square') may be forced; otherwise it is inferred from the number of
    neighbours at the lattice spacing (6 for hexagonal, 4 for square) in the interior.
    """
    rc_um = np.asarray(rc_um, dtype=np.float64)
    spacing = spot_spacing_um(rc_um)
    from scipy.spatial import cKDTree

    tree = cKDTree(rc_um)
    k = min(7, len(rc_um))
    dist, idx = tree.query(rc_um, k=k)
    near = (dist[:, 1:] > 0) & (dist[:, 1:] < 1.25 * spacing)
    if kind is None:
        counts = near.sum(axis=1)
        interior = counts[counts >= 3]
        kind = "hex" if (np.median(interior) if len(interior) else 4) >= 5 else "square"
    if kind not in ("hex", "square"):
        raise TrihrgeInputError(f"unknown lattice kind {kind!r}", "use 'hex' or 'square'")
    step = 60.0 if kind == "hex" else 90.0
    vecs = (rc_um[idx[:, 1:]] - rc_um[:, None, :])[near]
    if len(vecs) == 0:
        raise TrihrgeInputError("no regular spot lattice found",
                                "check the spot coordinates and the pixel size")
    # orientation: circular mean of the neighbour angles modulo the lattice's symmetry step
    ang = np.degrees(np.arctan2(vecs[:, 0], vecs[:, 1]))
    phase = np.radians((ang % step) * (360.0 / step))
    theta0 = np.degrees(np.angle(np.mean(np.exp(1j * phase)))) * step / 360.0 % step
    lengths = np.linalg.norm(vecs, axis=1)
    spacing = float(np.median(lengths))
    t1, t2 = np.radians(theta0), np.radians(theta0 + step)
    basis = spacing * np.array([[np.sin(t1), np.cos(t1)], [np.sin(t2), np.cos(t2)]])
    return Lattice(kind=kind, spacing_um=spacing, basis_rc_um=basis)


def virtual_spot_grid(rc_um: np.ndarray, factor: int, lattice: Lattice | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Virtual spots on a lattice ``factor`` times denser than the measured one.

    Returns ``(points_rc_um, parent)``: ``parent[i]`` is the index of the measured spot whose cell
    the virtual spot lies in (offset 0 is the measured spot itself). Offsets come from the measured
    lattice, never from fixed pixel values.
    """
    rc_um = np.asarray(rc_um, dtype=np.float64)
    lattice = lattice or detect_lattice(rc_um)
    offs = lattice.offsets_rc_um(factor)
    points = (rc_um[:, None, :] + offs[None, :, :]).reshape(-1, 2)
    parent = np.repeat(np.arange(len(rc_um)), len(offs))
    return points, parent


#: the six neighbours of a hexagonal lattice point in axial coordinates (:func:`lattice_indices`)
HEX_NEIGHBOURS = ((1, 0), (0, 1), (-1, 1), (-1, 0), (0, -1), (1, -1))
#: the four neighbours of a square lattice point (row, col indices of :func:`lattice_indices`)
SQUARE_NEIGHBOURS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def lattice_indices(rc_um: np.ndarray, kind: str, *, array_index: np.ndarray | None = None,
                    lattice: Lattice | None = None) -> np.ndarray:
    """Integer coordinates of every spot on its lattice, (n, 2).

    'hex': axial coordinates (q, r), the six neighbours of a spot at :data:`HEX_NEIGHBOURS`;
    'square': (i, j), neighbours one step apart. From the platform's array indices when given
    (Visium ``array_row`` / ``array_col``, whose row neighbours are two columns apart: r = row,
    q = (col - row) / 2; legacy ST ``x`` / ``y`` as they are), else from the positions: the
    basis of :func:`detect_lattice` (or ``lattice``), refined by a least-squares fit of the
    positions on the rounded coordinates so that it does not drift across a large section.
    """
    if kind not in ("hex", "square"):
        raise TrihrgeInputError(f"unknown lattice kind {kind!r}", "use 'hex' or 'square'")
    if array_index is not None:
        idx = np.asarray(array_index, dtype=np.float64)
        if np.all(np.isfinite(idx)) and np.allclose(idx, np.round(idx)):
            idx = np.round(idx).astype(np.int64)
            if kind == "square":
                return idx
            row, col = idx[:, 0], idx[:, 1]
            if np.all((col - row) % 2 == 0):
                return np.stack([(col - row) // 2, row], axis=1)
    rc_um = np.asarray(rc_um, dtype=np.float64)
    lattice = lattice or detect_lattice(rc_um, kind=kind)
    basis, origin = np.asarray(lattice.basis_rc_um, dtype=np.float64), rc_um[0]
    for _ in range(3):
        idx = np.round((rc_um - origin) @ np.linalg.inv(basis)).astype(np.int64)
        design = np.column_stack([idx, np.ones(len(idx))])
        if np.linalg.matrix_rank(design) < 3:
            break
        coef, *_ = np.linalg.lstsq(design, rc_um, rcond=None)
        basis, origin = coef[:2], coef[2]
    return np.round((rc_um - origin) @ np.linalg.inv(basis)).astype(np.int64)


def _hex_distance(dq: np.ndarray, dr: np.ndarray) -> np.ndarray:
    return (np.abs(dq) + np.abs(dr) + np.abs(dq + dr)) // 2


#: the block size of coarse pseudo-spots (:func:`lattice_blocks`): 7-spot hexagons, 2 x 2 blocks
DEFAULT_BLOCK_SIZE = 2


def lattice_blocks(indices: np.ndarray, kind: str, size: int = DEFAULT_BLOCK_SIZE
                   ) -> tuple[np.ndarray, int]:
    """Tile a spot lattice into blocks that cover it without gaps or overlaps.

    ``indices``: :func:`lattice_indices`. 'square': blocks of ``size`` x ``size`` spots;
    'hex': hexagons of ``size - 1`` rings around a centre spot (``size`` 2: a spot and its six
    neighbours, 7 spots; 3: 19; 4: 37), which tile the hexagonal lattice. Returns each spot's
    block as integer block coordinates (n, 2) and the number of spots in a full block.
    """
    idx = np.asarray(indices, dtype=np.int64)
    size = int(size)
    if size < 2:
        raise TrihrgeInputError(f"the block size must be at least 2, got {size}",
                                "use --factor 2 (the default) or larger")
    if kind == "square":
        return np.floor_divide(idx, size), size * size
    if kind != "hex":
        raise TrihrgeInputError(f"unknown lattice kind {kind!r}", "use 'hex' or 'square'")
    n = size - 1
    # centres of the hexagons of radius n: the sublattice spanned by u and u turned by 60 deg
    basis = np.array([[n + 1, n], [-n, 2 * n + 1]], dtype=np.float64)
    ab = idx @ np.linalg.inv(basis)
    best = np.full(len(idx), np.iinfo(np.int64).max)
    block = np.zeros_like(idx)
    for da in (-1, 0, 1):
        for db in (-1, 0, 1):
            cand = np.rint(ab).astype(np.int64) + np.array([da, db])
            centre = cand @ basis.astype(np.int64)
            dist = _hex_distance(idx[:, 0] - centre[:, 0], idx[:, 1] - centre[:, 1])
            closer = dist < best
            best[closer], block[closer] = dist[closer], cand[closer]
    if np.any(best > n):  # cannot happen for a tiling; a guard against a wrong basis
        raise RuntimeError("hexagon tiling failed")
    return block, 3 * n * (n + 1) + 1


def hex_spot_lattice(extent_rc_um: tuple[float, float], *,
                     spacing_um: float = DEFAULT_SPOT_SPACING_UM,
                     margin_um: float = DEFAULT_SPOT_DIAMETER_UM
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A Visium-style hexagonal spot lattice over ``extent_rc_um`` (height, width), at least
    ``margin_um`` from the edges: centres (row/col um) and their ``(array_row, array_col)``
    (neighbours in a row two ``array_col`` apart, odd rows shifted by half a spacing)."""
    dy = spacing_um * np.sqrt(3) / 2
    rows = np.arange(margin_um, extent_rc_um[0] - margin_um + 1e-9, dy)
    rc, arr = [], []
    for i, r in enumerate(rows):
        cols = np.arange(margin_um + (i % 2) * spacing_um / 2, extent_rc_um[1] - margin_um + 1e-9,
                         spacing_um)
        rc.append(np.stack([np.full(len(cols), r), cols], axis=1))
        arr.append(np.stack([np.full(len(cols), i), 2 * np.arange(len(cols)) + i % 2], axis=1))
    return np.concatenate(rc), np.concatenate(arr).astype(np.int64)


def disk_offsets_um(diameter_um: float, stride_um: float) -> np.ndarray:
    """Offsets (row/col micrometres) of a square grid of ``stride_um`` inside a disk of
    ``diameter_um`` centred on 0; always contains the centre."""
    r = diameter_um / 2.0
    n = int(np.floor(r / stride_um))
    g = np.arange(-n, n + 1) * stride_um
    rr, cc = np.meshgrid(g, g, indexing="ij")
    keep = rr**2 + cc**2 <= r**2 + 1e-9
    return np.stack([rr[keep], cc[keep]], axis=1)


@dataclass(frozen=True)
class DenseGrid:
    """A regular map grid: pixel ``(i, j)`` of the map is centred at
    ``origin_rc_um + (i, j) * stride_um``; ``mask`` marks the pixels inside the tissue."""

    origin_rc_um: np.ndarray
    stride_um: float
    mask: np.ndarray  # (n_rows, n_cols) bool

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def points_rc_um(self) -> np.ndarray:
        """Centres (row/col micrometres) of the masked pixels, in row-major order."""
        ii, jj = np.nonzero(self.mask)
        return self.origin_rc_um[None, :] + np.stack([ii, jj], axis=1) * self.stride_um


def dense_grid(extent_rc_um: tuple[float, float], stride_um: float,
               tissue_mask: np.ndarray | None = None, mask_um_per_px: float | None = None
               ) -> DenseGrid:
    """A map grid of ``stride_um`` covering ``extent_rc_um`` (height, width in micrometres).

    ``tissue_mask`` (bool image with pixel size ``mask_um_per_px``) restricts the grid to tissue.
    """
    if stride_um <= 0:
        raise TrihrgeInputError(f"the map stride must be positive, got {stride_um} um",
                                "pass --stride-um, for example 8 or 16")
    n_rows = int(np.ceil(extent_rc_um[0] / stride_um))
    n_cols = int(np.ceil(extent_rc_um[1] / stride_um))
    origin = np.array([stride_um / 2.0, stride_um / 2.0])
    if tissue_mask is None:
        mask = np.ones((n_rows, n_cols), dtype=bool)
    else:
        if mask_um_per_px is None:
            raise ValueError("mask_um_per_px is required with tissue_mask")
        rows = ((origin[0] + np.arange(n_rows) * stride_um) / mask_um_per_px).astype(int)
        cols = ((origin[1] + np.arange(n_cols) * stride_um) / mask_um_per_px).astype(int)
        rows = np.clip(rows, 0, tissue_mask.shape[0] - 1)
        cols = np.clip(cols, 0, tissue_mask.shape[1] - 1)
        mask = np.asarray(tissue_mask, dtype=bool)[np.ix_(rows, cols)]
    return DenseGrid(origin_rc_um=origin, stride_um=float(stride_um), mask=mask)


__all__ = [
    "PLATFORMS",
    "PLAUSIBLE_UM_PER_PX",
    "DEFAULT_SPOT_DIAMETER_UM",
    "DEFAULT_SPOT_SPACING_UM",
    "PIXEL_SIZE_DISAGREEMENT",
    "PIXEL_SIZE_REFUSED",
    "LatticeFit",
    "PixelSize",
    "fit_array_lattice",
    "resolve_pixel_size",
    "platform_params",
    "xy_px_to_rc_um",
    "rc_um_to_xy_px",
    "um_per_px_from_spot_diameter",
    "validate_um_per_px",
    "lattice_um_per_px",
    "pixel_size_disagreement",
    "pixel_sizes_disagree_text",
    "warn_if_pixel_sizes_disagree",
    "DENSITY_FACTORS",
    "DEFAULT_DENSITY_FACTOR",
    "validate_density_factor",
    "Lattice",
    "nearest_neighbour_distance_um",
    "spot_spacing_um",
    "detect_lattice",
    "virtual_spot_grid",
    "HEX_NEIGHBOURS",
    "SQUARE_NEIGHBOURS",
    "lattice_indices",
    "lattice_blocks",
    "DEFAULT_BLOCK_SIZE",


    "hex_spot_lattice",
    "disk_offsets_um",
    "DenseGrid",
    "dense_grid",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
