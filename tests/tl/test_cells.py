"""tl.cells: nuclei -> cells -> per-cell expression averaged from the maps; bring your own labels."""

import numpy as np
import pytest

import napari_trihrge as th
from conftest import truth_dense_maps
from napari_trihrge.errors import TrihrgeInputError


@pytest.fixture(scope="module")
def small_sample():
    return th.datasets.synthetic_sample(seed=1, size_um=(600.0, 600.0), n_genes=6)


def test_cells_of_the_synthetic_sample(small_sample):
    adata = small_sample.copy()
    maps = truth_dense_maps(adata)
    res = th.tl.cells(adata, maps=maps, expand_um=3.0)
    cells = res.cells
    n = res.metrics["n_cells"]
    assert n == cells.n_obs == res.cell_labels.max() == res.nuclei.max() > 100
    assert list(cells.var_names) == list(adata.var_names)
    assert np.isfinite(cells.X).all()
    # cells are the nuclei grown: every cell holds its nucleus and is larger
    assert (cells.obs["area_um2"] >= cells.obs["nucleus_area_um2"]).all()
    assert (cells.obs["nucleus_area_um2"] > 0).all()
    # centroid in um and in full-resolution px agree (1 um/px), obsm['spatial'] is x/y px
    np.testing.assert_allclose(cells.obsm["spatial"][:, 0], cells.obs["col_um"])
    # a cell's value is the map's mean over the cell: check one cell by hand
    k = 10
    rr, cc = np.nonzero(res.cell_labels == k)
    ij = np.rint((np.stack([rr, cc], 1) * 1.0 - maps.origin_rc_um) / maps.stride_um).astype(int)
    expected = maps.values[0][ij[:, 0], ij[:, 1]].mean()
    assert cells.X[k - 1, 0] == pytest.approx(expected, rel=1e-5)
    # cells inside a measured spot name it
    inside = cells.obs["spot"] != ""
    assert 0.1 < inside.mean() < 0.9
    assert set(cells.obs.loc[inside, "spot"]) <= set(adata.obs_names)
    assert adata.uns["trihrge_cells"]["metrics"]["n_cells"] == n
    # the cells of a measured spot agree with it on average (the truth map vs noisy spots)
    assert res.metrics["cells_vs_spot_n_spots"] >= 3
    assert res.metrics["cells_vs_spot_pcc_mean"] > 0.2
    assert res.metrics["cells_per_mm2_tissue"] > 0


def test_cells_without_maps_have_no_genes(small_sample):
    res = th.tl.cells(small_sample.copy())
    assert res.cells.n_vars == 0 and res.cells.n_obs > 100


def test_bring_your_own_labels(small_sample, tmp_path):
    adata = small_sample.copy()
    shape = th.io.get_image(adata).shape_px
    lab = np.zeros(shape, dtype=np.int32)
    lab[100:110, 100:110] = 5  # labels need not be consecutive
    lab[300:312, 200:210] = 9
    np.save(tmp_path / "nuclei.npy", lab)
    res = th.tl.cells(adata, nuclei_labels=tmp_path / "nuclei.npy", expand_um=2.0)
    assert res.cells.n_obs == 2 and res.metrics["segmentation"] == "given"
    assert res.cells.obs["nucleus_area_um2"].tolist() == [100.0, 120.0]
    assert (res.cells.obs["area_um2"] > res.cells.obs["nucleus_area_um2"]).all()
    # cells alone: used as they are
    res = th.tl.cells(adata, cell_labels=lab)
    assert res.cells.obs["area_um2"].tolist() == [100.0, 120.0]


def test_bad_segmentations_are_refused(small_sample, tmp_path):
    adata = small_sample.copy()
    with pytest.raises(TrihrgeInputError, match=r"599 x 600 px but the H&E is 600 x 600 px"):
        th.tl.cells(adata, nuclei_labels=np.zeros((599, 600), dtype=np.int32))
    with pytest.raises(TrihrgeInputError, match="no labels"):
        th.tl.cells(adata, nuclei_labels=np.zeros((600, 600), dtype=np.int32))
    with pytest.raises(TrihrgeInputError, match="not found"):
        th.tl.cells(adata, nuclei_labels=tmp_path / "missing.npy")
    with pytest.raises(TrihrgeInputError, match="expansion"):
        th.tl.cells(adata, expand_um=-2)
    coarse = th.datasets.synthetic_sample(seed=1, size_um=(600.0, 600.0), n_genes=6,
                                          um_per_px=3.0)
    with pytest.raises(TrihrgeInputError, match="too coarse to see nuclei"):
        th.tl.cells(coarse)


