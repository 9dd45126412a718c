"""layers.py and regions.py: napari layer data and region statistics, without Qt."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_trihrge import regions as R
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.napari import layers as L


def small_sample(n_side: int = 12, spacing_um: float = 100.0, um_per_px: float = 0.5,
                 with_image: bool = True, seed: int = 0) -> ad.AnnData:
    """A square lattice of spots with counts; gene 'LEFT' high in the left half, 'TOP' high in the
    top half, 'FLAT' constant; an RGB 'hires' image at scalef 0.25."""
    rng = np.random.default_rng(seed)
    r, c = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    rc_um = np.stack([r.ravel(), c.ravel()], 1) * spacing_um + spacing_um
    n = len(rc_um)
    left = (rc_um[:, 1] < (n_side / 2 + 0.5) * spacing_um).astype(float)
    top = (rc_um[:, 0] < (n_side / 2 + 0.5) * spacing_um).astype(float)
    lam = np.stack([5 + 40 * left, 5 + 40 * top, np.full(n, 20.0)], 1)
    counts = rng.poisson(np.concatenate([lam, np.repeat(rng.uniform(10, 30, (1, 5)), n, 0)], 1)).astype(np.float32)
    genes = ["LEFT", "TOP", "FLAT"] + [f"G{i}" for i in range(5)]
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes))
    a.obsm["spatial"] = rc_um[:, ::-1] / um_per_px
    a.uns["trihrge"] = {"library_id": "lib", "sample": "toy", "platform": "generic",
                        "um_per_px": um_per_px, "spot_diameter_um": 55.0}
    if with_image:
        ext_px = int((n_side + 1) * spacing_um / um_per_px)
        scalef = 0.25
        # a textured image: a flat one is blank, which get_image refuses
        img = rng.integers(150, 250, (int(ext_px * scalef), int(ext_px * scalef), 3), np.uint8)
        a.uns["spatial"] = {"lib": {"images": {"hires": img},
                                    "scalefactors": {"tissue_hires_scalef": scalef,
                                                     "spot_diameter_fullres": 55.0 / um_per_px}}}
    return a


@dataclass
class FakeMaps:
    values: np.ndarray
    stride_um: float
    origin_rc_um: np.ndarray
    gene_names: list
    mask: np.ndarray


def col_maps(shape=(60, 70), stride_um=20.0, origin=(10.0, 10.0)) -> FakeMaps:
    """Gene 'COL' = column position in um, 'ROW' = row position in um; left 5 columns no tissue."""
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    row_um = origin[0] + ii * stride_um
    col_um = origin[1] + jj * stride_um
    mask = np.ones(shape, bool)
    mask[:, :5] = False
    vals = np.stack([col_um, row_um]).astype(np.float32)
    vals[:, ~mask] = np.nan
    return FakeMaps(vals, stride_um, np.asarray(origin, float), ["COL", "ROW"], mask)


# ------------------------------------------------------------------------------------------
def test_spots_layer_positions_size_features_and_colour():
    a = small_sample()
    data, kw, kind = L.spots_layer(a, ["LEFT", "TOP"], color_by="LEFT")
    assert kind == "points"
    # row/col micrometres = (y, x) pixels * um_per_px
    np.testing.assert_allclose(data, a.obsm["spatial"][:, ::-1] * 0.5)
    assert kw["size"] == 55.0
    assert list(kw["features"].columns) == ["barcode", "LEFT", "TOP"]
    assert kw["features"]["barcode"].tolist() == list(a.obs_names)
    assert kw["face_color"] == "LEFT" and kw["face_colormap"] == "magma"
    lo, hi = kw["face_contrast_limits"]
    assert lo < hi
    assert kw["metadata"]["adata"] is a
    # counts were log-normalised: LEFT is higher on the left half
    f = kw["features"]
    left = data[:, 1] < 650
    assert f.loc[left, "LEFT"].mean() > f.loc[~left, "LEFT"].mean() + 1.0
    assert f["LEFT"].max() < 10  # log scale, not counts


def test_gene_expression_matches_scanpy_normalisation():
    import scanpy as sc

    a = small_sample()
    ref = a.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    got = L.gene_expression(a, ["TOP", "G2"])
    np.testing.assert_allclose(got.to_numpy(), ref[:, ["TOP", "G2"]].X.toarray(), rtol=1e-5)
    with pytest.raises(TrihrgeInputError, match="NOPE"):
        L.gene_expression(a, ["NOPE"])


def test_log_normalised_input_is_not_renormalised():
    a = small_sample()
    b = a.copy()
    b.X = np.asarray(L.gene_expression(a, list(a.var_names)).to_numpy())
    b.uns["trihrge"] = {**a.uns["trihrge"], "task": "enhance"}
    assert L.is_log_normalised(b) and not L.is_log_normalised(a)
    np.testing.assert_allclose(L.gene_expression(b, ["LEFT"]).to_numpy(),
                               L.gene_expression(a, ["LEFT"]).to_numpy())


def test_default_genes_are_the_variable_ones():
    a = small_sample()
    top = L.most_variable_genes(a, 2)
    assert set(top) == {"LEFT", "TOP"}
    _, kw, _ = L.spots_layer(a, n_default_genes=2)
    assert set(kw["features"].columns) == {"barcode", "LEFT", "TOP"}


def test_image_layer_scale_in_um():
    a = small_sample()
    data, kw, kind = L.image_layer(a)
    assert kind == "image" and kw["rgb"]
    assert kw["scale"] == (2.0, 2.0)  # 0.5 um/px full-res, hires scalef 0.25
    assert data.shape[2] == 3
    assert L.image_layer(small_sample(with_image=False)) is None


def test_large_single_image_becomes_a_pyramid():
    import dask.array as da

    arr = np.random.default_rng(0).integers(0, 255, (5000, 4200, 3), dtype=np.uint8)
    levels = L.rgb_pyramid(arr)
    assert isinstance(levels[0], da.Array) and levels[0].shape == arr.shape
    shapes = [lv.shape[:2] for lv in levels]
    assert shapes[1] == (2500, 2100) and max(shapes[-1]) <= 1024
    assert all(a[0] > b[0] for a, b in zip(shapes, shapes[1:], strict=False))
    np.testing.assert_allclose(np.asarray(levels[1][0, 0]), arr[:2, :2].mean(axis=(0, 1)),
                               atol=1)
    lazy = L.rgb_pyramid(da.from_array(arr, chunks=1000))
    assert all(isinstance(lv, da.Array) for lv in lazy) and len(lazy) == len(levels)
    # a lazy image gets the same (rounded) levels as the same image in memory
    for lv_lazy, lv in zip(lazy[1:], levels[1:], strict=True):
        np.testing.assert_array_equal(np.asarray(lv_lazy), np.asarray(lv))


def test_shared_contrast_limits_robust_and_ordered():
    rng = np.random.default_rng(0)
    x = rng.normal(2, 0.5, 10_000)
    x[:5] = 1e6  # outliers do not stretch the scale
    lo, hi = L.shared_contrast_limits(x, np.array([np.nan, 2.0]))
    assert 0 < lo < 2 < hi < 5
    assert L.shared_contrast_limits(np.zeros(10)) == (0.0, 1.0)
    assert L.shared_contrast_limits() == (0.0, 1.0)
    big = np.arange(1_000_000, dtype=np.float32)
    lo, hi = L.shared_contrast_limits(big)
    assert abs(hi - 995_000) < 5_000


def test_map_layer_registration_with_spots():
    """A map pixel under a spot centre holds the value of the spot's own location."""
    maps = col_maps()
    (data, kw, kind), = L.map_layers(maps, ["COL"])
    assert kind == "image"
    scale, translate = np.asarray(kw["scale"]), np.asarray(kw["translate"])
    spots = np.array([[110.0, 430.0], [510.0, 1010.0], [990.0, 250.0]])
    # napari: world = data_index * scale + translate (pixel centres)
    idx = np.rint((spots - translate) / scale).astype(int)
    np.testing.assert_allclose(maps.values[0][idx[:, 0], idx[:, 1]], spots[:, 1])
    np.testing.assert_allclose(maps.values[1][idx[:, 0], idx[:, 1]], spots[:, 0])


