"""The synthetic sample: data model, determinism, counts and the information it carries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_trihrge.datasets import (
    DOMAIN_NAMES,
    IMMUNE,
    SPARSE_FRACTION,
    load_sample,
    synthetic_sample,
    truth_at,
    truth_in_spots,
    truth_map,
    truth_nuclei,
)
from napari_trihrge.errors import TrihrgeInputError
from napari_trihrge.geometry import detect_lattice, xy_px_to_rc_um


@pytest.fixture(scope="module")
def sample():
    return synthetic_sample(0)


def _hematoxylin_per_spot(adata) -> np.ndarray:
    """A simple image statistic: mean hematoxylin density in each spot disk."""
    from skimage.color import rgb2hed

    img = adata.uns["spatial"]["synthetic"]["images"]["hires"]
    hem = rgb2hed(img)[..., 0]
    um = adata.uns["trihrge"]["um_per_px"]
    rc = xy_px_to_rc_um(adata.obsm["spatial"], um) / um
    r = int(27.5 / um)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = yy**2 + xx**2 <= r * r
    return np.array([hem[int(y) - r:int(y) + r + 1, int(x) - r:int(x) + r + 1][disk].mean()
                     for y, x in np.rint(rc)])


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def test_data_model(sample):
    a = sample
    assert a.n_vars == 300 and a.n_obs > 250
    assert a.X.dtype == np.float32 and np.all(a.X.data == np.round(a.X.data))
    assert a.obs_names.is_unique and a.obs_names[0].endswith("-1") and len(a.obs_names[0]) == 18
    assert set(a.var["gene_class"]) == {"marker", "density", "gradient", "noise", "sparse"}
    for name in ("EPCAM", "ERBB2", "PTPRC", "CD3E", "COL1A1", "KRT8", "DENSITY_1", "GRADIENT_1",
                 "NOISE_7"):
        assert name in a.var_names
    lib = a.uns["spatial"]["synthetic"]
    img = lib["images"]["hires"]
    assert img.shape == (2400, 2400, 3) and img.dtype == np.uint8
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == 1.0 and sf["spot_diameter_fullres"] == pytest.approx(55.0)
    low = lib["images"]["lowres"]
    assert low.shape[1] == round(2400 * sf["tissue_lowres_scalef"]) and 500 <= low.shape[1] <= 700
    meta = a.uns["trihrge"]
    assert meta["platform"] == "visium" and meta["um_per_px"] == 1.0
    assert meta["spot_diameter_um"] == 55.0 and "seed=0" in meta["source"]
    t = a.uns["truth"]
    assert t["expression_8um"].shape == (300, 300, 300) and t["expression_8um"].dtype == np.float32
    assert t["stride_um"] == 8.0 and list(t["origin_rc_um"]) == [4.0, 4.0]
    assert t["domain_8um"].dtype == np.int8 and t["tissue_8um"].dtype == bool
    assert list(t["domain_names"]) == list(DOMAIN_NAMES)
    assert set(a.obs["domain"].cat.categories) == set(DOMAIN_NAMES)


def test_visium_lattice_and_spots_under_tissue(sample):
    rc = xy_px_to_rc_um(sample.obsm["spatial"], 1.0)
    lat = detect_lattice(rc)
    assert lat.kind == "hex" and lat.spacing_um == pytest.approx(100.0, abs=0.5)
    t = sample.uns["truth"]
    ij = np.rint((rc - 4.0) / 8.0).astype(int)
    assert t["tissue_8um"][ij[:, 0], ij[:, 1]].mean() > 0.9
    assert (sample.obs["tissue_fraction"] >= 0.5).all()


def test_deterministic_and_seed_dependent():
    kw = dict(size_um=(800, 900), n_genes=12)
    a, b, c = synthetic_sample(5, **kw), synthetic_sample(5, **kw), synthetic_sample(6, **kw)
    img = lambda x: x.uns["spatial"]["synthetic"]["images"]["hires"]  # noqa: E731
    assert np.array_equal(img(a), img(b))
    assert np.array_equal(a.X.toarray(), b.X.toarray())
    assert np.array_equal(a.uns["truth"]["expression_8um"], b.uns["truth"]["expression_8um"])
    assert list(a.obs_names) == list(b.obs_names)
    assert not np.array_equal(img(a), img(c))
    assert img(a).shape == (800, 900, 3)


def test_pixel_size_is_respected():
    a = synthetic_sample(1, size_um=(800, 1000), n_genes=6, um_per_px=2.0)
    assert a.uns["spatial"]["synthetic"]["images"]["hires"].shape == (400, 500, 3)
    assert a.uns["spatial"]["synthetic"]["scalefactors"]["spot_diameter_fullres"] == 27.5
    rc = xy_px_to_rc_um(a.obsm["spatial"], 2.0)
    assert detect_lattice(rc).spacing_um == pytest.approx(100.0, abs=0.5)


def test_depth_and_counts_follow_truth(sample):
    x = sample.X.toarray()
    assert x.sum(1).mean() == pytest.approx(3000, rel=0.05)
    rc = xy_px_to_rc_um(sample.obsm["spatial"], 1.0)
    mu = truth_in_spots(sample, rc)
    assert mu.sum(1).mean() == pytest.approx(3000, rel=1e-3)  # Poisson means, before noise
    assert _corr(mu.ravel(), x.ravel()) > 0.95


def test_sparse_genes_are_detected_in_a_few_percent_of_spots(sample):
    """Real Visium depth: on DLPFC 151673 half of the 1000 HVGs are detected in under 5 % of
    the spots; the sparse class brings that into the synthetic sample."""
    x = sample.X.toarray()
    sparse = (sample.var["gene_class"] == "sparse").to_numpy()
    assert sparse.mean() == pytest.approx(SPARSE_FRACTION, abs=0.01)
    detected = (x > 0).mean(axis=0)
    assert 0.015 < np.median(detected[sparse]) < 0.06
    assert np.quantile(detected[sparse], 0.9) < 0.2
    assert (detected < 0.1).mean() > 0.5  # most genes of the sample
    assert detected[~sparse].min() > 0.5  # the other classes stay well expressed
    assert x[:, sparse].sum() / x.sum() < 0.01  # and keep almost all the UMIs
    # each sparse gene follows the pattern of its target, e.g. the immune markers
    rc = xy_px_to_rc_um(sample.obsm["spatial"], 1.0)
    mu = truth_in_spots(sample, rc)
    immune = np.flatnonzero(sample.var["target"].to_numpy() == "marker:immune")
    frac = sample.obsm["domain_fractions"][:, IMMUNE]
    assert len(immune) > 5
    assert min(_corr(frac, mu[:, j]) for j in immune) > 0.95  # the expected counts
    assert np.median([_corr(frac, x[:, j]) for j in immune]) > 0.2  # what the spots measured


def test_sparse_fraction_zero_leaves_only_the_other_classes():
    a = synthetic_sample(3, size_um=(600, 700), n_genes=20, sparse_fraction=0.0)
    b = synthetic_sample(3, size_um=(600, 700), n_genes=20)
    assert "sparse" not in set(a.var["gene_class"])
    assert (b.var["gene_class"] == "sparse").sum() == 12
    with pytest.raises(TrihrgeInputError, match="sparse_fraction"):
        synthetic_sample(0, sparse_fraction=1.0)


def test_image_informs_markers_and_density_but_not_gradient_or_noise(sample):
    hem = _hematoxylin_per_spot(sample)
    x = sample.X.toarray()
    cls = sample.var["gene_class"].to_numpy()
    dens = np.flatnonzero(cls == "density")
    top = dens[np.argmax(x[:, dens].mean(0))]
    assert _corr(hem, x[:, top]) > 0.5
    noise = np.flatnonzero(cls == "noise")
    assert abs(_corr(hem, x[:, noise[np.argmax(x[:, noise].mean(0))]])) < 0.2
    assert np.median([abs(_corr(hem, x[:, j])) for j in noise]) < 0.1
    grad = np.flatnonzero(cls == "gradient")
    assert np.median([abs(_corr(hem, x[:, j])) for j in grad]) < 0.25
    # gradients are smooth across neighbouring spots, noise genes are not
    rc = xy_px_to_rc_um(sample.obsm["spatial"], 1.0)
    pairs = cKDTree(rc).query_pairs(105.0, output_type="ndarray")
    nb = lambda j: _corr(x[pairs[:, 0], j], x[pairs[:, 1], j])  # noqa: E731
    assert np.median([nb(j) for j in grad]) > 0.4
    assert abs(np.median([nb(j) for j in noise])) < 0.1
    # markers: PTPRC is high where the spots are immune-rich
    frac_immune = sample.obsm["domain_fractions"][:, IMMUNE]
    assert _corr(frac_immune, x[:, sample.var_names.get_loc("PTPRC")]) > 0.6


def test_domains_are_visually_distinct_and_include_sub_spot_structures(sample):
    img = sample.uns["spatial"]["synthetic"]["images"]["hires"].astype(float)
    t = sample.uns["truth"]
    dom = np.repeat(np.repeat(t["domain_8um"], 8, 0), 8, 1)
    mean = {d: img[dom == d].mean(0) for d in range(-1, len(DOMAIN_NAMES))}
    assert mean[-1].min() > 225  # white glass
    bright = {d: m.mean() for d, m in mean.items()}
    assert bright[IMMUNE] < bright[0] and bright[1] < bright[0]  # nuclei-rich darker than stroma
    assert np.linalg.norm(mean[1] - mean[0]) > 15
    # the immune band and aggregates are mostly thinner than a spot
    immune = t["domain_8um"] == IMMUNE
    depth_um = ndi.distance_transform_edt(immune)[immune] * 8.0
    assert immune.sum() > 100 and np.median(depth_um) < 27.5


def test_truth_lookup(sample):
    expr, stride, origin = truth_map(sample)
    assert stride == 8.0 and np.allclose(origin, [4.0, 4.0])
    pts = np.array([[4.0 + 8 * 120, 4.0 + 8 * 140], [4.0 + 8 * 150, 4.0 + 8 * 151]])
    exact = expr[:, [120, 150], [140, 151]].T
    assert np.allclose(truth_at(sample, pts), exact)
    assert np.allclose(truth_at(sample, pts + 3.0, method="nearest"), exact)
    mid = truth_at(sample, pts[:1] + [0.0, 4.0])
    assert np.allclose(mid, 0.5 * (expr[:, 120, 140] + expr[:, 120, 141]), rtol=1e-5)
    sub = sample[:, ["PTPRC", "NOISE_3"]]
    assert np.allclose(truth_at(sub, pts), exact[:, [sample.var_names.get_loc("PTPRC"),
                                                     sample.var_names.get_loc("NOISE_3")]])
    assert truth_map(sub)[0].shape == (2, 300, 300)


def test_h5ad_roundtrip(sample, tmp_path):
    import anndata as ad

    path = tmp_path / "synthetic.h5ad"
    sample.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert np.array_equal(back.uns["truth"]["expression_8um"],
                          sample.uns["truth"]["expression_8um"])
    assert np.array_equal(back.uns["spatial"]["synthetic"]["images"]["hires"],
                          sample.uns["spatial"]["synthetic"]["images"]["hires"])
    assert np.allclose(truth_at(back, [[100.0, 200.0]]), truth_at(sample, [[100.0, 200.0]]))


def test_errors():
    with pytest.raises(TrihrgeInputError):
        load_sample("nonexistent")
    with pytest.raises(TrihrgeInputError):
        synthetic_sample(0, n_genes=3)
    with pytest.raises(TrihrgeInputError):
        synthetic_sample(0, um_per_px=100.0)
    import anndata as ad

    with pytest.raises(TrihrgeInputError):
        truth_at(ad.AnnData(np.zeros((2, 2), dtype=np.float32)), [[0.0, 0.0]])


def test_load_sample_small():
    a = load_sample("synthetic", seed=2, size_um=(600, 600), n_genes=4)
    assert list(a.var["gene_class"]) == ["marker", "density", "gradient", "noise"]
    assert a.n_obs > 5


def test_truth_nuclei_lie_on_the_drawn_hematoxylin():
    from napari_trihrge.nuclei import hematoxylin

    sample = synthetic_sample(seed=2, size_um=(500.0, 500.0), n_genes=6)
    labels = truth_nuclei(sample)
    image = sample.uns["spatial"]["synthetic"]["images"]["hires"]
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32
    n_drawn = len(sample.uns["truth"]["nuclei"]["rc_um"])
    present = np.unique(labels[labels > 0])
    assert 0.95 * n_drawn <= len(present) <= n_drawn  # a few hidden under their neighbours
    od = hematoxylin(image)
    assert np.median(od[labels > 0]) > 3 * np.median(od[labels == 0])
    # label k + 1 is nucleus k: its pixels surround the drawn centre
    k = int(present[len(present) // 2])
    rr, cc = np.nonzero(labels == k)
    centre = sample.uns["truth"]["nuclei"]["rc_um"][k - 1] / sample.uns["trihrge"]["um_per_px"]
    assert np.hypot(rr.mean() - centre[0], cc.mean() - centre[1]) < 1.5
