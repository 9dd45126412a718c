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

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .errors import TrihrgeInputError

#: Known platforms: spot diameter and centre-to-centre distance in micrometres, lattice kind.
PLATFORMS: dict[str, dict[str, float | str]] = {
    "visium": {"spot_diameter_um": 55.0, "spot_spacing_um": 100.0, "lattice": "hex"},
    "st": {"spot_diameter_um": 100.0, "spot_spacing_um": 200.0, "lattice": "square"},
}

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


def rc_um_to_px(rc_um: np.ndarray, um_per_px: float) -> np.ndarray:
    """Row/col micrometres -> row/col pixel positions (float) in an image of ``um_per_px``."""
    return np.asarray(rc_um, dtype=np.float64) / float(um_per_px)


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


# -------------------------------------------------------------------------------------------
# Spot lattice
# -------------------------------------------------------------------------------------------
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
        denser (factor 1, 2, 4, 8, 16...). Offset 0 (the measured spot) is always first.

        Even powers of two subdivide the basis (4x: half the spacing); odd powers add the centre of
        each cell ((a1 + a2) / 2m), which is itself a lattice of twice the density. Every offset
        set is one full set of coset representatives, so points never repeat.
        """
        if factor < 1 or factor & (factor - 1):
            raise TrihrgeInputError(
                f"the density factor must be a power of two (1, 2, 4, 8, 16), got {factor}",
                "use --factor 2, 4 or 8",
            )
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
    "xy_px_to_rc_um",
    "rc_um_to_xy_px",
    "rc_um_to_px",
    "um_per_px_from_spot_diameter",
    "validate_um_per_px",
    "Lattice",
    "nearest_neighbour_distance_um",
    "spot_spacing_um",
    "detect_lattice",
    "virtual_spot_grid",
    "disk_offsets_um",
    "DenseGrid",
    "dense_grid",
]
