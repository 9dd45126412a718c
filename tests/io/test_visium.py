"""Space Ranger outs/ reader: synthetic folders for every positions variant, the real DLPFC
layout, and every bad-input error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_trihrge import io
from napari_trihrge.errors import TrihrgeInputError
from sample_folders import (
    FULL_HW,
    N_GENES,
    SPOT_DIAMETER_PX,
    make_visium_folder,
)

# Visium lattice at 0.55 um/px: 86.6 um per array_row step, 50 um per array_col step


@pytest.mark.parametrize("positions", ["csv", "legacy", "parquet"])
def test_positions_variants(tmp_path, positions):
    folder = make_visium_folder(tmp_path, positions=positions)
    adata = io.read_visium(folder)
    n_tissue = 5 * 8 - 3
    assert adata.n_obs == n_tissue and adata.n_vars == N_GENES
    assert adata.var_names.is_unique and "gene_ids" in adata.var
    assert adata.obsm["spatial"].dtype == np.float64
    pos = pd.read_csv(folder / "spatial" / "tissue_positions.csv") if positions == "csv" else None
    if pos is not None:
        row = pos.set_index("barcode").loc[adata.obs_names[0]]
        assert tuple(adata.obsm["spatial"][0]) == (row.pxl_col_in_fullres, row.pxl_row_in_fullres)
    info = adata.uns["trihrge"]
    assert info["platform"] == "visium" and info["spot_diameter_um"] == 55.0
    assert info["um_per_px"] == pytest.approx(0.55, rel=2e-3)
    assert info["um_per_px_source"] == "lattice"
    assert info["library_id"] == "sample1" and info["sample"] == "sample1"
    lib = adata.uns["spatial"]["sample1"]
    assert set(lib["images"]) == {"hires", "lowres"}
    assert lib["images"]["hires"].shape == (200, 320, 3)
    assert lib["scalefactors"]["spot_diameter_fullres"] == SPOT_DIAMETER_PX
    assert (adata.obs["in_tissue"] == 1).all()


def test_outs_parent_and_library_id(tmp_path):
    folder = make_visium_folder(tmp_path, in_outs=True)
    adata = io.read(folder, library_id="lib7")
    assert adata.uns["trihrge"]["library_id"] == "lib7" and "lib7" in adata.uns["spatial"]
    assert adata.uns["trihrge"]["sample"] == "sample1"


def test_image_choice_and_scale(tmp_path):
    adata = io.read_visium(make_visium_folder(tmp_path))
    img = io.get_image(adata)
    assert img.um_per_px == pytest.approx(0.55 / 0.2, rel=2e-3)  # hires preferred
    assert img.shape_rc_um == pytest.approx((1000 * 0.55, 1600 * 0.55), rel=2e-3)
    low = io.get_image(adata, resolution="lowres")
    assert low.um_per_px == pytest.approx(0.55 / 0.05, rel=2e-3)


def test_lowres_only_and_no_image_loading(tmp_path):
    adata = io.read_visium(make_visium_folder(tmp_path, images=("lowres",)))
    assert set(adata.uns["spatial"]["sample1"]["images"]) == {"lowres"}
    assert io.get_image(adata).um_per_px == pytest.approx(11.0, rel=2e-3)
    lazy = io.read_visium(make_visium_folder(tmp_path / "b"), load_images=False)
    assert lazy.uns["spatial"]["sample1"]["images"] == {}
    with pytest.raises(TrihrgeInputError, match="no H&E image"):
        io.get_image(lazy)


def test_fullres_image_by_path(tmp_path):
    folder = make_visium_folder(tmp_path)
    full = tmp_path / "full.tif"
    import tifffile

    tissue = np.random.default_rng(0).integers(80, 230, FULL_HW + (3,), dtype=np.uint8)
    tifffile.imwrite(full, tissue, photometric="rgb")
    with pytest.warns(UserWarning, match="given pixel size gives 0.5 um/px"):  # lattice: 0.55
        adata = io.read_visium(folder, fullres_image=full, um_per_px=0.5)
    assert adata.uns["trihrge"]["fullres_image_path"] == str(full.resolve())
    assert adata.uns["trihrge"]["um_per_px"] == 0.5
    assert adata.uns["trihrge"]["um_per_px_source"] == "given"
    img = io.get_image(adata)
    assert img.shape_px == FULL_HW and img.um_per_px == 0.5
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.full((200, 320, 3), 200, np.uint8), photometric="rgb")
    with pytest.raises(TrihrgeInputError, match="outside the full-resolution image small.tif"):
        io.read_visium(folder, fullres_image=small)


def test_missing_files_name_the_file(tmp_path):
    folder = make_visium_folder(tmp_path)
    (folder / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(TrihrgeInputError, match="scalefactors_json.json not found.*outs/ folder"):
        io.read_visium(folder)
    folder = make_visium_folder(tmp_path / "b")
    (folder / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(TrihrgeInputError, match="no spot positions file"):
        io.read_visium(folder)
    folder = make_visium_folder(tmp_path / "c")
    (folder / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(TrihrgeInputError, match="filtered_feature_bc_matrix.h5 not found"):
        io.read_visium(folder)
    with pytest.raises(TrihrgeInputError, match="not found"):
        io.read_visium(tmp_path / "nowhere")


@pytest.mark.parametrize("in_outs", [False, True])
def test_matrix_folder_without_h5(tmp_path, in_outs):
    """A Space Ranger folder shared with the counts only as filtered_feature_bc_matrix/
    (matrix.mtx.gz, barcodes.tsv.gz, features.tsv.gz; seen on a real CytAssist folder) reads
    as the same sample as with the .h5."""
    from_h5 = io.read(make_visium_folder(tmp_path / "h5", in_outs=in_outs))
    from_mex = io.read(make_visium_folder(tmp_path / "mex", in_outs=in_outs, matrix="mex"))
    assert list(from_mex.obs_names) == list(from_h5.obs_names)
    assert list(from_mex.var_names) == list(from_h5.var_names)  # symbols made unique alike
    assert list(from_mex.var["gene_ids"]) == list(from_h5.var["gene_ids"])
    assert (abs(from_mex.X - from_h5.X)).sum() == 0
    np.testing.assert_array_equal(from_mex.obsm["spatial"], from_h5.obsm["spatial"])
    assert from_mex.uns["trihrge"]["um_per_px"] == from_h5.uns["trihrge"]["um_per_px"]


def test_broken_matrix_folder_is_a_clear_error(tmp_path):
    folder = make_visium_folder(tmp_path, matrix="mex")
    (folder / "filtered_feature_bc_matrix" / "features.tsv.gz").unlink()
    with pytest.raises(TrihrgeInputError, match="cannot read the count matrix folder.*"
                                                "features.tsv.gz"):
        io.read(folder)


def test_square_grid_in_the_space_ranger_layout_is_not_fitted_as_visium(tmp_path):
    """A folder of another platform written in the Space Ranger layout (a real one: a 50 x 50
    square grid, array_row and array_col 1..50) is not on Visium's hexagonal lattice: a warning
    says so, and the pixel size does not come from a Visium lattice fit."""
    folder = make_visium_folder(tmp_path)
    pos = pd.read_csv(folder / "spatial" / "tissue_positions.csv")
    pos["array_col"] = pos["array_col"] // 2  # square-grid indices: row + col often odd
    pos.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    with pytest.warns(UserWarning, match=r"spots have an odd array_row \+ array_col.*"
                                         "--um-per-px"):
        adata = io.read(folder)
    assert adata.uns["trihrge"]["um_per_px_source"] == "spot_diameter"
    assert "lattice" not in adata.uns["trihrge"]["um_per_px_estimates"]
    # given explicitly, the pixel size is used as it is
    with pytest.warns(UserWarning, match="odd array_row"):
        assert io.read(folder, um_per_px=0.5).uns["trihrge"]["um_per_px"] == 0.5


def test_mismatched_barcodes_say_how_many_matched(tmp_path):
    folder = make_visium_folder(tmp_path)
    pos = pd.read_csv(folder / "spatial" / "tissue_positions.csv")
    pos["barcode"] = pos["barcode"].str.replace("-1", "", regex=False)
    pos.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(TrihrgeInputError, match=r"do not match: only 0 of 37 matched"):
        io.read_visium(folder)


def test_spots_outside_image(tmp_path):
    folder = make_visium_folder(tmp_path, xy_scale=3.0)  # hires-pixel-like mistake, reversed
    with (pytest.raises(TrihrgeInputError, match=r"spots lie outside the hires image"),
          pytest.warns(UserWarning, match="spot diameter .* but the spot lattice")):
        io.read_visium(folder)
    folder = make_visium_folder(tmp_path / "b", xy_scale=3.0)
    with (pytest.raises(TrihrgeInputError, match="outside the hires image"),
          pytest.warns(UserWarning, match="spot diameter .* but the spot lattice")):
        io.read_visium(folder, load_images=False)


def test_all_zero_counts_and_implausible_pixel_size(tmp_path):
    with pytest.raises(TrihrgeInputError, match="all zero"):
        io.read_visium(make_visium_folder(tmp_path, zero_counts=True))
    folder = make_visium_folder(tmp_path / "b")
    sf_path = folder / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    sf["spot_diameter_fullres"] = 0.5  # 110 um/px: the lattice wins, with a warning
    sf_path.write_text(json.dumps(sf))
    with pytest.warns(UserWarning, match="spot lattice gives 0.5[45]"):
        adata = io.read_visium(folder)
    assert adata.uns["trihrge"]["um_per_px"] == pytest.approx(0.55, rel=2e-3)
    with pytest.raises(TrihrgeInputError, match="implausible"):
        io.read_visium(make_visium_folder(tmp_path / "c"), um_per_px=1000)


def test_dlpfc_shared(dlpfc_dir):
    with pytest.warns(UserWarning, match=r"dlpfc_151673: the spot diameter .* \(27% apart\)"):
        adata = io.read(dlpfc_dir)
    assert adata.shape == (3639, 5000)
    info = adata.uns["trihrge"]
    # pixel size from the lattice (100 um pitch), not from spot_diameter_fullres taken as 55 um
    assert info["um_per_px_source"] == "lattice"
    assert info["um_per_px"] == pytest.approx(0.726, rel=0.01)
    assert info["um_per_px_estimates"]["spot_diameter"] == pytest.approx(0.5705, abs=0.001)
    rc_um = adata.obsm["spatial"][:, ::-1] * info["um_per_px"]
    from napari_trihrge.geometry import spot_spacing_um
    assert spot_spacing_um(rc_um) == pytest.approx(100.0, rel=0.02)
    lib = adata.uns["spatial"][info["library_id"]]
    assert set(lib["images"]) == {"lowres"}
    img = io.get_image(adata)
    assert img.array.shape == (600, 600, 3)
    assert img.um_per_px == pytest.approx(info["um_per_px"] / lib["scalefactors"]
                                          ["tissue_lowres_scalef"])
    # raw integer UMI counts, barcodes all annotated
    assert float(adata.X.max()) > 10 and np.allclose(adata.X.data, np.round(adata.X.data))
    truth = pd.read_csv(dlpfc_dir / "151673_truth.txt", sep="\t", header=None, index_col=0)
    assert adata.obs_names.isin(truth.index).mean() > 0.99
    # spots sit on tissue: the lowres image under the spots is darker than its corners
    rc = adata.obsm["spatial"][:, ::-1] * lib["scalefactors"]["tissue_lowres_scalef"]
    under = img.array[rc[:, 0].astype(int), rc[:, 1].astype(int)].mean()
    assert under < img.array[:20, :20].mean() - 10


def _overwrite_png(folder, res, pixels):
    path = folder / "spatial" / f"tissue_{res}_image.png"
    with Image.open(path) as im:
        h, w = im.size[::-1]
    Image.fromarray(np.broadcast_to(np.asarray(pixels, np.uint8), (h, w, len(pixels))).copy()
                    ).save(path)


def test_blank_hires_falls_back_to_lowres_with_a_warning(tmp_path):
    folder = make_visium_folder(tmp_path)
    _overwrite_png(folder, "hires", (0, 0, 0, 0))  # black, transparent RGBA as some tools write
    adata = io.read_visium(folder)
    with pytest.warns(UserWarning, match="hires image of the sample is blank.*lowres"):
        img = io.get_image(adata)
    assert img.um_per_px == pytest.approx(11.0, rel=2e-3)
    with pytest.raises(TrihrgeInputError, match="blank"):
        io.get_image(adata, resolution="hires")


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (0, 0, 0, 255)])
def test_every_image_blank_is_a_clear_error(tmp_path, colour):
    folder = make_visium_folder(tmp_path)
    for res in ("hires", "lowres"):
        _overwrite_png(folder, res, colour)
    adata = io.read_visium(folder)
    with pytest.raises(TrihrgeInputError, match="hires and lowres image of the sample is blank"):
        io.get_image(adata)


def test_blank_full_resolution_image_falls_back(tmp_path):
    import tifffile

    folder = make_visium_folder(tmp_path)
    tifffile.imwrite(tmp_path / "black.tif", np.zeros((*FULL_HW, 3), np.uint8))
    adata = io.read(folder, image=tmp_path / "black.tif")
    with pytest.warns(UserWarning, match="fullres image of the sample is blank.*hires"):
        assert io.get_image(adata).um_per_px == pytest.approx(2.75, rel=2e-3)


def _edit_scalefactors(folder, **changes):
    path = folder / "spatial" / "scalefactors_json.json"
    sf = json.loads(path.read_text())
    sf.update(changes)
    path.write_text(json.dumps(sf))


def test_scalefactors_as_strings_or_zero(tmp_path):
    folder = make_visium_folder(tmp_path / "a")
    _edit_scalefactors(folder, spot_diameter_fullres="100.0")  # numeric string: read as number
    adata = io.read_visium(folder)
    assert adata.uns["trihrge"]["um_per_px_estimates"]["spot_diameter"] == pytest.approx(0.55)
    folder = make_visium_folder(tmp_path / "b")
    _edit_scalefactors(folder, spot_diameter_fullres="n/a", tissue_lowres_scalef=0)
    with pytest.warns(UserWarning) as record:
        adata = io.read_visium(folder)
    text = " ".join(str(w.message) for w in record)
    assert "spot_diameter_fullres is 'n/a'" in text and "lowres image is ignored" in text
    assert adata.uns["trihrge"]["um_per_px_source"] == "lattice"
    assert io.available_images(adata) == ["hires"]
    folder = make_visium_folder(tmp_path / "c", images=("lowres",))
    _edit_scalefactors(folder, tissue_lowres_scalef=0)
    with pytest.warns(UserWarning, match="lowres image is ignored"):
        adata = io.read_visium(folder)
    with pytest.raises(TrihrgeInputError, match="no H&E image"):
        io.get_image(adata)


def test_missing_barcodes_are_counted_and_most_missing_fails(tmp_path):
    folder = make_visium_folder(tmp_path / "a")
    pos_path = folder / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(pos_path)
    pos.drop(index=[5, 6, 7]).to_csv(pos_path, index=False)
    with pytest.warns(UserWarning, match="3 of 37 spots .* have no position"):
        adata = io.read_visium(folder)
    assert adata.n_obs == 37 - 3
    pos.iloc[:10].to_csv(pos_path, index=False)
    with pytest.raises(TrihrgeInputError, match="only 7 of 37 matched"):
        io.read_visium(folder)


def test_all_spots_at_one_point(tmp_path):
    folder = make_visium_folder(tmp_path)
    pos_path = folder / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(pos_path)
    pos["pxl_row_in_fullres"] = 400
    pos["pxl_col_in_fullres"] = 500
    pos.to_csv(pos_path, index=False)
    with pytest.raises(TrihrgeInputError, match="only 1 distinct position"), \
            pytest.warns(UserWarning, match="do not fit"):
        io.read_visium(folder)
