"""What the measured spots around a location say: inverse-distance kNN interpolation.

Used twice: as the image-free baseline every score is compared with, and as the neighbour input of
the model (expression interpolated from nearby measured spots, learned jointly with the image).
:func:`mean_of_nearest_others` averages what the spots around a location's own spot carry (their
image features for ``RunConfig.neighbour_images``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def idw_weights(src_rc_um: np.ndarray, dst_rc_um: np.ndarray, k: int = 6, *,
                exclude_self: bool = False, exclude_index: np.ndarray | None = None,
                power: float = 1.0, eps_um: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Indices (M, k) of the ``k`` nearest source points of each destination and their
    normalised inverse-distance weights. With ``exclude_self`` the destinations are the sources
    themselves and each point's own value is left out (leave-one-out); ``exclude_index`` (M,)
    leaves out one given source per destination (e.g. the spot a sub-location belongs to)."""
    src_rc_um = np.asarray(src_rc_um, dtype=np.float64)
    dst_rc_um = np.asarray(dst_rc_um, dtype=np.float64)
    if exclude_self:
        exclude_index = np.arange(len(dst_rc_um))
    drop = exclude_index is not None
    k = int(min(k, len(src_rc_um) - int(drop)))
    if k < 1:
        raise ValueError("need at least one source point to interpolate from")
    tree = cKDTree(src_rc_um)
    dist, idx = tree.query(dst_rc_um, k=k + int(drop))
    dist, idx = dist.reshape(len(dst_rc_um), -1), idx.reshape(len(dst_rc_um), -1)
    if drop:
        keep = idx != np.asarray(exclude_index)[:, None]
        keep[keep.sum(axis=1) > k, -1] = False  # excluded source not among the nearest
        dist = dist[keep].reshape(len(idx), k)
        idx = idx[keep].reshape(len(idx), k)
    w = 1.0 / np.maximum(dist, eps_um) ** power
    # a destination exactly on a source takes that source's value
    exact = dist <= eps_um
    w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), w)
    w /= w.sum(axis=1, keepdims=True)
    return idx, w.astype(np.float32)


def idw_interpolate(src_rc_um: np.ndarray, src_values: np.ndarray, dst_rc_um: np.ndarray,
                    k: int = 6, *, exclude_self: bool = False,
                    exclude_index: np.ndarray | None = None, power: float = 1.0,
                    block: int = 65536) -> np.ndarray:
    """Inverse-distance weighted mean of the ``k`` nearest sources' values at each destination.

    ``src_values`` is (n_src, n_genes); the result is (n_dst, n_genes) float32, computed in
    blocks of destinations as a sparse (destinations x sources) product, so no (block, k,
    genes) gather is ever held.
    """
    idx, w = idw_weights(src_rc_um, dst_rc_um, k, exclude_self=exclude_self,
                         exclude_index=exclude_index, power=power)
    return idw_apply(idx, w, src_values, block=block)


def idw_apply(idx: np.ndarray, w: np.ndarray, src_values: np.ndarray, *,
              block: int = 65536) -> np.ndarray:
    """The weighted mean ``sum_k w[:, k] * src_values[idx[:, k]]`` (:func:`idw_weights`' output).

    (M, n_genes) float32, as a sparse (destinations x sources) product per block.
    """
    from scipy.sparse import csr_matrix

    src_values = np.asarray(src_values, dtype=np.float32)
    out = np.empty((len(idx), src_values.shape[1]), dtype=np.float32)
    n_k = idx.shape[1]
    for start in range(0, len(idx), block):
        sl = slice(start, start + block)
        m = len(idx[sl])
        weights = csr_matrix((w[sl].ravel(), idx[sl].ravel(), np.arange(0, m * n_k + 1, n_k)),
                             shape=(m, len(src_values)))
        out[sl] = weights @ src_values
    return out


def idw_linear_table(src_values: np.ndarray, matrix: np.ndarray, centre: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Precompute a linear map of the interpolation, to apply it without the interpolation.

    For ``x = sum_k w_k src_values[idx_k]`` (:func:`idw_apply`), ``(x - centre) @ matrix``
    equals ``sum_k w_k table[idx_k] + (sum_k w_k - 1) * at_centre`` for any weights, with
    ``table = (src_values - centre) @ matrix`` (n_src, out) and ``at_centre = centre @ matrix``
    (out,). Returns both (computed in float64, the table float32); :func:`idw_apply_linear`
    evaluates the map from them, so no (locations, n_genes) interpolation is built.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    table = (np.asarray(src_values, dtype=np.float64) - centre) @ matrix
    return table.astype(np.float32), centre @ matrix


def idw_apply_linear(idx: np.ndarray, w: np.ndarray, table: np.ndarray, at_centre: np.ndarray,
                     bias: np.ndarray | None = None, *, block: int = 65536) -> np.ndarray:
    """``(x - centre) @ matrix + bias`` of the interpolation ``x`` (:func:`idw_linear_table`).

    (M, out) float32. The kNN weights sum to 1 up to rounding; their exact sum is used.
    """
    out = idw_apply(idx, w, table, block=block)
    excess = np.asarray(w, dtype=np.float64).sum(axis=1, keepdims=True) - 1.0
    offset = excess * np.asarray(at_centre, dtype=np.float64)
    if bias is not None:
        offset += np.asarray(bias, dtype=np.float64)
    out += offset.astype(np.float32)
    return out


def mean_of_nearest_others(src_rc_um: np.ndarray, src_values: np.ndarray,
                           dst_rc_um: np.ndarray, k: int) -> np.ndarray:
    """Mean of the values of the ``k`` sources nearest each destination after its nearest one.

    Unweighted. ``src_values`` is (n_src, ...); the result is (n_dst, ...) float32. The source
    nearest a destination is the one the destination belongs to: the spot itself at a spot, the
    spot whose cell holds a sub-location, virtual spot or map pixel. Leaving it out gives every
    location the ring of spots around its own, at the lattice's distances, wherever it lies.
    """
    src_values = np.asarray(src_values, dtype=np.float32)
    k = int(k)
    if not 1 <= k < len(src_rc_um):
        raise ValueError(f"need more than k={k} source points, got {len(src_rc_um)}")
    _, idx = cKDTree(np.asarray(src_rc_um, dtype=np.float64)).query(
        np.asarray(dst_rc_um, dtype=np.float64), k=k + 1)
    idx = np.asarray(idx).reshape(len(dst_rc_um), k + 1)[:, 1:]
    out = np.zeros((len(idx), *src_values.shape[1:]), dtype=np.float32)
    for j in range(k):  # no (n_dst, k, ...) gather held at once
        out += src_values[idx[:, j]]
    return out / np.float32(k)
