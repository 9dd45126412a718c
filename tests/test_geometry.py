import numpy as np
import pytest

from napari_trihrge import geometry
from napari_trihrge.errors import TrihrgeInputError


def hex_lattice(n_rows=8, n_cols=10, spacing_um=100.0, angle_deg=0.0):
    """Visium-like lattice: rows 100*sqrt(3)/2 um apart, alternate rows offset by 50 um."""
    pts = []
    for r in range(n_rows):
        for c in range(n_cols):
            pts.append((r * spacing_um * np.sqrt(3) / 2, c * spacing_um + (r % 2) * spacing_um / 2))
    pts = np.array(pts)
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return pts @ rot.T + 1000.0


def square_lattice(n=8, spacing_um=200.0):
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1) * spacing_um + 500.0


def test_xy_rc_round_trip_and_axis_order():
    xy = np.array([[10.0, 20.0], [30.0, 5.0]])  # x = column, y = row
    rc = geometry.xy_px_to_rc_um(xy, 0.5)
    np.testing.assert_allclose(rc, [[10.0, 5.0], [2.5, 15.0]])
    np.testing.assert_allclose(geometry.rc_um_to_xy_px(rc, 0.5), xy)


def test_bad_coordinate_shape():
    with pytest.raises(TrihrgeInputError, match="shape"):
        geometry.xy_px_to_rc_um(np.zeros((4, 3)), 1.0)


def test_pixel_size_from_visium_spot_diameter():
    # DLPFC: spot_diameter_fullres 96.4 px = 55 um
    assert geometry.um_per_px_from_spot_diameter(96.4, 55.0) == pytest.approx(0.5705, abs=1e-3)


@pytest.mark.parametrize("diameter_px", [0.5, 1e6])
def test_implausible_pixel_size_is_actionable(diameter_px):
    with pytest.raises(TrihrgeInputError, match="implausible") as err:
        geometry.um_per_px_from_spot_diameter(diameter_px, 55.0)
    assert "--um-per-px" in str(err.value)


@pytest.mark.parametrize("angle", [0.0, 1.5, -2.0])
def test_detect_hex_lattice(angle):
    lat = geometry.detect_lattice(hex_lattice(angle_deg=angle))
    assert lat.kind == "hex"
    assert lat.spacing_um == pytest.approx(100.0, rel=1e-3)
    a1, a2 = lat.basis_rc_um
    cos = a1 @ a2 / (np.linalg.norm(a1) * np.linalg.norm(a2))
    assert cos == pytest.approx(0.5, abs=1e-3)  # 60 degrees


def test_detect_square_lattice():
    lat = geometry.detect_lattice(square_lattice())
    assert lat.kind == "square"
    assert lat.spacing_um == pytest.approx(200.0)
    a1, a2 = lat.basis_rc_um
    assert abs(a1 @ a2) < 1e-6


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("make", [hex_lattice, square_lattice])
def test_virtual_grid_density_no_duplicates(make, factor):
    spots = make()
    lat = geometry.detect_lattice(spots)
    pts, parent = geometry.virtual_spot_grid(spots, factor, lat)
    assert len(pts) == factor * len(spots)
    np.testing.assert_allclose(pts[parent == 3][0], spots[3])  # offset 0 is the spot itself
    # no two virtual spots coincide, and they stay evenly spread: the nearest distance is at
    # least spacing / (1.5 sqrt(factor)) (index-2 refinements of a hex lattice have spacing s/2)
    nn = geometry.nearest_neighbour_distance_um(pts)
    assert nn.min() >= lat.spacing_um / np.sqrt(factor) / 1.5
    assert len(np.unique(np.round(pts, 3), axis=0)) == len(pts)


def test_virtual_grid_rejects_non_power_of_two():
    lat = geometry.detect_lattice(hex_lattice())
    with pytest.raises(TrihrgeInputError, match="density factor must be one of 2, 4, 8, 16"):
        lat.offsets_rc_um(3)


@pytest.mark.parametrize("bad", [0, 1, 3, 32, 4.5, "4", True, None])
def test_density_factor_rule_refuses(bad):
    with pytest.raises(TrihrgeInputError, match="density factor"):
        geometry.validate_density_factor(bad)


def test_density_factor_rule_accepts_its_own_list():
    assert [geometry.validate_density_factor(f) for f in geometry.DENSITY_FACTORS] == [2, 4, 8, 16]
    assert geometry.validate_density_factor(np.int64(16)) == 16
    assert geometry.DEFAULT_DENSITY_FACTOR in geometry.DENSITY_FACTORS


def test_disk_offsets():
    offs = geometry.disk_offsets_um(55.0, 8.0)
    assert (np.linalg.norm(offs, axis=1) <= 27.5).all()
    assert len(offs) == 37
    assert any((offs == 0).all(axis=1))


