"""h5ad reader: scanpy/squidpy convention, our own outputs, overrides and bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from napari_trihrge import io
from napari_trihrge.errors import TrihrgeInputError
from sample_folders import make_visium_folder


@pytest.fixture
def visium(tmp_path):
    return io.read_visium(make_visium_folder(tmp_path / "src"))


def _scanpy_style(adata: ad.AnnData) -> ad.AnnData:
    """As scanpy.read_visium leaves it: no uns['trihrge'], float images in [0, 1]."""
    out = adata.copy()
    del out.uns["trihrge"]
    for lib in out.uns["spatial"].values():
        lib["images"] = {k: v.astype(np.float32) / 255 for k, v in lib["images"].items()}
    return out


def test_scanpy_style_guesses_visium(tmp_path, visium):
    path = tmp_path / "s.h5ad"
    _scanpy_style(visium).write_h5ad(path)
    adata = io.read(path)
    info = adata.uns["trihrge"]
    assert info["platform"] == "visium" and info["library_id"] == "sample1"
    assert info["um_per_px"] == pytest.approx(0.55, rel=2e-3)
    assert info["um_per_px_source"] == "lattice"  # obs array_row / array_col
    no_array = _scanpy_style(visium)
    no_array.obs = no_array.obs.drop(columns=["array_row", "array_col"])
    no_array.write_h5ad(tmp_path / "no_array.h5ad")
    fallback = io.read(tmp_path / "no_array.h5ad").uns["trihrge"]
    assert fallback["um_per_px_source"] == "spot_diameter"
    assert fallback["um_per_px"] == pytest.approx(0.55)
    assert info["sample"] == "s" and info["source"] == str(path.resolve())
    img = io.get_image(adata)
    assert img.array.dtype == np.uint8
    hires = visium.uns["spatial"]["sample1"]["images"]["hires"]
    assert np.abs(img.array.astype(int) - hires).max() <= 1
    np.testing.assert_array_equal(adata.obsm["spatial"], visium.obsm["spatial"])


def test_own_output_is_trusted_and_overrides_apply(tmp_path, visium):
    visium.uns["trihrge"]["um_per_px"] = 0.6
    visium.uns["trihrge"]["um_per_px_source"] = "given"
    path = io.write_h5ad_atomic(visium, tmp_path / "own.h5ad")
    adata = io.read_h5ad(path)
    assert adata.uns["trihrge"]["um_per_px"] == 0.6  # not recomputed from the spot diameter
    assert adata.uns["trihrge"]["source"] == visium.uns["trihrge"]["source"]
    with pytest.warns(UserWarning, match="the given pixel size gives 0.7 um/px but the spot lattice"):
        again = io.read_h5ad(path, um_per_px=0.7)
    assert again.uns["trihrge"]["um_per_px"] == 0.7
    assert again.uns["trihrge"]["um_per_px_source"] == "given"
    st = io.read_h5ad(path, platform="st", um_per_px=0.7)
    assert st.uns["trihrge"]["platform"] == "st" and st.uns["trihrge"]["spot_diameter_um"] == 100


def test_no_scalefactors_needs_platform_then_measures_spacing(tmp_path, visium):
    bare = ad.AnnData(X=visium.X.copy(), obs=visium.obs[[]].copy(), var=visium.var[[]].copy())
    bare.obsm["spatial"] = visium.obsm["spatial"].astype(np.int64)
    path = tmp_path / "bare.h5ad"
    bare.write_h5ad(path)
    with pytest.raises(TrihrgeInputError, match="does not say which platform"):
        io.read_h5ad(path)
    adata = io.read_h5ad(path, platform="visium")
    # spots 181.8 px apart on the synthetic lattice = 100 um -> 0.55 um/px
    assert adata.uns["trihrge"]["um_per_px"] == pytest.approx(0.55, rel=0.01)
    assert adata.uns["trihrge"]["um_per_px_source"] == "spot_spacing"
    assert adata.obsm["spatial"].dtype == np.float64
    with pytest.raises(TrihrgeInputError, match="no H&E image"):
        io.get_image(adata)


def test_bad_inputs(tmp_path, visium):
    with pytest.raises(TrihrgeInputError, match="not found"):
        io.read_h5ad(tmp_path / "missing.h5ad")
    (tmp_path / "junk.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(TrihrgeInputError, match="cannot read junk.h5ad"):
        io.read_h5ad(tmp_path / "junk.h5ad")
    nosp = ad.AnnData(X=sp.csr_matrix(np.ones((3, 2), np.float32)))
    nosp.write_h5ad(tmp_path / "nosp.h5ad")
    with pytest.raises(TrihrgeInputError, match=r"obsm\['spatial'\]"):
        io.read_h5ad(tmp_path / "nosp.h5ad")
    two = _scanpy_style(visium)
    two.uns["spatial"]["other"] = two.uns["spatial"]["sample1"]
    two.write_h5ad(tmp_path / "two.h5ad")
    with pytest.raises(TrihrgeInputError, match="several libraries"):
        io.read_h5ad(tmp_path / "two.h5ad")
    assert io.read_h5ad(tmp_path / "two.h5ad", library_id="other").uns["trihrge"][
        "library_id"] == "other"
    with pytest.raises(TrihrgeInputError, match="library 'x' not found"):
        io.read_h5ad(tmp_path / "two.h5ad", library_id="x")
    zero = _scanpy_style(visium)
    zero.X = sp.csr_matrix(zero.shape, dtype=np.float32)
    zero.write_h5ad(tmp_path / "zero.h5ad")
    with pytest.raises(TrihrgeInputError, match="all zero"):
        io.read_h5ad(tmp_path / "zero.h5ad")
    far = _scanpy_style(visium)
    far.obsm["spatial"] = far.obsm["spatial"] * 5
    far.write_h5ad(tmp_path / "far.h5ad")
    with (pytest.raises(TrihrgeInputError, match="outside the hires image"),
          pytest.warns(UserWarning, match="far.h5ad: the spot diameter .* spot lattice")):
        io.read_h5ad(tmp_path / "far.h5ad")
    with pytest.raises(TrihrgeInputError, match="implausible"):
        io.read_h5ad(tmp_path / "far.h5ad", um_per_px=0.001)


def test_log_normalised_x_uses_the_raw_layer_or_fails(tmp_path, visium):
    import scanpy as sc

    norm = visium.copy()
    norm.layers["counts"] = norm.X.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    norm.write_h5ad(tmp_path / "with_counts.h5ad")
    with pytest.warns(UserWarning, match="using layers\\['counts'\\]"):
        adata = io.read_h5ad(tmp_path / "with_counts.h5ad")
    assert np.allclose(adata.X.toarray(), visium.X.toarray())
    del norm.layers["counts"]
    norm.write_h5ad(tmp_path / "log.h5ad")
    with pytest.raises(TrihrgeInputError, match="not raw counts.*not whole numbers"):
        io.read_h5ad(tmp_path / "log.h5ad")
