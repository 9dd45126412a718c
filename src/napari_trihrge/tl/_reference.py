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

A reference can also be a trained model folder (``trihrge train``, or a run's model): it joins the
blend as one more candidate (:class:`ModelReference`, named ``model``, ``model_2``, ...), its
prediction at the section's spots from the image (and, for a model with the neighbour input, the
interpolated expression of the section's own training spots). It never saw the section, so its
prediction at a training spot is already out of fold; the per-gene blend weights, fit on the
section's spots, decide how much it counts. A run gene the model does not predict gets no part
from it (a constant candidate carries no weight).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
from ._config import RunConfig, check_neighbour_images
from ._shared import (
    _create_encoder,
    _features,
    _log_expression,
    _nonzero_spots,
    _predict,
    _section_name,
    _spot_features,
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
        x, _ = _spot_features(image, encoder, rc_um, windows_um, cfg, progress, dense=dense)
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


# --- trained model folders as candidates of the blend -------------------------------------------


def is_model_reference(item: Any) -> bool:
    """Whether ``item`` is a trained model (``TrainedModel``) or the path of a model folder."""
    from ..io.model_folder import INTEGRITY_RECORD, TrainedModel

    if isinstance(item, TrainedModel):
        return True
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        return (path / INTEGRITY_RECORD).is_file() or (path / "model.json").is_file()
    return False


def split_references(reference: Any) -> tuple[list | None, list]:
    """Return the sections (None without any) and the trained models among ``reference``."""
    if reference is None:
        return None, []
    sections, models = [], []
    for item in reference if isinstance(reference, (list, tuple)) else [reference]:
        (models if is_model_reference(item) else sections).append(item)
    return (sections or None), models


@dataclass
class ModelReference:
    """A trained model as a candidate of the section's blend (see the module docstring).

    ``nets`` take the section's raw features (its feature statistics folded in), ``columns`` is
    each run gene's output of the model (-1: the model lacks it); ``spot_rc_um`` / ``spot_y`` /
    ``spot_features`` are the section's spots with the model genes' expression and the model's
    features; ``source_rows`` the spots whose expression the neighbour input interpolates (the
    fit's training spots, :meth:`on`); ``own_feature_key`` (:func:`feature_key`) says when a
    run's features are the model's (then they are reused).
    """

    name: str
    nets: list
    columns: np.ndarray
    config: RunConfig
    encoder: Any
    image: Any
    windows_um: tuple[float, ...]
    dense: bool
    spot_rc_um: np.ndarray
    spot_y: np.ndarray | None
    spot_features: np.ndarray
    own_feature_key: tuple | None
    source_rows: np.ndarray | None = None
    neighbour_images: Any = None  # _shared.NeighbourImages of a model trained with them

    @property
    def n_shared_genes(self) -> int:
        return int((self.columns >= 0).sum())

    def on(self, rows: np.ndarray) -> ModelReference:
        """Return this model with the neighbour input from the section's spots ``rows``."""
        return replace(self, source_rows=np.asarray(rows))

    def _neighbour(self, rc_um: np.ndarray, exclude_self: bool) -> np.ndarray | None:
        if self.spot_y is None:
            return None
        rows = self.source_rows if self.source_rows is not None else slice(None)
        return idw_interpolate(self.spot_rc_um[rows], self.spot_y[rows], rc_um,
                               self.config.n_neighbours, exclude_self=exclude_self)

    def _run_genes(self, pred: np.ndarray) -> np.ndarray:
        out = np.zeros((len(pred), len(self.columns)), dtype=np.float32)
        has = self.columns >= 0
        out[:, has] = pred[:, self.columns[has]]
        return out

    def predict_sources(self) -> np.ndarray:
        """Return the prediction at the source spots, each spot's own measurement left out."""
        rows = self.source_rows if self.source_rows is not None else slice(None)
        nb = self._neighbour(self.spot_rc_um[rows], exclude_self=True)
        return self._run_genes(_predict(self._fits(), self.spot_features[rows], nb,
                                        self.config)[0])

    def predict(self, rc_um: np.ndarray, run_features: np.ndarray | None = None,
                run_feature_key: tuple | None = None) -> np.ndarray:
        """Return the prediction (M, run genes) at ``rc_um``.

        ``run_features`` are reused when they are the model's features (``run_feature_key``
        equal to the model's).
        """
        if (run_features is not None and run_feature_key is not None
                and run_feature_key == self.own_feature_key):
            feats = run_features
        else:
            feats = _features(self.image, self.encoder, rc_um, self.windows_um, self.config,
                              Progress(), dense=self.dense, cache=False,
                              neighbour_images=self.neighbour_images)
        nb = self._neighbour(rc_um, exclude_self=False)
        return self._run_genes(_predict(self._fits(), feats, nb, self.config)[0])

    def _fits(self) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(model=n) for n in self.nets]


def feature_key(cfg: RunConfig, encoder, windows_um: Sequence[float], dense: bool
                ) -> tuple | None:
    """Return what makes two runs' features the same (None without image input)."""
    if not cfg.image_input or encoder is None:
        return None
    return (encoder.config_key(), tuple(float(w) for w in windows_um), bool(dense),
            int(cfg.neighbour_images), cfg.neighbour_images_windows)


def load_model_references(models: Sequence[Any], cfg: RunConfig) -> list:
    """Load and check the trained models given as references, before any heavy work.

    The run must blend (``cfg.stacking``): a model joins as a candidate of the blend.
    """
    from ._model_io import ready_model

    if not models:
        return []
    if not cfg.stacking:
        raise TrihrgeInputError(
            "a trained model as a reference joins the per-gene blend, and this run has none "
            "(stacking is off)", "use the default stacking, or pass the sections the model "
            "was trained on instead of the model folder")
    return [ready_model(m) for m in models]


def model_references(models: Sequence[Any], adata: AnnData, genes: Sequence[str],
                     cfg: RunConfig, progress: Progress) -> list:
    """Make each loaded model a candidate of the section's blend on the run's ``genes``.

    ``adata`` is the section (spots with counts, in the run's spot order); the model's features
    are computed at its spots with the model's own encoder and windows, and its networks take
    the section's feature statistics when it standardises per section.
    """
    from ..io import get_image
    from ..io.model_folder import check_encoder
    from ._model_io import prediction_config

    out = []
    rc_um, _, _ = sample_geometry(adata)
    for i, model in enumerate(models):
        name = "model" if i == 0 else f"model_{i + 1}"
        where = f"the model reference {name}"
        index = {g: j for j, g in enumerate(model.genes)}
        columns = np.array([index.get(g, -1) for g in genes], dtype=np.int64)
        if int((columns >= 0).sum()) < MIN_SHARED_GENES:
            raise TrihrgeInputError(
                f"{where} predicts only {int((columns >= 0).sum())} of the run's "
                f"{len(genes)} genes", "use a model trained on the same kind of tissue and "
                "gene panel")
        spot_y = None
        if not model.image_only:
            spot_y = _log_expression(adata, model.genes)
            missing = [g for g, ok in zip(model.genes, ~np.isnan(spot_y).any(axis=0),
                                          strict=True) if not ok]
            if missing:
                raise TrihrgeInputError(
                    f"the section lacks {len(missing)} of {where}'s {len(model.genes)} genes "
                    f"(e.g. {', '.join(missing[:5])}), which its neighbour input needs",
                    "use an image-only model (trihrge train --image-only) or one trained on "
                    "the same gene panel")
        mcfg = replace(prediction_config(model, device=cfg.device, cache_dir=cfg.cache_dir,
                                         hf_token=cfg.hf_token), threads=cfg.threads)
        encoder = _create_encoder(mcfg)
        check_encoder(model.description, encoder)
        image = get_image(adata)
        windows = model.bag_windows_um
        check_neighbour_images(mcfg.neighbour_images, len(rc_um), f"the section ({where})")
        feats, images = _spot_features(image, encoder, rc_um, windows, mcfg, progress,
                                       dense=model.dense)
        mu = sd = None
        if model.per_section:
            _, mu, sd = _standardise(feats)
        out.append(ModelReference(
            name=name, nets=model.for_section(mu, sd), columns=columns, config=mcfg,
            encoder=encoder, image=image, windows_um=windows, dense=model.dense,
            spot_rc_um=rc_um, spot_y=spot_y, spot_features=feats,
            own_feature_key=feature_key(mcfg, encoder, windows, model.dense),
            neighbour_images=images))
    return out


def check_all_references(adata: AnnData, reference: Any, cfg: RunConfig
                         ) -> tuple[list[AnnData] | None, list]:
    """Return the sections (None without any) and the loaded trained models of ``reference``.

    Everything is checked before any heavy work.
    """
    sections, models = split_references(reference)
    if sections is not None:
        check_reference_levers(cfg)
    refs = check_references(adata, sections) if sections is not None else None
    for i, ref in enumerate(refs or []):
        check_neighbour_images(cfg.neighbour_images, ref.n_obs, f"reference[{i}]")
    return refs, load_model_references(models, cfg)


def model_summary(models: Sequence[ModelReference]) -> dict:
    """Return what a run records about its trained-model references ({} without any)."""
    if not models:
        return {}
    return {"reference_models": [m.name for m in models],
            "reference_model_genes": [m.n_shared_genes for m in models]}


def models_on(models: Sequence[ModelReference], rows: np.ndarray) -> list:
    """Return the model references with their neighbour input from the spots ``rows``."""
    return [m.on(rows) for m in models]