def test_tissue_without_nuclei_says_so(small_sample):
    adata = small_sample.copy()
    lib = adata.uns["spatial"]["synthetic"]
    h, w = lib["images"]["hires"].shape[:2]
    waves = 25 * np.sin(np.arange(w) / 15.0)[None, :, None] * np.ones((h, 1, 1))
    pink = np.array([225, 160, 195]) + waves * np.array([0.3, 1.0, 0.6])
    lib["images"] = {"hires": np.clip(pink, 0, 255).astype(np.uint8)}  # eosin only
    with pytest.raises(TrihrgeInputError, match="no nuclei"):
        th.tl.cells(adata)
    assert "trihrge_cells" not in adata.uns  # nothing half-done recorded


def test_cell_spot_consistency_is_one_when_cells_average_to_their_spot(small_sample):
    import anndata as ad
    import pandas as pd

    from napari_trihrge.pp import gene_expression

    adata = small_sample
    genes = list(adata.var_names[:3])
    measured = gene_expression(adata, genes)
    spots = list(adata.obs_names[:6])
    rows, names = [], []
    for spot in spots:  # three cells per spot, spread around the spot's value
        for d in (-0.5, 0.0, 0.5):
            rows.append(measured.loc[spot].to_numpy() + d)
            names.append(spot)
    cells = ad.AnnData(X=np.asarray(rows, dtype=np.float32),
                       obs=pd.DataFrame({"spot": names}, index=[f"c{i}" for i in range(len(names))]),
                       var=pd.DataFrame(index=genes))
    agree = th.tl.cell_spot_consistency(adata, cells)
    assert agree["n_spots"] == 6 and agree["pcc_mean"] == pytest.approx(1.0)
    cells.obs["spot"] = ""  # no cell in a spot: nothing to compare
    assert np.isnan(th.tl.cell_spot_consistency(adata, cells)["pcc_mean"])


def test_labels_written_to_disk_give_the_same_cells(small_sample, tmp_path):
    """labels_store: whole-slide labels made tile by tile in a zarr folder, not in memory;
    the same labels and cells as in memory (tiles smaller than the image, so stitched)."""
    import zarr

    maps = truth_dense_maps(small_sample)
    in_memory = th.tl.cells(small_sample.copy(), tile_um=200.0, maps=maps)
    on_disk = th.tl.cells(small_sample.copy(), tile_um=200.0, maps=maps,
                          labels_store=tmp_path / "lab.zarr")
    assert isinstance(on_disk.cell_labels, zarr.Array) and isinstance(on_disk.nuclei, zarr.Array)
    np.testing.assert_array_equal(np.asarray(on_disk.nuclei[:]), in_memory.nuclei)
    np.testing.assert_array_equal(np.asarray(on_disk.cell_labels[:]), in_memory.cell_labels)
    np.testing.assert_allclose(on_disk.cells.obs["area_um2"], in_memory.cells.obs["area_um2"])
    np.testing.assert_allclose(on_disk.cells.X, in_memory.cells.X, rtol=1e-6)
    assert in_memory.cells.n_vars == len(maps.gene_names)
    with pytest.raises(TrihrgeInputError, match="already exists"):
        th.tl.cells(small_sample.copy(), labels_store=tmp_path / "lab.zarr")


def test_cells_of_a_bare_image_say_there_is_no_spot_constraint(small_sample, tmp_path):
    """A slide never sequenced, given as its image path (as tl.predict takes it)."""
    from PIL import Image

    png = tmp_path / "slide.png"
    Image.fromarray(np.asarray(th.io.get_image(small_sample).array)).save(png)
    with pytest.raises(TrihrgeInputError, match="pixel size"):
        th.tl.cells(png)
    res = th.tl.cells(png, um_per_px=1.0, maps=truth_dense_maps(small_sample))
    with_spots = th.tl.cells(small_sample.copy())
    assert res.metrics["n_cells"] == with_spots.metrics["n_cells"]
    assert (res.cells.obs["spot"] == "").all() and not res.metrics["spot_constraint"]
    info = res.cells.uns["trihrge"]["cells"]
    assert info["spot_constraint"] is False and "no measured spots" in info["note"]
    assert "cells_vs_spot_pcc_mean" not in res.metrics
    assert with_spots.cells.uns["trihrge"]["cells"]["spot_constraint"] is True