def test_map_layer_outside_tissue_is_transparent():
    maps = col_maps()
    (data, kw, _), = L.map_layers(maps, ["COL"])
    lo, hi = kw["contrast_limits"]
    assert np.isfinite(data).all()
    assert (data[:, :5] < lo).all()  # outside tissue: below the lower limit
    # inside the tissue nothing is transparent, even below the lower limit
    assert (data[:, 5:] > lo).all()
    band_top = lo + (kw["colormap"]["controls"][1]) * (kw["contrast_limits"][1] - lo)
    assert (data[:, 5:] > band_top).all()
    cmap = kw["colormap"]
    assert cmap["colors"][0][3] == 0.0  # the bottom of the colormap is transparent
    assert all(c[3] == 1.0 for c in cmap["colors"][1:])
    assert kw["blending"] in ("translucent", "additive") and 0.5 <= kw["opacity"] < 1


def test_map_and_spot_share_one_scale():
    maps = col_maps()
    spot_vals = {"COL": np.array([5000.0] * 50)}  # spots far above the map range
    (_, kw, _), = L.map_layers(maps, ["COL"], spot_values=spot_vals)
    (_, kw0, _), = L.map_layers(maps, ["COL"])
    assert kw["contrast_limits"][1] > kw0["contrast_limits"][1]
    with pytest.raises(TrihrgeInputError):
        L.map_layers(maps, ["MISSING"])


