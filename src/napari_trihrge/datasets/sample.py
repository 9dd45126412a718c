"""The synthetic sample: layout, image, truth and spots drawn from one seed into an AnnData."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import sparse

from ..blocks import block_mean
from ..errors import TrihrgeInputError
from ..geometry import rc_um_to_xy_px, validate_um_per_px
from .layout import BACKGROUND, DOMAIN_NAMES, GLAND, _axis_um, _make_layout, _noise
from .nuclei import _draw_nuclei
from .rendering import _render_image
from .spots import SPOT_DIAMETER_UM, _barcodes, _hex_spots, _spot_weights
from .truth import (
    _CLASS_SHARE,
    _SPARSE_MEAN_COUNTS,
    SPARSE_FRACTION,
    TRUTH_STRIDE_UM,
    _gene_table,
    _n_sparse_genes,
    _scale_to_unit,
)

LIBRARY_ID = "synthetic"


def synthetic_sample(seed: int = 0, *, size_um: tuple[float, float] = (2400.0, 2400.0),
                     n_genes: int = 300, um_per_px: float = 1.0, depth: float = 3000.0,
                     sparse_fraction: float = SPARSE_FRACTION):
    """Generate a synthetic Visium-like sample with known truth (deterministic for a ``seed``).

    Parameters
    ----------
    seed
        Random seed; the same seed gives identical arrays.
    size_um
        (height, width) of the image in micrometres.
    n_genes
        Number of genes (at least 4: markers, density, gradient and noise genes), sparse genes
        included.
    um_per_px
        Pixel size of the H&E image (1.0 -> 2400 x 2400 px by default).
    depth
        Mean total UMIs per spot.
    sparse_fraction
        Share of the genes in the ``sparse`` class (0 gives a sample without them; one gene of
        each other class always stays). Sparse genes hold well under 1 % of the UMIs.

    Returns
    -------
    AnnData in the project's data model: ``X`` raw counts (CSR float32), ``obsm['spatial']`` x/y
    in full-resolution pixels, ``uns['spatial']['synthetic']`` with the full image as 'hires'
    (scalef 1) and a ~600 px 'lowres', ``uns['trihrge']``, ``obs['domain']`` (majority domain under
    each spot), ``var['gene_class']``/``var['target']``, and ``uns['truth']``:
    ``expression_8um`` float32 (genes, rows, cols) in expected counts per 8 um pixel,
    ``stride_um`` 8.0, ``origin_rc_um`` [4, 4] (centre of truth pixel (0, 0)), ``genes`` (order of
    the first axis), ``domain_8um`` int8 (-1 outside tissue), ``domain_names``, ``tissue_8um``.
    """
    import anndata as ad

    um_per_px = validate_um_per_px(float(um_per_px))
    size = tuple(float(s) for s in size_um)
    if len(size) != 2 or min(size) < 400.0:
        raise TrihrgeInputError(f"size_um must be (height, width) of at least 400 um, got {size_um}",
                                "use for example size_um=(2400, 2400)")
    if int(n_genes) < 4:
        raise TrihrgeInputError(f"n_genes must be at least 4, got {n_genes}",
                                "one gene per class is the minimum; the default is 300")
    if not depth > 0:
        raise TrihrgeInputError(f"depth must be positive, got {depth}", "use e.g. depth=3000")
    if not 0.0 <= sparse_fraction < 1.0:
        raise TrihrgeInputError(f"sparse_fraction must be in [0, 1), got {sparse_fraction}",
                                f"use for example {SPARSE_FRACTION}")
    n_genes = int(n_genes)
    stride = TRUTH_STRIDE_UM
    n_tr, n_tc = int(np.ceil(size[0] / stride)), int(np.ceil(size[1] / stride))
    extent = (n_tr * stride, n_tc * stride)  # the truth grid covers the whole image
    h_px, w_px = int(round(size[0] / um_per_px)), int(round(size[1] / um_per_px))

    rng = np.random.default_rng(seed)
    lay = _make_layout(rng, extent)

    # image
    label_px, lumen_px = lay.labels(_axis_um(h_px, um_per_px), _axis_um(w_px, um_per_px))
    nuc = _draw_nuclei(rng, lay, label_px, um_per_px)
    image = _render_image(rng, lay, label_px, lumen_px, nuc, um_per_px)
    del label_px, lumen_px

    # truth at 8 um, from a 2 um sub-grid of the same layout
    k = 4
    sub_r = _axis_um(n_tr * k, stride / k, stride / (2 * k))
    sub_c = _axis_um(n_tc * k, stride / k, stride / (2 * k))
    label_s, lumen_s = lay.labels(sub_r, sub_c)
    frac = np.stack([block_mean(label_s == d, k, ragged="trim")
                     for d in range(len(DOMAIN_NAMES))])
    epithelium = block_mean((label_s == GLAND) & ~lumen_s, k, ragged="trim")
    tissue_frac = frac.sum(axis=0)
    tissue_8um = tissue_frac >= 0.5
    domain_8um = np.where(tissue_8um, frac.argmax(axis=0), BACKGROUND).astype(np.int8)
    del label_s, lumen_s
    # cellularity: nuclei per 8 um pixel, lightly smoothed (what the image shows)
    nc, _, _ = np.histogram2d(nuc.rc_um[:, 0], nuc.rc_um[:, 1],
                              bins=[np.arange(n_tr + 1) * stride, np.arange(n_tc + 1) * stride])
    dens = ndi.gaussian_filter(nc.astype(np.float32), 1.0)
    dens /= dens[tissue_8um].mean() + 1e-9
    # gradients the image does not show
    tr, tc = np.meshgrid(_axis_um(n_tr, stride, stride / 2), _axis_um(n_tc, stride, stride / 2),
                         indexing="ij")
    beta = rng.uniform(0, 2 * np.pi)
    centre = np.array([tr[tissue_8um].mean(), tc[tissue_8um].mean()])
    r0 = centre + rng.uniform(-0.25, 0.25, 2) * np.array(size)
    grads = {
        "linear_a": (tr - centre[0]) * np.sin(beta) + (tc - centre[1]) * np.cos(beta),
        "linear_b": (tr - centre[0]) * np.cos(beta) - (tc - centre[1]) * np.sin(beta),
        "radial": -np.hypot(tr - r0[0], tc - r0[1]),
        "smooth": _noise(rng, extent, 380.0).grid(tr[:, 0], tc[0]),
    }
    grads = {n: _scale_to_unit(g, tissue_8um) for n, g in grads.items()}

    var = _gene_table(n_genes, _n_sparse_genes(n_genes, sparse_fraction))
    level = rng.lognormal(0.0, 0.7, n_genes)
    slope = rng.uniform(0.8, 1.5, n_genes) * rng.choice([-1.0, 1.0], n_genes)
    gamma = rng.uniform(0.8, 1.3, n_genes)
    truth = np.empty((n_genes, n_tr, n_tc), dtype=np.float32)
    for j, (cls, target) in enumerate(zip(var["gene_class"], var["target"], strict=True)):
        if cls == "sparse":  # the pattern of another class, at a far lower depth (below)
            cls, _, target = target.partition(":")
        if cls == "marker":
            doms = [DOMAIN_NAMES.index(t) for t in target.split(",")]
            f = sum(epithelium if d == GLAND else frac[d] for d in doms)
            truth[j] = f + 0.02 * tissue_frac
        elif cls == "density":
            truth[j] = dens**gamma[j] * tissue_frac
        elif cls == "gradient":
            truth[j] = np.exp(slope[j] * grads[target]) * tissue_frac
        else:
            truth[j] = rng.gamma(3.0, 1 / 3.0, (n_tr, n_tc)) * tissue_frac
    truth *= level[:, None, None].astype(np.float32)
    # class shares of all UMIs, then overall depth
    classes = var["gene_class"].to_numpy()
    totals = truth[:, tissue_8um].mean(axis=1)
    present = {c: (classes == c) for c in _CLASS_SHARE if (classes == c).any()}
    share_sum = sum(_CLASS_SHARE[c] for c in present)
    for c, m in present.items():
        truth[m] *= np.float32(_CLASS_SHARE[c] / share_sum / totals[m].sum())

    origin = np.array([stride / 2, stride / 2])
    spots_rc, arr = _hex_spots(size)
    w = _spot_weights(spots_rc, (n_tr, n_tc), stride, origin, SPOT_DIAMETER_UM)
    cover = np.asarray(w @ tissue_frac.ravel()) / np.asarray(w.sum(axis=1)).ravel()
    keep = cover >= 0.5
    spots_rc, arr, w, cover = spots_rc[keep], arr[keep], w[keep], cover[keep]
    flat = truth.reshape(n_genes, -1)
    mu = np.asarray(w @ flat.T)
    sparse_genes = classes == "sparse"
    scale = np.ones(n_genes)
    dense_depth = float(depth)
    if sparse_genes.any():
        lo, hi = np.log(_SPARSE_MEAN_COUNTS)
        mean_counts = np.exp(rng.uniform(lo, hi, int(sparse_genes.sum())))
        mean_counts *= min(1.0, 0.5 * dense_depth / mean_counts.sum())  # a very low depth
        scale[sparse_genes] = mean_counts / np.maximum(mu[:, sparse_genes].mean(axis=0), 1e-12)
        dense_depth -= float(mean_counts.sum())
    scale[~sparse_genes] = dense_depth / mu[:, ~sparse_genes].sum(axis=1).mean()
    truth *= scale.astype(np.float32)[:, None, None]
    mu *= scale[None, :]
    counts = rng.poisson(mu).astype(np.float32)
    dom_frac = np.asarray(w @ frac.reshape(len(DOMAIN_NAMES), -1).T)
    dom_frac /= np.maximum(dom_frac.sum(axis=1, keepdims=True), 1e-9)

    obs = pd.DataFrame({
        "in_tissue": np.ones(len(spots_rc), dtype=np.int64),
        "array_row": arr[:, 0], "array_col": arr[:, 1],
        "domain": pd.Categorical.from_codes(dom_frac.argmax(axis=1), categories=DOMAIN_NAMES),
        "tissue_fraction": cover.astype(np.float32),
    }, index=pd.Index(_barcodes(rng, len(spots_rc))))

    f_low = max(1, int(round(max(h_px, w_px) / 600)))
    lowres = block_mean(image, f_low, ragged="trim", dtype=np.float64).round().astype(np.uint8)

    adata = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["spatial"] = rc_um_to_xy_px(spots_rc, um_per_px)
    adata.obsm["domain_fractions"] = dom_frac.astype(np.float32)
    adata.uns["spatial"] = {LIBRARY_ID: {
        "images": {"hires": image, "lowres": lowres},
        "scalefactors": {"tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0 / f_low,
                         "spot_diameter_fullres": SPOT_DIAMETER_UM / um_per_px},
        "metadata": {"source": "synthetic"},
    }}
    adata.uns["trihrge"] = {
        "library_id": LIBRARY_ID, "sample": "synthetic", "platform": "visium",
        "um_per_px": um_per_px, "spot_diameter_um": SPOT_DIAMETER_UM,
        "source": f"napari_trihrge.datasets.synthetic_sample(seed={seed})",
    }
    adata.uns["truth"] = {
        "expression_8um": truth, "stride_um": stride, "origin_rc_um": origin,
        "genes": np.asarray(var.index, dtype=object), "domain_8um": domain_8um,
        "domain_names": np.asarray(DOMAIN_NAMES, dtype=object), "tissue_8um": tissue_8um,
        "seed": int(seed),
        # every nucleus drawn: centre, semi-axes, orientation (truth_nuclei fills them in)
        "nuclei": {"rc_um": nuc.rc_um, "a_um": nuc.a_um, "b_um": nuc.b_um,
                   "angle": nuc.angle, "domain": nuc.domain},
    }
    return adata


def load_sample(name: str = "synthetic", seed: int = 0, **kwargs):
    """Registry of built-in samples (only 'synthetic' for now); kwargs go to the generator."""
    if name != "synthetic":
        raise TrihrgeInputError(f"unknown sample {name!r}", "the built-in sample is 'synthetic'")
    return synthetic_sample(seed=seed, **kwargs)