def test_dense_grid_with_mask():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True  # top half tissue, mask pixel = 10 um
    grid = geometry.dense_grid((100.0, 100.0), 20.0, mask, 10.0)
    assert grid.shape == (5, 5)
    assert grid.mask[:2].all() and not grid.mask[3:].any()
    pts = grid.points_rc_um()
    assert pts[:, 0].max() < 50.0
    with pytest.raises(TrihrgeInputError):
        geometry.dense_grid((100.0, 100.0), 0.0)


def visium_array(n_rows=6, n_cols=8):
    """Visium array indices: array_col runs in steps of 2, odd rows offset by one."""
    return np.array([(r, c) for r in range(n_rows) for c in range(r % 2, 2 * n_cols, 2)], float)


@pytest.mark.parametrize("angle_deg,flip", [(0.0, False), (90.0, False), (17.0, True)])
def test_lattice_fit_recovers_pixel_size_under_rotation_and_flip(angle_deg, flip):
    idx = visium_array()
    step_r, step_c = geometry.PLATFORMS["visium"]["array_step_um"]
    rc_um = idx * [step_r, step_c]
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    xy_px = (rc_um @ rot.T)[:, ::-1] / 0.726 + 3000.0
    if flip:
        xy_px[:, 0] *= -1
        xy_px[:, 0] += 20000
    rng = np.random.default_rng(0)
    fit = geometry.fit_array_lattice(idx, xy_px + rng.normal(0, 1.0, xy_px.shape),
                                     (step_r, step_c))
    assert fit is not None and fit.um_per_px == pytest.approx(0.726, rel=0.005)
    # centre-to-centre distance is the Visium pitch, 100 um
    assert geometry.spot_spacing_um(xy_px[:, ::-1] * fit.um_per_px) == pytest.approx(100, rel=0.01)


def test_lattice_fit_refuses_indices_that_do_not_describe_the_positions():
    idx = visium_array()
    rng = np.random.default_rng(1)
    assert geometry.fit_array_lattice(idx, rng.uniform(0, 5000, (len(idx), 2)), (86.6, 50)) \
        is None
    assert geometry.fit_array_lattice(idx[:2], idx[:2] * 100, (86.6, 50)) is None  # too few
    line = np.stack([np.arange(10.0), np.zeros(10)], axis=1)  # collinear indices
    assert geometry.fit_array_lattice(line, line * 100, (86.6, 50)) is None


def test_resolve_pixel_size_order_and_disagreement_warning():
    idx = visium_array()
    xy_px = (idx * geometry.PLATFORMS["visium"]["array_step_um"])[:, ::-1] / 0.726
    ps = geometry.resolve_pixel_size(xy_px, "visium", array_index=idx, spot_diameter_px=75.8)
    assert ps.source == "lattice" and ps.um_per_px == pytest.approx(0.726)
    assert ps.estimates["spot_diameter"] == pytest.approx(55 / 75.8)
    assert ps.record()["um_per_px_source"] == "lattice"
    with pytest.warns(UserWarning, match="27% apart"):  # Space Ranger's 96.4 px on DLPFC
        ps = geometry.resolve_pixel_size(xy_px, "visium", array_index=idx,
                                         spot_diameter_px=55 / 0.5705)
    assert ps.source == "lattice"
    with pytest.warns(UserWarning, match="given pixel size"):
        ps = geometry.resolve_pixel_size(xy_px, "visium", array_index=idx, um_per_px=0.5)
    assert ps.source == "given" and ps.um_per_px == 0.5
    ps = geometry.resolve_pixel_size(xy_px, "visium", spot_diameter_px=55 / 0.7)
    assert ps.source == "spot_diameter" and ps.um_per_px == pytest.approx(0.7)
    ps = geometry.resolve_pixel_size(xy_px, "visium")
    assert ps.source == "spot_spacing" and ps.um_per_px == pytest.approx(0.726, rel=0.01)
    with pytest.raises(TrihrgeInputError, match="must be a number"):
        geometry.resolve_pixel_size(xy_px, "visium", spot_diameter_px="96.4px")
    with pytest.raises(TrihrgeInputError, match="unknown platform"):
        geometry.resolve_pixel_size(xy_px, "slide-seq")


def test_square_st_lattice_fit():
    ij = np.array([(i, j) for i in range(1, 9) for j in range(1, 7)], float)
    xy_px = ij * 200.0 / 0.68 + 50
    ps = geometry.resolve_pixel_size(xy_px, "st", array_index=ij)
    assert ps.source == "lattice" and ps.um_per_px == pytest.approx(0.68)
    assert ps.spot_diameter_um == 100.0
