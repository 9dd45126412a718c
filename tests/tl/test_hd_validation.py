"""Visium HD: the synthetic truth written as a binned Space Ranger folder, the binned-folder
reader, pseudo-Visium spots and ``validate-hd`` (no SpatialData extra needed)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_MODEL, TINY_TRAIN
from napari_trihrge import geometry, io
from napari_trihrge.datasets import synthetic_sample, write_visium_hd
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.tl.hd_validation import measured_truth, pseudo_visium

SIZE_UM = (1000.0, 1000.0)


@pytest.fixture(scope="module")
def small_sample():
    return synthetic_sample(seed=1, size_um=SIZE_UM, n_genes=24, um_per_px=0.8)


@pytest.fixture(scope="module")
def hd_outs(small_sample, tmp_path_factory):
    return write_visium_hd(small_sample, tmp_path_factory.mktemp("hd") / "outs",
                           bin_sizes_um=(8, 16), seed=3)


def test_binned_folder_layout(hd_outs):
    for size in (8, 16):
        folder = hd_outs / "binned_outputs" / f"square_{size:03d}um"
        assert (folder / "filtered_feature_bc_matrix.h5").is_file()
        pos = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet")
        assert list(pos.columns) == ["barcode", "in_tissue", "array_row", "array_col",
                                     "pxl_row_in_fullres", "pxl_col_in_fullres"]
        sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
        assert sf["bin_size_um"] == size and sf["microns_per_pixel"] == pytest.approx(0.8)
        assert sf["spot_diameter_fullres"] == pytest.approx(size / 0.8)
    assert io.is_visium_hd_folder(hd_outs)
    assert not io.is_visium_folder(hd_outs)


def test_read_bins_against_truth(small_sample, hd_outs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded pixel size agrees with the lattice
        bins = io.read(hd_outs)
    info = bins.uns["trihrge"]
    assert info["bin_size_um"] == 8 and info["um_per_px"] == pytest.approx(0.8)
    assert info["um_per_px_lattice"] == pytest.approx(0.8, rel=1e-6)
    truth = small_sample.uns["truth"]
    assert bins.n_obs == int(truth["tissue_8um"].sum())
    # each bin centre lies on the truth pixel with its array indices
    rc = geometry.xy_px_to_rc_um(bins.obsm["spatial"], info["um_per_px"])
    ij = bins.obs[["array_row", "array_col"]].to_numpy()
    np.testing.assert_allclose(rc, truth["origin_rc_um"] + ij * truth["stride_um"], atol=1e-6)
    # counts are Poisson draws of the truth: totals match the expected total within 1 %
    expected = truth["expression_8um"][:, truth["tissue_8um"]].sum()
    assert abs(bins.X.sum() / expected - 1) < 0.01
    # 16 um bins are sums of 2 x 2 8 um bins: same total inside the tissue
    b16 = io.read(hd_outs, bin_size_um=16)
    assert b16.uns["trihrge"]["bin_size_um"] == 16
    assert b16.X.sum() == pytest.approx(bins.X.sum(), rel=1e-6)
    # a bin folder can be passed directly
    direct = io.read(hd_outs / "binned_outputs" / "square_016um")
    assert direct.n_obs == b16.n_obs
    assert io.get_image(bins).um_per_px == pytest.approx(0.8)


def test_bin_errors(hd_outs, tmp_path):
    with pytest.raises(TrihrgeInputError, match="no 2 um bins"):
        io.read(hd_outs, bin_size_um=2)
    with pytest.raises(TrihrgeInputError, match="not 8 um"):
        io.read(hd_outs / "binned_outputs" / "square_016um", bin_size_um=8)
    # a wrong recorded pixel size is flagged against the lattice
    import shutil

    copy = tmp_path / "outs"
    shutil.copytree(hd_outs, copy)
    sf_path = copy / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    sf["microns_per_pixel"] = 0.6
    sf_path.write_text(json.dumps(sf))
    with pytest.warns(UserWarning, match="bin lattice"):
        io.read(copy)


def test_pseudo_visium_sums_bins_in_disks(hd_outs):
    bins = io.read(hd_outs)
    pseudo = pseudo_visium(bins)
    info = pseudo.uns["trihrge"]
    assert info["platform"] == "visium" and info["spot_diameter_um"] == 55
    rc_spots = geometry.xy_px_to_rc_um(pseudo.obsm["spatial"], info["um_per_px"])
    lattice = geometry.detect_lattice(rc_spots)
    assert lattice.kind == "hex" and lattice.spacing_um == pytest.approx(100.0, rel=1e-6)
    rc_bins = geometry.xy_px_to_rc_um(bins.obsm["spatial"], info["um_per_px"])
    # spot k = sum of the bins whose centres lie within 27.5 um
    for k in (0, len(pseudo) // 2, len(pseudo) - 1):
        inside = np.hypot(*(rc_bins - rc_spots[k]).T) <= 27.5
        assert pseudo.obs["n_bins"].iloc[k] == inside.sum()
        np.testing.assert_allclose(pseudo.X[k].toarray().ravel(),
                                   np.asarray(bins.X[inside].sum(axis=0)).ravel())
    # a full 55 um disk holds ~37 bins of 8 um; partial disks at the edge were dropped
    assert pseudo.obs["n_bins"].min() >= 0.5 * np.pi * 27.5**2 / 64


def test_measured_truth_grid(hd_outs):
    bins = io.read(hd_outs)
    genes = list(bins.var_names[:5])
    truth = measured_truth(bins, genes)
    assert truth["tissue_8um"].sum() == bins.n_obs
    i, j = bins.obs[["array_row", "array_col"]].to_numpy()[7] - \
        bins.obs[["array_row", "array_col"]].to_numpy().min(axis=0)
    np.testing.assert_allclose(truth["expression_8um"][:, i, j],
                               bins.X[7, :5].toarray().ravel())


def test_not_hd_is_refused(small_sample):
    with pytest.raises(TrihrgeInputError, match="not made of Visium HD bins"):
        pseudo_visium(small_sample)


@pytest.mark.slow
def test_validate_hd_cli(hd_outs, tmp_path, capsys):
    from napari_trihrge.workflows import cli

    out = tmp_path / "run"
    code = cli.main(["validate-hd", str(hd_outs), "--genes", "24", "--max-epochs", "6",
                     "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    hd = summary["validate_hd"]
    assert hd["bin_size_um"] == 8 and hd["n_pixels_scored"] > 1000
    assert hd["rmse"] > 0 and hd["baseline_interp_rmse"] > 0
    table = pd.read_csv(out / "validate_hd_genes.csv", index_col=0)
    assert {"pcc", "ssim", "rmse", "pcc_baseline_interp"} <= set(table.columns)
    # the summary is the mean of the per-gene table; map and interpolated spots both follow the
    # measured bins (measured: PCC 0.23 and 0.23, SSIM 0.43 and 0.50)
    for key, col in (("pcc_mean", "pcc"), ("ssim_mean", "ssim"),
                     ("baseline_interp_pcc_mean", "pcc_baseline_interp")):
        assert hd[key] == pytest.approx(table[col].mean(), rel=1e-6), key
        assert hd[key] > 0.1, key
    assert len(table) == summary["n_genes"]
    assert "Visium HD check" in capsys.readouterr().out


def test_validate_hd_api_scores(hd_outs, tmp_path):
    """The map is scored on map pixels that fall on measured bins, never outside them."""
    from napari_trihrge.tl import RunConfig, enhance
    from napari_trihrge.tl.hd_validation import measured_on_map, score_against_bins

    bins = io.read(hd_outs, bin_size_um=16)
    pseudo = pseudo_visium(bins)
    cfg = RunConfig(n_top_genes=24, model=TINY_MODEL, train=TINY_TRAIN)
    result = enhance(pseudo, factor=2, stride_um=16.0, config=cfg)
    scores, table = score_against_bins(bins, result)
    truth = measured_truth(bins, list(result.maps.gene_names))
    on_bins = measured_on_map(truth, result.maps)
    assert scores["n_pixels_scored"] == int((result.maps.mask & on_bins).sum())
    assert scores["n_pixels_scored"] <= bins.n_obs
    # the scores are the means of the per-gene table, and the map follows the measured bins
    # (measured: PCC 0.30, interpolated spots 0.33)
    for key, col in (("pcc_mean", "pcc"), ("rmse", "rmse"),
                     ("baseline_interp_pcc_mean", "pcc_baseline_interp")):
        assert scores[key] == pytest.approx(table[col].mean(), rel=1e-9), key
    assert scores["pcc_mean"] > 0.1 and scores["baseline_interp_pcc_mean"] > 0.1
    assert set(table.index) == set(result.maps.gene_names)