def test_sample_info_error_is_actionable():
    a = small_sample()
    del a.uns["trihrge"]
    with pytest.raises(TrihrgeInputError, match="um_per_px"):
        L.spots_layer(a, ["LEFT"])


# ------------------------------------------------------------------------------------------
# regions
# ------------------------------------------------------------------------------------------
def test_region_table_on_known_layout():
    a = small_sample()
    measured = R.adata_expression_set(a)
    # region 1: the left half; region 2: a box with no spot centre
    left = np.array([[0, 0], [0, 640], [1400, 640], [1400, 0]], float)
    empty = np.array([[120, 120], [120, 180], [180, 180], [180, 120]], float)
    stats = R.region_statistics([left, empty], measured, top_n=3)
    t = stats.table
    r1 = t[t.region == "region 1"]
    assert r1.iloc[0]["gene"] == "LEFT"  # the biggest difference comes first
    assert r1.iloc[0]["difference"] > 1.0
    assert r1.iloc[0]["measured_inside"] > r1.iloc[0]["measured_outside"]
    assert "TOP" not in r1.head(1)["gene"].tolist()
    assert stats.summary.loc[0, "measured_spots_inside"] == 72
    assert stats.summary.loc[1, "measured_spots_inside"] == 0
    assert any("region 2 contains no spots" in m for m in stats.messages)
    assert (t.region == "region 2").sum() == 0
    # means are the plain means of the log-normalised values
    expr = L.gene_expression(a, ["LEFT"])["LEFT"].to_numpy()
    inside = R.points_in_regions([left], L.spots_rc_um(a))[0]
    np.testing.assert_allclose(r1.iloc[0]["measured_inside"], expr[inside].mean(), rtol=1e-5)
    np.testing.assert_allclose(r1.iloc[0]["measured_outside"], expr[~inside].mean(), rtol=1e-5)


