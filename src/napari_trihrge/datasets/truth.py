"""The synthetic sample's genes and known truth.

Gene classes and targets, and the readers of ``uns['truth']`` (:func:`truth_map`,
:func:`truth_at`, :func:`truth_in_spots`, :func:`truth_nuclei`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TrihrgeInputError
from .layout import DOMAIN_NAMES
from .spots import SPOT_DIAMETER_UM, _spot_weights

TRUTH_STRIDE_UM = 8.0

#: Real-looking marker names per domain (target domains after the colon when more than one).
_NAMED_MARKERS: dict[str, list[tuple[str, str]]] = {
    "stroma": [("COL1A1", "stroma"), ("COL3A1", "stroma"), ("DCN", "stroma"), ("LUM", "stroma")],
    "tumor": [("ERBB2", "tumor"), ("EPCAM", "tumor,gland"), ("KRT8", "tumor,gland"),
              ("MKI67", "tumor")],
    "immune": [("PTPRC", "immune"), ("CD3E", "immune"), ("MS4A1", "immune"), ("CD19", "immune")],
    "gland": [("MUC1", "gland"), ("KRT5", "gland"), ("KRT14", "gland")],
    "adipose": [("ADIPOQ", "adipose"), ("PLIN1", "adipose"), ("FABP4", "adipose")],
}
_GRADIENTS = ("linear_a", "linear_b", "radial", "smooth")
#: Share of all UMIs per gene class (markers, density, gradient, noise).
_CLASS_SHARE = {"marker": 0.40, "density": 0.22, "gradient": 0.22, "noise": 0.16}
_CLASS_FRACTION = {"marker": 0.30, "density": 0.15, "gradient": 0.20, "noise": 0.35}
#: Default share of the genes in the ``sparse`` class.
SPARSE_FRACTION = 0.6
#: Range of the mean UMIs per spot of a sparse gene (drawn log-uniformly).
_SPARSE_MEAN_COUNTS = (0.008, 0.15)
#: Patterns the sparse genes cycle through (class, target).
_SPARSE_PATTERNS: tuple[tuple[str, str], ...] = (
    *(("marker", d) for d in DOMAIN_NAMES), ("density", "nuclei"),
    *(("gradient", g) for g in ("linear_a", "linear_b", "radial", "smooth")), ("noise", ""))


def _scale_to_unit(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lo, hi = g[mask].min(), g[mask].max()
    return (2 * (g - lo) / max(hi - lo, 1e-9) - 1).astype(np.float32)


def _n_sparse_genes(n_genes: int, sparse_fraction: float) -> int:
    """Sparse genes among ``n_genes``: one gene of each other class always stays."""
    return int(min(np.floor(sparse_fraction * n_genes), max(n_genes - len(_CLASS_FRACTION), 0)))


def _gene_table(n_genes: int, n_sparse: int = 0) -> pd.DataFrame:
    """Gene names, classes and targets (``n_sparse`` of the ``n_genes`` in the sparse class)."""
    n_dense = n_genes - n_sparse
    n_genes = n_dense
    counts = {k: max(1, int(np.floor(v * n_genes))) for k, v in _CLASS_FRACTION.items()}
    counts["marker"] += n_genes - sum(counts.values())
    while counts["marker"] < 1:  # tiny n_genes: take from the largest class
        big = max(("noise", "gradient", "density"), key=lambda k: counts[k])
        counts[big] -= 1
        counts["marker"] += 1
    names, classes, targets = [], [], []
    per_domain: dict[str, int] = dict.fromkeys(DOMAIN_NAMES, 0)
    for i in range(counts["marker"]):
        dom = DOMAIN_NAMES[i % len(DOMAIN_NAMES)]
        k = per_domain[dom]
        per_domain[dom] += 1
        named = _NAMED_MARKERS[dom]
        name, target = named[k] if k < len(named) else (f"{dom.upper()}_{k - len(named) + 1}", dom)
        names.append(name)
        classes.append("marker")
        targets.append(target)
    for i in range(counts["density"]):
        names.append(f"DENSITY_{i + 1}")
        classes.append("density")
        targets.append("nuclei")
    for i in range(counts["gradient"]):
        names.append(f"GRADIENT_{i + 1}")
        classes.append("gradient")
        targets.append(_GRADIENTS[i % len(_GRADIENTS)])
    for i in range(counts["noise"]):
        names.append(f"NOISE_{i + 1}")
        classes.append("noise")
        targets.append("")
    for i in range(n_sparse):
        cls, target = _SPARSE_PATTERNS[i % len(_SPARSE_PATTERNS)]
        names.append(f"SPARSE_{i + 1}")
        classes.append("sparse")
        targets.append(f"{cls}:{target}" if target else cls)
    return pd.DataFrame({"gene_class": classes, "target": targets,
                         "gene_ids": [f"SYNTH{i + 1:05d}" for i in range(len(names))]},
                        index=pd.Index(names, name=None))


def _truth(adata) -> dict:
    truth = adata.uns.get("truth")
    if not isinstance(truth, dict) or "expression_8um" not in truth:
        raise TrihrgeInputError("this AnnData has no known truth (uns['truth'])",
                                "truth exists only for napari_trihrge.datasets.synthetic_sample()")
    return truth


def _gene_rows(adata, truth: dict) -> np.ndarray:
    genes = [str(g) for g in truth.get("genes", adata.var_names)]
    pos = {g: i for i, g in enumerate(genes)}
    missing = [g for g in adata.var_names if g not in pos]
    if missing:
        raise TrihrgeInputError(f"{len(missing)} genes have no truth (e.g. {missing[:3]})",
                                "compare only genes of the synthetic sample")
    return np.array([pos[g] for g in adata.var_names], dtype=np.int64)


def truth_map(adata) -> tuple[np.ndarray, float, np.ndarray]:
    """``(expression (genes, rows, cols), stride_um, origin_rc_um)`` for ``adata.var_names``."""
    truth = _truth(adata)
    expr = np.asarray(truth["expression_8um"])
    rows = _gene_rows(adata, truth)
    if not np.array_equal(rows, np.arange(expr.shape[0])):
        expr = expr[rows]
    return expr, float(truth["stride_um"]), np.asarray(truth["origin_rc_um"], dtype=np.float64)


def truth_at(adata, rc_um: np.ndarray, method: str = "linear") -> np.ndarray:
    """Return the true expression (counts per 8 um pixel) at points ``rc_um`` (n, 2).

    The result is (n, genes) float32. ``method`` 'linear' interpolates bilinearly between truth
    pixel centres, 'nearest' takes the pixel the point falls in; points outside the grid take the
    nearest edge pixel.
    """
    truth = _truth(adata)
    expr = np.asarray(truth["expression_8um"])
    stride = float(truth["stride_um"])
    origin = np.asarray(truth["origin_rc_um"], dtype=np.float64)
    rows = _gene_rows(adata, truth)
    pos = (np.asarray(rc_um, dtype=np.float64).reshape(-1, 2) - origin) / stride
    n_r, n_c = expr.shape[1:]
    if method == "nearest":
        i = np.clip(np.rint(pos[:, 0]).astype(np.int64), 0, n_r - 1)
        j = np.clip(np.rint(pos[:, 1]).astype(np.int64), 0, n_c - 1)
        return np.ascontiguousarray(expr[rows][:, i, j].T)
    if method != "linear":
        raise TrihrgeInputError(f"unknown method {method!r}", "use 'linear' or 'nearest'")
    pr = np.clip(pos[:, 0], 0, n_r - 1)
    pc = np.clip(pos[:, 1], 0, n_c - 1)
    i0 = np.minimum(np.floor(pr).astype(np.int64), n_r - 2 if n_r > 1 else 0)
    j0 = np.minimum(np.floor(pc).astype(np.int64), n_c - 2 if n_c > 1 else 0)
    i1, j1 = np.minimum(i0 + 1, n_r - 1), np.minimum(j0 + 1, n_c - 1)
    tr, tc = (pr - i0)[None, :], (pc - j0)[None, :]
    e = expr[rows] if not np.array_equal(rows, np.arange(expr.shape[0])) else expr
    out = ((1 - tr) * (1 - tc) * e[:, i0, j0] + (1 - tr) * tc * e[:, i0, j1]
           + tr * (1 - tc) * e[:, i1, j0] + tr * tc * e[:, i1, j1])
    return np.ascontiguousarray(out.T.astype(np.float32))


def truth_in_spots(adata, rc_um: np.ndarray, diameter_um: float = SPOT_DIAMETER_UM
                   ) -> np.ndarray:
    """Return the expected counts (n, genes) of disks of ``diameter_um`` centred at ``rc_um``.

    The truth integrated exactly as the synthetic spots were measured (before Poisson noise).
    """
    expr, stride, origin = truth_map(adata)
    w = _spot_weights(rc_um, expr.shape[1:], stride, origin, float(diameter_um))
    return np.asarray(w @ expr.reshape(expr.shape[0], -1).T, dtype=np.float32)


def truth_nuclei(adata) -> np.ndarray:
    """Return the true nuclei as an int32 label image on the sample's H&E grid (0 = background).

    Nucleus ``k`` of ``uns['truth']['nuclei']`` is label ``k + 1``: the pixels inside its
    ellipse, where the drawn stain is at half its strength or more; where two overlap, the
    pixel goes to the nucleus it lies deeper in. Some labels can be absent (a nucleus hidden
    under its neighbours or outside the image).
    """
    truth = _truth(adata)
    if "nuclei" not in truth:
        raise TrihrgeInputError("this synthetic sample has no nuclei truth",
                                "generate it again with napari_trihrge.datasets.synthetic_sample()")
    nuc = truth["nuclei"]
    info = adata.uns["trihrge"]
    um_per_px = float(info["um_per_px"])
    h, w = np.shape(adata.uns["spatial"][info["library_id"]]["images"]["hires"])[:2]
    rc_um = np.asarray(nuc["rc_um"], dtype=np.float64).reshape(-1, 2)
    a_um, b_um = np.asarray(nuc["a_um"]), np.asarray(nuc["b_um"])
    angle = np.asarray(nuc["angle"])
    out = np.zeros((h, w), dtype=np.int32)
    depth = np.full((h, w), np.inf, dtype=np.float32)
    for k in range(len(rc_um)):
        half = int(np.ceil(a_um[k] / um_per_px)) + 1
        c_px = rc_um[k] / um_per_px
        r0, c0 = int(np.rint(c_px[0])) - half, int(np.rint(c_px[1])) - half
        rr, cc = np.mgrid[max(r0, 0):min(r0 + 2 * half + 1, h), max(c0, 0):min(c0 + 2 * half + 1, w)]
        if rr.size == 0:
            continue
        dr, dc = (rr - c_px[0]) * um_per_px, (cc - c_px[1]) * um_per_px
        sn, cs = np.sin(angle[k]), np.cos(angle[k])
        q = np.sqrt(((dr * sn + dc * cs) / a_um[k]) ** 2 + ((dr * cs - dc * sn) / b_um[k]) ** 2)
        win = (slice(rr[0, 0], rr[-1, 0] + 1), slice(cc[0, 0], cc[0, -1] + 1))
        take = (q <= 1.0) & (q < depth[win])
        out[win][take] = k + 1
        depth[win][take] = q[take]
    return out
