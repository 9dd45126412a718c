"""The checks at the door of the public API: a wrong type or a missing field ends with what was
expected and how to get it, before any work."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from napari_trihrge import io, pp, tl
from napari_trihrge._checks import MIN_SECTION_SPOTS, check_adata, check_adatas
from napari_trihrge.errors import TrihrgeInputError


@pytest.mark.parametrize("task", [tl.enhance, tl.recovery])
def test_a_path_instead_of_an_anndata_points_to_io_read(task, tmp_path):
    with pytest.raises(TypeError, match=r"adata must be an AnnData with obsm\['spatial'\]; got "
                       r"str: did you mean napari_trihrge.io.read\('sample.h5ad'\)"):
        task("sample.h5ad")
    with pytest.raises(TypeError, match="got PosixPath"):
        task(tmp_path)


def test_none_and_other_types_are_named():
    with pytest.raises(TypeError, match="got None"):
        tl.enhance(None)
    with pytest.raises(TypeError, match="got ndarray"):
        tl.recovery(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="got str"):
        pp.select_genes("sample.h5ad")


def test_a_list_names_the_wrong_entry(synthetic):
    with pytest.raises(TypeError, match=r"train_adatas\[0\] must be an AnnData.*io.read"):
        tl.transfer(["a.h5ad", synthetic], synthetic)
    with pytest.raises(TrihrgeInputError, match="empty"):
        check_adatas([])
    assert check_adatas(synthetic) == [synthetic]


def test_io_read_takes_a_path_not_an_anndata(synthetic):
    with pytest.raises(TypeError, match="must be a path.*got AnnData: it is already read"):
        io.read(synthetic)


def test_missing_or_broken_positions_are_input_errors(synthetic):
    a = ad.AnnData(np.ones((30, 4), np.float32))
    with pytest.raises(TrihrgeInputError, match=r"no obsm\['spatial'\]") as err:
        tl.enhance(a)
    assert "io.read" in err.value.hint
    a.obsm["spatial"] = np.zeros((30, 3))
    with pytest.raises(TrihrgeInputError, match=r"shape \(30, 3\)"):
        check_adata(a)
    a.obsm["spatial"] = np.full((30, 2), np.nan)
    with pytest.raises(TrihrgeInputError, match="NaN"):
        check_adata(a)


def test_too_few_spots_are_refused_before_training(synthetic):
    three = synthetic[:3].copy()
    with pytest.raises(TrihrgeInputError, match=f"3 spots; training needs at least "
                       f"{MIN_SECTION_SPOTS}"):
        tl.enhance(three)
    with pytest.raises(TrihrgeInputError, match="3 spots"):
        tl.recovery(three)


def test_a_declared_pixel_size_far_from_the_lattice_is_refused(synthetic):
    from napari_trihrge._checks import check_declared_pixel_size

    info = synthetic.uns["trihrge"]
    um = float(info["um_per_px"])
    synthetic.uns["trihrge"] = {**info, "um_per_px": um * 4, "um_per_px_source": "given",
                                "um_per_px_estimates": {"lattice": um, "spot_diameter": um}}
    with pytest.raises(TrihrgeInputError, match=r"gives .* um/px \(4\.0-fold apart\)") as err:
        tl.enhance(synthetic)
    assert "--um-per-px" in err.value.hint
    synthetic.uns["trihrge"]["um_per_px"] = um * 1.2  # within the tolerance: runs on
    check_declared_pixel_size(synthetic)
    synthetic.uns["trihrge"].update(um_per_px=um * 4, um_per_px_source="lattice")
    check_declared_pixel_size(synthetic)  # only a declared size is checked


def test_a_declared_pixel_size_is_checked_by_the_spot_spacing_without_array_indices():
    """A spot table without array indices: the spacing of the spots (legacy ST: 200 um) is
    the estimate a declared pixel size is checked by."""
    from napari_trihrge import geometry
    from napari_trihrge._checks import check_declared_pixel_size

    ij = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2)
    xy_px = ij * 400.0  # 200 um apart at 0.5 um/px
    size = geometry.resolve_pixel_size(xy_px, "st", um_per_px=1.0)
    assert size.estimates["spot_spacing"] == pytest.approx(0.5)
    a = ad.AnnData(np.ones((len(xy_px), 2), np.float32))
    a.obsm["spatial"] = xy_px
    a.uns["trihrge"] = size.record()
    with pytest.raises(TrihrgeInputError,
                       match=r"but the spot spacing gives 0\.5 um/px \(2\.0-fold apart\)"):
        check_declared_pixel_size(a)