def test_rank_sum_z_matches_the_p_value_and_keeps_ranking_where_p_underflows():
    """z is the tie-corrected normal approximation of U (with the p-value's continuity
    correction): equal to the z of the p-value where that is finite, and still ordered by
    effect where p underflows to 0 (thousands of cells), not capped at one value."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    v = np.round(rng.normal(size=(300, 4)), 1)  # many ties
    inside = np.arange(300) < 40
    v[inside, 0] += 0.5
    v[inside, 1] -= 0.3
    z, p = R.rank_sum_test(v, inside)
    np.testing.assert_allclose(np.abs(z), norm.isf(p / 2), rtol=1e-9)
    assert z[0] > 0 > z[1]
    big = rng.normal(size=(30000, 3))
    inside = np.arange(30000) < 4000
    big[inside, 0] += 3.0
    big[inside, 1] += 2.0
    big[inside, 2] -= 2.5
    z, p = R.rank_sum_test(big, inside)
    assert (p == 0).all()  # beyond double precision
    assert z[0] > z[1] > 40 and z[2] < -40 and abs(z[2]) < z[0]


def test_region_statistics_test_fdr_and_spot_counts():
    from scipy.stats import false_discovery_control, mannwhitneyu

    a = small_sample()
    measured = R.adata_expression_set(a)
    left = np.array([[0, 0], [0, 640], [1400, 640], [1400, 0]], float)
    stats = R.region_statistics([left], measured, top_n=len(measured.genes))
    t = stats.table.set_index("gene")
    # key columns first, so the widget's table shows them without scrolling
    assert list(stats.table.columns[:len(R.KEY_COLUMNS)]) == list(R.KEY_COLUMNS)
    inside = R.points_in_regions([left], measured.points_rc_um)[0]
    x = measured.values.toarray() if hasattr(measured.values, "toarray") else measured.values
    g = measured.genes.index("LEFT")
    x = np.asarray(x, dtype=np.float64)
    direct = mannwhitneyu(x[inside, g], x[~inside, g], method="asymptotic").pvalue
    np.testing.assert_allclose(t.loc["LEFT", "p_value"], direct, rtol=1e-6)
    # FDR: Benjamini-Hochberg over the region's tested genes
    tested = t["p_value"].dropna()
    np.testing.assert_allclose(t.loc[tested.index, "fdr"],
                               false_discovery_control(tested.to_numpy(), method="bh"))
    assert t.loc["LEFT", "fdr"] < 0.01 and t.loc["LEFT", "log2_fold_change"] > 1
    assert t.loc["LEFT", "n_spots_inside"] == inside.sum()
    assert t.loc["LEFT", "n_spots_outside"] == (~inside).sum()
    # log2 fold change on the normalised-count scale, one count as pseudo-count
    m_in, m_out = t.loc["LEFT", "measured_inside"], t.loc["LEFT", "measured_outside"]
    np.testing.assert_allclose(t.loc["LEFT", "log2_fold_change"],
                               np.log2((np.expm1(m_in) + 1) / (np.expm1(m_out) + 1)))


def test_region_with_too_few_spots_says_so():
    a = small_sample()
    measured = R.adata_expression_set(a)
    rc = measured.points_rc_um
    # a small box around two spot centres
    lo, hi = rc[:2].min(axis=0) - 1, rc[:2].max(axis=0) + 1
    inside = R.points_in_regions([np.array([lo, [lo[0], hi[1]], hi, [hi[0], lo[1]]])], rc)[0]
    assert 0 < inside.sum() < R.MIN_SPOTS_FOR_TEST
    box = np.array([lo, [lo[0], hi[1]], hi, [hi[0], lo[1]]])
    stats = R.region_statistics([box], measured)
    assert any("too few measured spots inside" in m for m in stats.messages)
    assert not stats.summary.loc[0, "tested"]
    assert stats.table["fdr"].isna().all() and len(stats.table) > 0  # means, no test


def test_region_with_enhanced_maps_and_ellipse():
    maps = col_maps()
    enhanced = R.maps_expression_set(maps)
    assert len(enhanced.points_rc_um) == maps.mask.sum()
    box = np.array([[0, 900], [0, 1400], [1200, 1400], [1200, 900]], float)
    stats = R.region_statistics([box], None, enhanced, top_n=2)
    row = stats.table.iloc[0]
    assert row["gene"] == "COL" and row["difference"] > 0
    assert "measured_inside" not in stats.table.columns
    # no measured spots (a bare H&E): means only, and the table says why there is no test
    assert not {"p_value", "fdr", "z_score", "n_spots_inside"} & set(stats.table.columns)
    assert stats.table["log2_fold_change_enhanced"].notna().all()
    assert any("No measured spots" in m and "cannot be run" in m for m in stats.messages)
    # ellipse given as a bounding box (napari's representation)
    ell = R.shape_polygon_rc_um(np.array([[0, 0], [0, 10], [20, 10], [20, 0]]), "ellipse")
    assert np.allclose(ell.mean(axis=0), [10, 5], atol=1e-6)
    assert R.shape_polygon_rc_um(np.zeros((2, 2)), "line") is None


def test_region_tests_every_measured_gene_and_marks_the_mapped_ones():
    """With an enhanced set of a few genes, the measured genes without a map are still tested
    (the FDR counts every gene), and ``mapped`` says which genes have enhanced expression."""
    a = small_sample()
    measured = R.adata_expression_set(a)
    mapped = [g for g in measured.genes if g != "LEFT"][:2]
    cols = [measured.genes.index(g) for g in mapped]
    x = measured.values.toarray() if hasattr(measured.values, "toarray") else measured.values
    enhanced = R.ExpressionSet("enhanced", measured.points_rc_um, np.asarray(x)[:, cols], mapped)
    left = np.array([[0, 0], [0, 640], [1400, 640], [1400, 0]], float)
    alone = R.region_statistics([left], measured, top_n=None).table.set_index("gene")
    stats = R.region_statistics([left], measured, enhanced, top_n=None)
    t = stats.table.set_index("gene")
    assert set(t.index) == set(measured.genes)
    assert t["mapped"].to_dict() == {g: g in mapped for g in measured.genes}
    assert list(stats.table.columns[:3]) == ["region", "gene", "mapped"]
    # LEFT has no map: tested on the measured spots exactly as without the enhanced set
    np.testing.assert_allclose(t.loc["LEFT", "fdr"], alone.loc["LEFT", "fdr"])
    assert np.isnan(t.loc["LEFT", "enhanced_inside"])
    np.testing.assert_allclose(t.loc["LEFT", "difference"], alone.loc["LEFT", "difference"])


def test_region_subsampled_maps_stay_bounded():
    maps = col_maps(shape=(200, 200), stride_um=5.0)
    es = R.maps_expression_set(maps, max_values=10_000)
    assert es.values.size <= 12_000
    assert np.isfinite(es.values).all()


def test_region_errors():
    with pytest.raises(TrihrgeInputError):
        R.region_statistics([np.zeros((3, 2))])
    with pytest.raises(TrihrgeInputError, match="no region"):
        R.region_statistics([], R.adata_expression_set(small_sample()))


def test_spread_layer_only_with_an_ensemble():
    from types import SimpleNamespace

    import numpy as np

    from napari_trihrge.napari import layers as L

    mask = np.ones((4, 5), bool)
    mask[0, 0] = False
    values = np.random.default_rng(0).random((2, 4, 5)).astype(np.float32)
    maps = SimpleNamespace(values=values, std=values * 0.1, mask=mask, stride_um=8.0,
                           origin_rc_um=np.array([4.0, 4.0]), gene_names=["A", "B"])
    data, kwargs, kind = L.spread_layer(maps, "B")
    assert kind == "image" and kwargs["metadata"]["trihrge"]["kind"] == "spread"
    assert kwargs["scale"] == (8.0, 8.0) and kwargs["visible"] is False
    lo, hi = kwargs["contrast_limits"]
    assert data[0, 0] < lo  # outside the tissue: below the scale, drawn transparent
    assert hi == pytest.approx(np.percentile(values[1][mask] * 0.1, 99), rel=1e-5)
    assert L.spread_layer(SimpleNamespace(**{**vars(maps), "std": None}), "B") is None


def test_trust_of_a_prediction_on_a_slide_without_spots():
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({"is_measured": [False, False]}, index=["v0", "v1"])
    bare = ad.AnnData(X=np.zeros((2, 1), np.float32), obs=obs)
    bare.uns["trihrge"] = {"task": "predict"}
    assert not L.measured_here(bare)
    sequenced = bare.copy()
    sequenced.obs["is_measured"] = [True, False]
    assert L.measured_here(sequenced)
    enhanced = bare.copy()
    enhanced.uns["trihrge"] = {"task": "enhance"}
    assert L.measured_here(enhanced)

    trust = {"pcc": 0.2, "pcc_baseline_knn": 0.5, "pcc_gain": -0.3,
             "beats_interpolation": False}
    assert L.trust_warns(trust) and "NOT better" in L.trust_text(trust)
    elsewhere = {**trust, "measured_here": False}  # nothing to interpolate on this slide
    text = L.trust_text(elsewhere)
    # below interpolation on the training sections: orange on a bare slide too
    assert "unknown on this slide" in text and "0.20" in text and "NOT better" in text
    assert L.trust_warns(elsewhere)
    better = {**elsewhere, "pcc": 0.6, "pcc_gain": 0.1, "beats_interpolation": True}
    assert not L.trust_warns(better) and "NOT" not in L.trust_text(better)
    assert L.trust_warns({**elsewhere, "pcc": -0.1})
    assert "no signal" in L.trust_text({**elsewhere, "pcc": -0.1})


def test_cells_open_as_labels_in_micrometres_coloured_by_gene(tmp_path):
    from napari.layers import Labels

    from napari_trihrge.datasets import synthetic_sample
    from napari_trihrge.napari._reader import get_reader
    from napari_trihrge.workflows.cells_run import run_cells

    adata = synthetic_sample(seed=3, size_um=(500.0, 500.0), n_genes=6, um_per_px=0.5)
    lab = np.zeros((1000, 1000), dtype=np.int32)
    lab[100:120, 100:120] = 1
    lab[600:640, 300:320] = 2
    run_cells(adata, tmp_path / "cells", cell_labels=lab)
    layers = get_reader(str(tmp_path / "cells"))(str(tmp_path / "cells"))
    data, kwargs, kind = layers[0]
    assert kind == "labels" and kwargs["scale"] == (0.5, 0.5)
    layer = Labels(data, **kwargs)
    status = layer.get_status((305.0, 155.0), world=True)["value"]  # row/col um of cell 2
    assert "cell_id: 2" in status and "area_um2: 200" in status
    # colour by a gene: only the colours change
    cells = ad.AnnData(X=np.array([[0.0, 2.0, 1.0], [5.0, 1.0, 1.0]], dtype=np.float32),
                       obs=kwargs["metadata"]["cells"].obs, var=pd.DataFrame(index=["G", "H", "K"]))
    assert L.cell_top_genes(cells, n=1).tolist() == ["H", "G"]
    assert "top_genes: G" in Labels(data, **L.cells_layer(data, 0.5, cells)[1]).get_status(
        (305.0, 155.0), world=True)["value"]
    colors = L.cell_gene_colors(cells, "G", (0.0, 5.0))
    assert colors[1][:3].sum() < colors[2][:3].sum()  # magma: low dark, high bright
    assert colors[0][3] == 0 and colors[None][3] == 0
    with pytest.raises(TrihrgeInputError, match="not predicted"):
        L.cell_gene_colors(cells, "NOPE")


def test_cells_as_region_points_leave_out_the_cells_without_values():
    cells = ad.AnnData(np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 0.0]], np.float32),
                       obs=pd.DataFrame({"row_um": [10.0, 20.0, 30.0],
                                         "col_um": [5.0, 6.0, 7.0]}, index=["1", "2", "3"]))
    cells.var_names = ["A", "B"]
    points = R.cells_expression_set(cells)
    np.testing.assert_array_equal(points.points_rc_um, [[10.0, 5.0], [30.0, 7.0]])
    np.testing.assert_array_equal(points.values, [[1.0, 2.0], [3.0, 0.0]])
    assert points.genes == ["A", "B"] and points.name == "cells"
