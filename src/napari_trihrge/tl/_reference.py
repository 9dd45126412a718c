"""Other sections of a study as extra training data for recovery and enhance (``--with``).

A reference is another section of the same study (same platform and tissue). Its spots join the
training data of the image parts of the blend (the network and the ridge head); the kNN
candidates, and the per-gene blend weights, stay within the section itself (the weights are fit
on the section's own out-of-fold spots only, so a reference that does not help gets a weight
near 0 through the network and ridge candidates).

Choices (docs/cli-and-api.md, "Learning from other sections"):

* genes: the section's selected genes that every reference measures (intersection; the genes a
  reference lacks are dropped from the run, with a warning naming how many);
* expression: log-normalised per section over all of that section's genes (as ``train``);
* image features: standardised per section over its own spots (as ``train``), then put on the
  section's own scale (its mean and spread over its spots), so stain and scanner differences
  between sections do not read as expression while the section's features (spots, sub-spot
  locations, virtual spots, map pixels) stay as they are;
* neighbour input of a reference spot: interpolated from the reference's other spots;
* weight: every spot, the section's or a reference's, counts once; ``reference_weight`` caps the
  references' spots at that many times the section's training spots (drawn at random, seeded).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from .._checks import (
    MIN_SECTION_SPOTS,
    check_adatas,
    check_declared_pixel_size,
    check_training_sections,
)
from ..errors import TrihrgeInputError
from ..neighbours import idw_interpolate
from ..progress import Progress
from ._config import RunConfig
from ._shared import (
    _features,
    _log_expression,
    _nonzero_spots,
    _section_name,
    _standardise,
    sample_geometry,
)

#: fewest of the section's genes every reference must measure
MIN_SHARED_GENES = 10


@dataclass
class ReferenceData:
    """The references' training spots on the run's genes.

    ``features`` (N, S, D) standardised per section onto the section's scale, ``targets``
    (N, G) log-normalised per section, ``neighbour`` (N, G) interpolated from each reference's
    other spots (None without the neighbour input), ``names`` and ``n_spots`` per reference,
    ``weight`` the cap of :meth:`take`.
    """

    features: np.ndarray
    targets: np.ndarray
    neighbour: np.ndarray | None
    names: list[str]
    n_spots: list[int]
    weight: float | None = None

    def take(self, n_own: int, seed: int) -> np.ndarray:
        """Return the indices of the reference spots a fit on ``n_own`` section spots uses."""
        n = len(self.targets)
        if self.weight is None or self.weight * n_own >= n:
            return np.arange(n)
        k = max(1, int(round(self.weight * n_own)))
        return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))

    def join(self, feats: np.ndarray, y: np.ndarray, nb: np.ndarray | None, sub: dict,
             seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
        """Return the section's training spots followed by the reference spots a fit uses.

        ``sub`` (the sub-spot arrays of the aggregation loss) gets empty rows for the reference
        spots (``sub_mask`` False: their sub-locations are not embedded).
        """
        idx = self.take(len(y), seed)
        feats = np.concatenate([feats, self.features[idx]])
        y = np.concatenate([y, self.targets[idx]])
        if nb is not None:
            nb = np.concatenate([nb, self.neighbour[idx]])
        padded = {key: np.concatenate([value, np.zeros((len(idx), *value.shape[1:]),
                                                       dtype=value.dtype)])
                  for key, value in sub.items()}
        return feats, y, nb, padded

    def summary(self) -> dict:
        """Return what the run records about its references."""
        return {"reference_sections": list(self.names),
                "reference_spots": [int(n) for n in self.n_spots],
                "reference_weight": None if self.weight is None else float(self.weight)}


def check_reference_weight(weight: float | None) -> None:
    """Refuse a reference weight that is not a positive number (None: every reference spot)."""
    if weight is None:
        return
    if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
        raise TrihrgeInputError(
            f"the reference weight must be a positive number, got {weight!r}",
            "use for example 2 (the references count at most twice the section's own "
            "training spots), or leave it out to use every reference spot")


def check_reference_levers(cfg) -> None:
    """Refuse references together with a count loss or denoised targets (not supported yet).

    A reference's raw counts and neighbours are not carried into those fits, so the combination
    would train on wrong inputs.
    """
    from ..model.network import COUNT_LOSSES

    if cfg.loss in COUNT_LOSSES or cfg.target_smoothing:
        raise TrihrgeInputError(
            "other sections as references cannot be combined yet with a count loss "
            f"(loss={cfg.loss!r}) or denoised targets (target_smoothing={cfg.target_smoothing})",
            "leave out the references, or use the default loss='mse' and target_smoothing=0")


def check_references(adata: AnnData, references) -> list[AnnData]:
    """Return the references as a list after refusing what cannot serve as one.

    The section itself (or a copy or subset of it: the same spot names read from the same
    source) is refused, as are spots of another size (:func:`check_training_sections`) and a
    declared pixel size that the reference's lattice contradicts; a reference of another
    platform gets a warning.
    """
    refs = check_adatas(references, what="reference", min_spots=MIN_SECTION_SPOTS)
    for i, ref in enumerate(refs):
        sample_geometry(ref)  # a pixel size, before any work
        check_declared_pixel_size(ref, f"reference[{i}]")
        if ref is adata or _same_section(adata, ref):
            raise TrihrgeInputError(
                f"reference[{i}] is the section itself (the same spots read from the same "
                "source)", "pass other sections of the study as references: the section's "
                "own hidden spots would be seen in training")
    names = ["the section", *[f"reference[{i}] ({_section_name(r, i)})"
                              for i, r in enumerate(refs)]]
    check_training_sections([adata, *refs], names)
    platform = adata.uns.get("trihrge", {}).get("platform")
    for name, ref in zip(names[1:], refs, strict=True):
        other = ref.uns.get("trihrge", {}).get("platform")
        if platform and other and other != platform:
            warnings.warn(f"{name} is {other}, the section is {platform}: sections of another "
                          "platform rarely teach the image model anything and may hurt; the "
                          "blend gives them a low weight only through the section's own spots",
                          UserWarning, stacklevel=3)
    return refs


def _same_section(adata: AnnData, ref: AnnData) -> bool:
    info_a, info_r = adata.uns.get("trihrge", {}), ref.uns.get("trihrge", {})
    sources = {k: (info_a.get(k), info_r.get(k)) for k in ("source", "fullres_image_path")}
    same_source = any(a is not None and a == r for a, r in sources.values())
    shared = len(set(map(str, adata.obs_names)) & set(map(str, ref.obs_names)))
    return same_source and shared >= 0.5 * min(adata.n_obs, ref.n_obs)


def shared_genes(genes: Sequence[str], references: Sequence[AnnData]) -> list[str]:
    """Return the ``genes`` every reference measures (in their order); warn about the others."""
    keep = [g for g in genes if all(g in ref.var_names for ref in references)]
    if len(keep) < MIN_SHARED_GENES:
        raise TrihrgeInputError(
            f"the references measure only {len(keep)} of the section's {len(genes)} genes",
            "use references measured on the same gene panel (the same platform and species)")
    if len(keep) < len(genes):
        warnings.warn(f"{len(genes) - len(keep)} of the section's {len(genes)} selected genes "
                      "are missing from a reference and are left out of this run",
                      UserWarning, stacklevel=3)
    return keep


def reference_data(references: Sequence[AnnData], genes: Sequence[str], cfg: RunConfig,
                   encoder, windows_um: Sequence[float], section_features: np.ndarray,
                   progress: Progress, *, dense: bool = False,
                   weight: float | None = None) -> ReferenceData:
    """Embed every reference's spots and log-normalise its expression on ``genes``.

    ``section_features``: the section's own spot features (N, S, D), whose mean and spread
    each reference's standardised features are put on.
    """
    from ..io import get_image

    _, section_mean, section_sd = _standardise(section_features)
    feats, targets, neighbour, names, n_spots = [], [], [], [], []
    for i, ref in enumerate(references):
        ref = _nonzero_spots(ref)
        rc_um, _, _ = sample_geometry(ref)
        y = _log_expression(ref, genes)
        image = get_image(ref) if cfg.image_input else None
        x = _features(image, encoder, rc_um, windows_um, cfg, progress, dense=dense)
        if cfg.image_input:
            x = (_standardise(x)[0] * section_sd + section_mean).astype(np.float32)
        feats.append(x)
        targets.append(y)
        if cfg.neighbour_input:
            neighbour.append(idw_interpolate(rc_um, y, rc_um, cfg.n_neighbours,
                                             exclude_self=True))
        names.append(_section_name(ref, i))
        n_spots.append(ref.n_obs)
    return ReferenceData(features=np.concatenate(feats), targets=np.concatenate(targets),
                         neighbour=np.concatenate(neighbour) if neighbour else None,
                         names=names, n_spots=n_spots, weight=weight)
