"""Strong simple predictors next to the network, and a per-gene blend of all of them (recovery's
hidden spots, enhance's virtual spots and dense maps).

Candidates for each gene's prediction at a location:

* ``knn6``, ``knn12`` -- inverse-distance kNN interpolation of the measured spots (the baseline);
* ``ridge`` -- a ridge regression (one per gene, alpha chosen by efficient leave-one-out, shared
  over genes) on the image features of the location, flattened over scales, and the first
  principal components of the interpolated neighbour expression;
* ``network`` -- the TriHRGE network.

:func:`fit_gene_blend` learns, per gene, non-negative weights of these candidates from
out-of-fold predictions of the training spots (each training spot predicted by candidates that
did not see it), shrunk toward one weight vector shared by all genes so that genes with little
signal do not get noisy weights. Non-negative weights keep a candidate from being flipped in sign
on a noisy validation estimate; a gene whose out-of-fold data favour interpolation falls back on
it, and a gene that no candidate predicted out of fold keeps the shared weights instead of
becoming a constant. The fit protects each gene on the training spots' out-of-fold predictions,
not on unseen spots: there a gene can still come out below interpolation.

:func:`fit_detail_transfer` learns the other form of enhance's maps (regression kriging): the
interpolation of the measured spots plus, per gene, a weight times each image candidate's
detail, i.e. the candidate minus its own interpolation from the measured spots (the weights
learned from each held-out spot's fold model: its prediction there minus its interpolation from
its predictions at the other spots; the same function on both sides, as at a map location). Such a map keeps
every measured spot's level and takes from the image only what varies between the spots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: ridge penalties tried (efficient leave-one-out picks one, shared by all genes)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
#: principal components of the interpolated neighbour expression given to the ridge head
NEIGHBOUR_PCS = 20


@dataclass
class RidgeHead:
    """Ridge regression from image features and neighbour-expression PCs to every gene."""

    model: object
    feature_mean: np.ndarray
    feature_sd: np.ndarray
    neighbour_mean: np.ndarray | None
    neighbour_axes: np.ndarray | None  # (G_nb, n_pcs)

    def _raw_inputs(self, features: np.ndarray | None, neighbour: np.ndarray | None,
                    neighbour_pcs: np.ndarray | None = None) -> np.ndarray:
        parts = []
        if features is not None and features.ndim == 3 and features.shape[1] > 0:
            parts.append(np.asarray(features, dtype=np.float64).reshape(len(features), -1))
        if self.neighbour_axes is not None:
            parts.append(np.asarray(neighbour_pcs, dtype=np.float64) if neighbour_pcs is not None
                         else (np.asarray(neighbour, dtype=np.float64) - self.neighbour_mean)
                         @ self.neighbour_axes)
        if not parts:
            raise ValueError("the ridge head needs image features or neighbour expression")
        return np.hstack(parts)

    @classmethod
    def fit(cls, features: np.ndarray | None, neighbour: np.ndarray | None, targets: np.ndarray,
            n_pcs: int = NEIGHBOUR_PCS) -> RidgeHead:
        """``features`` (N, S, D) or None; ``neighbour`` (N, G_nb) or None (at least one)."""
        from sklearn.linear_model import RidgeCV

        nb_mean = nb_axes = None
        if neighbour is not None:
            nb = np.asarray(neighbour, dtype=np.float64)
            nb_mean = nb.mean(axis=0)
            _, _, vt = np.linalg.svd(nb - nb_mean, full_matrices=False)
            nb_axes = vt[:min(n_pcs, len(vt))].T
        head = cls(None, np.zeros(0), np.ones(0), nb_mean, nb_axes)
        x = head._raw_inputs(features, neighbour)
        head.feature_mean = x.mean(axis=0)
        sd = x.std(axis=0)
        head.feature_sd = np.where(sd < 1e-6, 1.0, sd)
        head.model = RidgeCV(alphas=RIDGE_ALPHAS).fit((x - head.feature_mean) / head.feature_sd,
                                                      np.asarray(targets, dtype=np.float64))
        return head

    @property
    def alpha(self) -> float:
        return float(self.model.alpha_)

    def standardised_inputs(self, features: np.ndarray | None, neighbour: np.ndarray | None,
                            *, neighbour_pcs: np.ndarray | None = None) -> np.ndarray:
        """What the coefficients multiply: the flattened image features and the neighbour
        PCs, standardised (N, F). ``neighbour_pcs`` (N, n_pcs): the PCs given instead of
        ``neighbour`` (:meth:`neighbour_pcs_table`)."""
        return ((self._raw_inputs(features, neighbour, neighbour_pcs) - self.feature_mean)
                / self.feature_sd)

    def neighbour_pcs_table(self, spots_expression: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray] | None:
        """The neighbour PCs of a kNN interpolation of ``spots_expression``, per spot
        (:func:`napari_trihrge.neighbours.idw_linear_table`; apply it with
        :func:`~napari_trihrge.neighbours.idw_apply_linear`); None without neighbour PCs."""
        from ..neighbours import idw_linear_table

        if self.neighbour_axes is None:
            return None
        return idw_linear_table(spots_expression, self.neighbour_axes, self.neighbour_mean)

    def predict(self, features: np.ndarray | None, neighbour: np.ndarray | None) -> np.ndarray:
        return self.model.predict(self.standardised_inputs(features, neighbour)).astype(
            np.float32)


@dataclass
class GeneBlend:
    """Per-gene non-negative weights of named candidate predictions (see :func:`fit_gene_blend`)."""

    names: list[str]
    weights: np.ndarray  # (G, C)
    shared_weights: np.ndarray  # (C,): the weights shared by all genes the per-gene ones shrink to
    candidate_mean: np.ndarray  # (C, G): out-of-fold mean of each candidate
    target_mean: np.ndarray  # (G,)

    def predict(self, predictions: Mapping[str, np.ndarray]) -> np.ndarray:
        """Blend of ``predictions`` (name -> (M, G)); every name of the blend must be present."""
        out = np.broadcast_to(self.target_mean, predictions[self.names[0]].shape).astype(
            np.float64)
        for c, name in enumerate(self.names):
            out = out + (np.asarray(predictions[name], dtype=np.float64)
                         - self.candidate_mean[c]) * self.weights[:, c]
        return out.astype(np.float32)

    def summary(self) -> dict[str, float]:
        """Mean per-gene weight of each candidate, and the shared weights."""
        out = {f"blend_weight_{n}_mean": float(self.weights[:, c].mean())
               for c, n in enumerate(self.names)}
        out.update({f"blend_weight_{n}_shared": float(self.shared_weights[c])
                    for c, n in enumerate(self.names)})
        return out


def fit_gene_blend(out_of_fold: Mapping[str, np.ndarray], targets: np.ndarray,
                   shrinkage: float = 3.0, *, centre: bool = True) -> GeneBlend:
    """Per-gene non-negative least-squares weights of the candidates on out-of-fold predictions
    of the training spots, with a ridge penalty ``shrinkage * n_spots * |w_g - w_shared|^2``
    toward the non-negative weights that fit all genes at once (each gene scaled by its sd).

    ``centre=False``: no intercept (candidate and target means 0), for residuals whose
    expected value is 0."""
    from scipy.optimize import nnls

    names = list(out_of_fold)
    p = np.stack([np.asarray(out_of_fold[n], dtype=np.float64) for n in names])  # (C, n, G)
    y = np.asarray(targets, dtype=np.float64)
    n_cand, n, n_genes = p.shape
    cand_mean = p.mean(axis=1) if centre else np.zeros((n_cand, n_genes))
    y_mean = y.mean(axis=0) if centre else np.zeros(n_genes)
    pc = p - cand_mean[:, None, :]
    yc = y - y_mean
    y_sd = yc.std(axis=0)
    y_sd = np.where(y_sd < 1e-9, 1.0, y_sd)
    pooled = (pc / y_sd).transpose(2, 1, 0).reshape(-1, n_cand)
    shared, _ = nnls(pooled, (yc / y_sd).T.reshape(-1))
    root = np.sqrt(shrinkage * n)
    prior = np.vstack([np.zeros((n, n_cand)), root * np.eye(n_cand)])
    weights = np.zeros((n_genes, n_cand))
    for g in range(n_genes):
        if not yc[:, g].any():
            continue  # constant in training
        a = prior.copy()
        a[:n] = pc[:, :, g].T / y_sd[g]
        b = np.concatenate([yc[:, g] / y_sd[g], root * shared])
        weights[g], _ = nnls(a, b)
    # a gene that no candidate predicted out of fold keeps the shared weights rather than a
    # constant prediction (which carries no information at all)
    weights[weights.sum(axis=1) <= 1e-12] = shared
    # a candidate constant for a gene (e.g. a model reference without the gene) adds nothing
    # to its prediction: its weight there is 0, not the shared weight the penalty pulls to
    weights[(np.abs(pc).max(axis=1) <= 1e-12).T] = 0.0
    return GeneBlend(names, weights, shared, cand_mean, y_mean)


@dataclass
class DetailTransfer:
    """What :func:`fit_detail_transfer` learns: the interpolation and the detail weights."""

    base: str  # the kNN candidate that carries the measured spots' level ('knn6', ...)
    detail: GeneBlend  # per-gene weights of each image candidate's detail (no intercept)

    def as_blend(self, names: Sequence[str]) -> GeneBlend:
        """The same map as a blend of ``names`` whose kNN candidates interpolate the spots'
        level (:func:`spots_level`): weight 1 on the base, the detail weights on the image
        candidates, no intercept."""
        names = list(names)
        n_genes = self.detail.weights.shape[0]
        weights = np.zeros((n_genes, len(names)))
        shared = np.zeros(len(names))
        weights[:, names.index(self.base)] = 1.0
        shared[names.index(self.base)] = 1.0
        for c, name in enumerate(self.detail.names):
            weights[:, names.index(name)] = self.detail.weights[:, c]
            shared[names.index(name)] = self.detail.shared_weights[c]
        return GeneBlend(names, weights, shared, np.zeros((len(names), n_genes)),
                         np.zeros(n_genes))

    def spots_level(self, targets: np.ndarray, at_spots: Mapping[str, np.ndarray]
                    ) -> np.ndarray:
        """What the kNN candidates interpolate: the spots' expression minus the weighted image
        candidates at the spots (``at_spots``: name -> (spots, G), as the map computes them)."""
        level = np.asarray(targets, dtype=np.float64).copy()
        for c, name in enumerate(self.detail.names):
            level -= self.detail.weights[:, c] * np.asarray(at_spots[name], dtype=np.float64)
        return level.astype(np.float32)


def detail_base(candidates: Sequence[str]) -> str | None:
    """The kNN candidate (``knn<k>``) with the fewest neighbours; None without one.

    The most local interpolation: a map location lies between or inside the measured spots,
    closer to the nearest one than a held-out spot is, so the nearest spots carry the most
    there. Choosing k on the spots out of fold would choose it one lattice step from the
    nearest spot, where a larger k does better (measured: docs/benchmarks.md, "The map
    method").
    """
    knn = [n for n in candidates if n.startswith("knn")]
    return min(knn, key=lambda n: int(n[3:])) if knn else None


def fit_detail_transfer(details: Mapping[str, np.ndarray], targets: np.ndarray,
                        base_out_of_fold: np.ndarray, base: str, shrinkage: float = 3.0
                        ) -> DetailTransfer:
    """Learn the detail-transfer form of a map from out-of-fold residuals of the spots.

    map_g(x) = kNN_y(x) + sum_c w_gc * (f_c(x) - kNN_{f_c}(x)): the ``base`` kNN candidate
    interpolates the measured spots, and each image candidate ``f_c`` adds its difference from
    its own interpolation with the same weights. ``details[c]`` (spots, G) is, for each spot,
    the held-out prediction of the fold model that did not see it minus the interpolation of
    that same model's predictions at the other spots; ``base_out_of_fold`` the base candidate's
    leave-one-out interpolation. The weights ``w_gc`` are :func:`fit_gene_blend`'s
    (non-negative, shrunk toward weights shared by all genes, no intercept) of the residuals
    ``y - base_out_of_fold`` on the details.
    """
    y = np.asarray(targets, dtype=np.float64)
    residual = y - np.asarray(base_out_of_fold, dtype=np.float64)
    if not details:
        empty = np.zeros((y.shape[1], 0))
        return DetailTransfer(base, GeneBlend([], empty, np.zeros(0), empty.T,
                                              np.zeros(y.shape[1])))
    return DetailTransfer(base, fit_gene_blend(details, residual, shrinkage, centre=False))


def fold_indices(n_spots: int, n_folds: int, seed: int) -> list[np.ndarray]:
    """``n_folds`` disjoint, shuffled index sets covering ``range(n_spots)``."""
    perm = np.random.default_rng(seed).permutation(n_spots)
    return [np.sort(part) for part in np.array_split(perm, n_folds)]


__all__: Sequence[str] = ["RidgeHead", "GeneBlend", "fit_gene_blend", "DetailTransfer",
                          "detail_base", "fit_detail_transfer", "fold_indices",
                          "RIDGE_ALPHAS", "NEIGHBOUR_PCS"]
