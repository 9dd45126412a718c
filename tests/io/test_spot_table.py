"""Spot tables (counts + positions + image), the her2st layout and the read() dispatcher."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_trihrge import io
from napari_trihrge.errors import TrihrgeInputError
from sample_folders import IMAGE_HW, UM_PER_PX, make_st_section


@pytest.fixture
def section(tmp_path):
    return make_st_section(tmp_path / "S1")


def test_her2st_layout_pixel_size_from_lattice(section):
    with pytest.warns(UserWarning, match="not selected"):
        adata = io.read(section)
    assert adata.n_obs == 6 * 8 - 4 - 2 and adata.n_vars == 10
    info = adata.uns["trihrge"]
    assert info["platform"] == "st" and info["library_id"] == "S1"
    assert info["um_per_px_source"] == "lattice"  # 200 um per array x/y step
    assert info["um_per_px"] == pytest.approx(UM_PER_PX, rel=0.005)
    assert info["spot_diameter_um"] == 100.0
    assert info["fullres_image_path"].endswith("S1_HE.jpg")
    sel = pd.read_csv(section / "S1_selection.tsv", sep="\t")
    sel.index = sel.x.astype(str) + "x" + sel.y.astype(str)
    np.testing.assert_allclose(adata.obsm["spatial"],
                               sel.loc[adata.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    lib = adata.uns["spatial"]["S1"]
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100 / info["um_per_px"])
    hires = lib["images"]["hires"]
    assert max(hires.shape[:2]) <= 2000
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(
        hires.shape[0] / IMAGE_HW[0], rel=0.01)
    img = io.get_image(adata)
    assert img.shape_px == IMAGE_HW and img.um_per_px == info["um_per_px"]


@pytest.mark.filterwarnings("ignore:.*not selected")
def test_pixel_size_given_or_from_spot_diameter(section):
    f = dict(counts=section / "S1.tsv.gz", positions=section / "S1_selection.tsv",
             image=section / "S1_HE.jpg", load_images=False)
    with pytest.warns(UserWarning):
        a = io.read_spot_table(**f, um_per_px=0.65)
    assert a.uns["trihrge"]["um_per_px"] == 0.65 and a.uns["trihrge"]["um_per_px_source"] == "given"
    with pytest.warns(UserWarning, match="spot lattice gives"):  # 0.83 vs 0.70 um/px
        b = io.read_spot_table(**f, spot_diameter_px=120)
    assert b.uns["trihrge"]["um_per_px"] == pytest.approx(UM_PER_PX, rel=0.005)
    assert b.uns["trihrge"]["um_per_px_source"] == "lattice"
    assert b.uns["trihrge"]["um_per_px_estimates"]["spot_diameter"] == pytest.approx(100 / 120)
    with pytest.warns(UserWarning):
        c = io.read_spot_table(**f, spot_diameter_px=80, spot_diameter_um=55, platform="generic")
    assert c.uns["trihrge"]["um_per_px"] == pytest.approx(55 / 80)
    with pytest.raises(TrihrgeInputError, match="spot diameter is unknown"):
        io.read_spot_table(**f, platform="generic")
    with pytest.raises(TrihrgeInputError, match="cannot work out the pixel size"):
        io.read_spot_table(**f, platform="generic", spot_diameter_um=55)
    with pytest.raises(TrihrgeInputError, match="implausible"):
        io.read_spot_table(**f, spot_diameter_px=0.5, spot_diameter_um=55, platform="generic")
    with pytest.raises(TrihrgeInputError, match="implausible"):
        io.read_spot_table(**f, um_per_px=1000)


def test_generic_csv_positions_dataframe_and_transposed_counts(tmp_path, section):
    sel = pd.read_csv(section / "S1_selection.tsv", sep="\t")
    pos = pd.DataFrame({"barcode": [f"spot{i}" for i in range(len(sel))],
                        "pxl_col_in_fullres": sel.pixel_x, "pxl_row_in_fullres": sel.pixel_y})
    pos.to_csv(tmp_path / "pos.csv", index=False)
    counts = pd.DataFrame(np.random.default_rng(1).poisson(2, (5, len(sel))), columns=pos.barcode,
                          index=[f"g{i}" for i in range(5)])  # genes x spots
    counts.to_csv(tmp_path / "counts.csv")
    adata = io.read(tmp_path / "counts.csv", positions=tmp_path / "pos.csv",
                    image=section / "S1_HE.jpg", load_images=False)
    assert adata.shape == (len(sel), 5)
    assert adata.uns["trihrge"]["um_per_px"] == pytest.approx(UM_PER_PX, rel=0.01)
    again = io.read_spot_table(counts.T, pos, None, um_per_px=0.7)
    assert again.shape == (len(sel), 5) and "fullres_image_path" not in again.uns["trihrge"]


@pytest.mark.filterwarnings("ignore:.*not selected")
def test_bad_inputs(tmp_path, section):
    f = dict(positions=section / "S1_selection.tsv", image=section / "S1_HE.jpg",
             load_images=False)
    with pytest.raises(TrihrgeInputError, match="needs positions and image"):
        io.read(section / "S1.tsv.gz")
    with pytest.raises(TrihrgeInputError, match="counts table file not found"):
        io.read_spot_table(tmp_path / "none.tsv", **f)
    bad_ids = pd.read_csv(section / "S1.tsv.gz", sep="\t", index_col=0)
    bad_ids.index = "spot_" + bad_ids.index
    bad_ids.to_csv(tmp_path / "bad.tsv", sep="\t")
    with pytest.raises(TrihrgeInputError, match=r"do not match: only 0 of 46 matched"):
        io.read_spot_table(tmp_path / "bad.tsv", **f)
    text = bad_ids.astype(object)
    text.iloc[0, 0] = "many"
    text.index = pd.read_csv(section / "S1.tsv.gz", sep="\t", index_col=0).index
    text.to_csv(tmp_path / "text.tsv", sep="\t")
    with pytest.raises(TrihrgeInputError, match="non-numeric"):
        io.read_spot_table(tmp_path / "text.tsv", **f)
    zero = make_st_section(tmp_path / "Z", "Z", zero=True)
    with pytest.raises(TrihrgeInputError, match="all zero"):
        io.read(zero, load_images=False)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(small)
    with pytest.warns(UserWarning), pytest.raises(TrihrgeInputError, match="outside the full-res"):
        io.read_spot_table(section / "S1.tsv.gz", f["positions"], small, load_images=False)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full(IMAGE_HW, 200, np.uint8)).save(gray)
    with pytest.warns(UserWarning), pytest.raises(TrihrgeInputError, match="not an RGB image"):
        io.read_spot_table(section / "S1.tsv.gz", f["positions"], gray)
    nopix = pd.read_csv(f["positions"], sep="\t").drop(columns=["pixel_x", "pixel_y"])
    with pytest.raises(TrihrgeInputError, match="no pixel coordinate columns"):
        io.read_spot_table(section / "S1.tsv.gz", nopix.rename(columns={"x": "a", "y": "b"}))
    with pytest.raises(TrihrgeInputError, match="no spot positions"):
        io.read_spot_table(section / "S1.tsv.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrihrgeInputError, match="not a recognised sample folder"):
        io.read(tmp_path / "empty")
    noimg = make_st_section(tmp_path / "N", "N", image=False)
    with pytest.raises(TrihrgeInputError, match="N_HE.jpg not found"):
        io.read_her2st(noimg)


@pytest.fixture(scope="module")
def her2st_c2():
    from conftest import shared_path

    return io.read_her2st(shared_path("her2st", "C2"), load_images=False)


def test_her2st_c2_shared(her2st_c2):
    from conftest import shared_path

    d = shared_path("her2st", "C2")
    sel = pd.read_csv(d / "C2_selection.tsv", sep="\t")
    counts = pd.read_csv(d / "C2.tsv.gz", sep="\t", index_col=0, usecols=[0])
    ids = sel.x.astype(str) + "x" + sel.y.astype(str)
    expected = int((ids[sel.selected == 1].isin(counts.index)).sum())
    adata = her2st_c2
    assert adata.n_obs == expected and adata.n_vars > 15000
    info = adata.uns["trihrge"]
    assert info["um_per_px"] == pytest.approx(0.68, abs=0.1)
    assert info["platform"] == "st" and info["library_id"] == "C2"
    img = io.get_image(adata)
    assert img.shape_px == (9911, 9274)
    xy = adata.obsm["spatial"]
    assert (xy[:, 0] < 9274).all() and (xy[:, 1] < 9911).all()


@pytest.mark.shared_data
@pytest.mark.parametrize("sid", ["C2", "C3", "C4", "C5"])
def test_her2st_shared_pixel_size_from_lattice(sid):
    from conftest import shared_path

    adata = io.read(shared_path("her2st", sid), load_images=False)
    info = adata.uns["trihrge"]
    assert info["um_per_px_source"] == "lattice"
    assert info["um_per_px"] == pytest.approx(0.68, rel=0.02)


def test_nan_in_a_counts_table_is_rejected(tmp_path):
    section = make_st_section(tmp_path / "S1")
    counts = pd.read_csv(section / "S1.tsv.gz", sep="\t", index_col=0)
    counts.iloc[3, 2] = np.nan
    counts.to_csv(section / "S1.tsv.gz", sep="\t")
    with pytest.raises(TrihrgeInputError, match="1 missing \\(NaN\\) count"):
        io.read(section)


@pytest.mark.parametrize("kind", ["log1p", "cpm_rounded"])
def test_normalised_counts_are_rejected(tmp_path, kind):
    section = make_st_section(tmp_path / "S1")
    counts = pd.read_csv(section / "S1.tsv.gz", sep="\t", index_col=0).astype(float)
    cpm = counts.div(counts.sum(axis=1), axis=0) * 1e6
    bad = np.log1p(cpm / 100) if kind == "log1p" else cpm.round()
    if kind == "cpm_rounded":  # make every total exactly 1e6 after rounding
        bad.iloc[:, 0] += 1e6 - bad.sum(axis=1)
    bad.to_csv(section / "S1.tsv.gz", sep="\t")
    with (pytest.raises(TrihrgeInputError, match="not raw counts"),
          pytest.warns(UserWarning, match="spot.s. of S1.tsv.gz are not selected")):
        io.read(section)
