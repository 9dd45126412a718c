"""TriHRGE network: a bag of image embeddings (+ optional neighbour expression) -> gene expression.

Input per location is a *bag* of ``S`` image embeddings ``(N, S, D)``, one per window size (for
example 112 um and 336 um). Each embedding goes through the same MLP (Linear-LayerNorm-GELU-Dropout,
twice); a learned per-scale embedding (S x H, N(0, 1) init) is added after the first Linear, before
the LayerNorm, so the shared MLP computes a window-specific function. (Adding it after the MLP, as
a plain bias, leaves the pooled vector a symmetric mix of the scales: on a synthetic task whose
target depends differently on each scale the validation MSE was 0.30 that way vs 0.11 this way,
against 0.10 for one MLP on the concatenated scales.)
Optionally a neighbour vector ``(N, G_nb)`` -- expression interpolated from nearby measured spots,
computed by the caller -- passes through its own MLP and joins the bag as one more element (always
the last one). Gated attention pooling (Ilse et al. 2018) weighs the bag elements; a decoder MLP
(Linear-BatchNorm-ReLU blocks) maps the pooled vector to ``n_genes`` outputs (linear while
training, clipped at 0 when predicting: see ``ModelConfig.output_activation``).
With ``neighbour_skip`` (neighbour genes = output genes), a per-gene learned weight ``w_g`` (0 at
the start) adds ``w_g * (neighbour_g - mean_g)`` before the output activation: where the image
says nothing about a gene (a smooth gradient), the model can fall back on interpolation instead of
rebuilding it through the decoder.

Input standardisation (per scale and dimension, and per neighbour gene) lives in buffers inside
the model, so a saved model is self-contained: :meth:`TriHRGENet.set_standardization` fills them.

Files: :func:`save_model` writes ``model.pt`` (``state_dict``) and ``model.json`` (config + extra
metadata); :func:`load_model` reads them back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._atomic import atomic_path
from ..errors import TrihrgeInputError

MODEL_WEIGHTS = "model.pt"
MODEL_META = "model.json"
FORMAT_NAME = "napari-trihrge-model"
FORMAT_VERSION = 1
OUTPUT_ACTIVATIONS = ("clip", "softplus", "relu", "none")
#: training losses: 'mse' on log-normalised expression; 'poisson' and 'negative_binomial' on raw
#: counts with the spot's library size as offset (the network outputs a log-rate)
LOSSES = ("mse", "poisson", "negative_binomial")
COUNT_LOSSES = ("poisson", "negative_binomial")


@dataclass
class ModelConfig:
    """Shape and width of a :class:`TriHRGENet`.

    ``n_scales`` image embeddings of ``in_dim`` each per location (0 = neighbour-only model, which
    needs ``neighbour_input=True``); ``neighbour_dim`` is the width of the neighbour vector
    (defaults to ``n_genes``). ``output_activation``: 'clip' (the default) trains the output
    as it is (identity, no dead zone) and clips predictions at 0 in eval mode; 'relu' (the
    reference's choice), 'softplus' or 'none' (identity always). ReLU outputs die for many sparse
    genes on real sections, which then get a constant prediction (docs/benchmarks-accuracy.md).
    ``loss``: 'mse' on log-normalised expression (the default), or 'poisson' /
    'negative_binomial' on raw counts: the output is then the log of the expected normalised
    count (per ``target_sum`` counts of the spot's library), trained as it is, and
    ``log(1 + exp(output)) = softplus(output)`` in eval mode, the log-normalised expression the
    other losses predict (so a count loss needs ``output_activation='softplus'``).
    ``output_rank``: 0 = a full output layer; k > 0 = gene programs: the decoder's last hidden
    layer goes to k programs and every gene is a linear mix of them (rank k).
    """

    in_dim: int
    n_genes: int
    n_scales: int
    hidden_dim: int = 1024
    attention_dim: int = 256
    decoder_dims: tuple[int, ...] = (1024, 2048, 2048)
    dropout: float = 0.1
    attention_dropout: float = 0.25
    neighbour_input: bool = False
    neighbour_dim: int | None = None
    neighbour_skip: bool = False
    output_activation: str = "clip"
    loss: str = "mse"
    output_rank: int = 0

    def __post_init__(self) -> None:
        self.decoder_dims = tuple(int(d) for d in self.decoder_dims)
        if self.neighbour_input and self.neighbour_dim is None:
            self.neighbour_dim = self.n_genes
        self.validate()

    @property
    def n_tokens(self) -> int:
        """Bag size: image scales plus one neighbour element when enabled."""
        return self.n_scales + int(self.neighbour_input)

    @property
    def last_hidden_dim(self) -> int:
        """Width of the layer the output layer reads: the gene programs or the decoder's last."""
        return self.output_rank if self.output_rank > 0 else self.decoder_dims[-1]

    def validate(self) -> None:
        problems = []
        if self.n_genes < 1:
            problems.append(f"n_genes must be >= 1 (got {self.n_genes})")
        if self.n_scales < 0:
            problems.append(f"n_scales must be >= 0 (got {self.n_scales})")
        if self.n_scales > 0 and self.in_dim < 1:
            problems.append(f"in_dim must be >= 1 with image input (got {self.in_dim})")
        if self.n_tokens < 1:
            problems.append("the model has no input: n_scales=0 needs neighbour_input=True")
        if self.neighbour_input and (self.neighbour_dim or 0) < 1:
            problems.append(f"neighbour_dim must be >= 1 (got {self.neighbour_dim})")
        if self.neighbour_skip and not (self.neighbour_input
                                        and self.neighbour_dim == self.n_genes):
            problems.append("neighbour_skip needs neighbour_input with one neighbour column per "
                            "output gene (neighbour_dim == n_genes)")
        if self.hidden_dim < 1 or self.attention_dim < 1 or any(d < 1 for d in self.decoder_dims):
            problems.append("hidden_dim, attention_dim and decoder_dims must be positive")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            problems.append("dropout and attention_dropout must be in [0, 1)")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            problems.append(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                            f"got {self.output_activation!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        elif self.loss in COUNT_LOSSES and self.output_activation != "softplus":
            problems.append(f"the {self.loss} loss predicts a log-rate, read as log-normalised "
                            "expression through softplus: it needs output_activation='softplus'")
        if isinstance(self.output_rank, bool) or not isinstance(self.output_rank, int) \
                or self.output_rank < 0:
            problems.append(f"output_rank must be a whole number >= 0 (got {self.output_rank!r})")
        if problems:
            raise TrihrgeInputError("invalid model configuration: " + "; ".join(problems),
                                    "fix the listed settings")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoder_dims"] = list(self.decoder_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrihrgeInputError(f"unknown model settings {unknown}",
                                    "the model was saved by a newer napari-trihrge; update it")
        try:
            return cls(**d)
        except TypeError as err:
            raise TrihrgeInputError(f"incomplete model settings ({err})",
                                    "the model.json file is damaged; retrain the model") from err


def _mlp(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
    )


class GatedAttentionPool(nn.Module):
    """Gated attention pooling over a bag: ``w^T (tanh(V h) * sigmoid(U h))``, softmax, dropout."""

    def __init__(self, dim: int, attention_dim: int, dropout: float):
        super().__init__()
        self.V = nn.Linear(dim, attention_dim)
        self.U = nn.Linear(dim, attention_dim)
        self.w = nn.Linear(attention_dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` (N, T, H) -> pooled (N, H) and attention weights (N, T) (before dropout)."""
        score = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        weights = torch.softmax(score.float(), dim=1).to(h.dtype)
        pooled = torch.einsum("nt,nth->nh", self.dropout(weights), h)
        return pooled, weights


class TriHRGENet(nn.Module):
    """Per-scale MLP + scale embedding, optional neighbour MLP, gated attention, decoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        h = c.hidden_dim
        self.image_mlp = _mlp(c.in_dim, h, c.dropout) if c.n_scales > 0 else None
        self.neighbour_mlp = (_mlp(int(c.neighbour_dim), h, c.dropout)
                              if c.neighbour_input else None)
        self.scale_embedding = nn.Parameter(torch.randn(c.n_scales, h))
        self.attention = GatedAttentionPool(h, c.attention_dim, c.attention_dropout)
        layers: list[nn.Module] = []
        prev = h
        for width in c.decoder_dims:
            layers += [nn.Linear(prev, width), nn.BatchNorm1d(width), nn.ReLU()]
            prev = width
        if c.output_rank > 0:  # gene programs: hidden -> k programs -> genes (rank k)
            layers.append(nn.Linear(prev, c.output_rank))
            prev = c.output_rank
        layers.append(nn.Linear(prev, c.n_genes))
        self.decoder = nn.Sequential(*layers)
        # negative binomial: per-gene log inverse dispersion (theta = 10 at the start)
        self.log_theta = (nn.Parameter(torch.full((c.n_genes,), math.log(10.0)))
                          if c.loss == "negative_binomial" else None)
        # per-gene weight of the skip path (0 at the start: the network learns how far to trust
        # the interpolated neighbour expression of each gene)
        self.skip_weight = nn.Parameter(torch.zeros(c.n_genes)) if c.neighbour_skip else None
        d_img = c.in_dim if c.n_scales > 0 else 0
        d_nb = int(c.neighbour_dim) if c.neighbour_input else 0
        self.register_buffer("feature_mean", torch.zeros(c.n_scales, d_img))
        self.register_buffer("feature_std", torch.ones(c.n_scales, d_img))
        self.register_buffer("neighbour_mean", torch.zeros(d_nb))
        self.register_buffer("neighbour_std", torch.ones(d_nb))

    @torch.no_grad()
    def init_output_bias(self, targets: np.ndarray) -> None:
        """Start the network at each gene's mean training expression (the output layer's bias),
        so the first steps learn structure instead of the per-gene level. Softplus outputs get
        the inverse softplus of the mean; count losses the log of the mean normalised count
        (``targets`` are then the normalised counts, see
        :func:`napari_trihrge.model.training.fit`)."""
        mean = torch.as_tensor(np.asarray(targets, dtype=np.float64).mean(axis=0))
        if self.config.loss in COUNT_LOSSES:
            mean = torch.log(mean.clamp_min(1e-3))
        elif self.config.output_activation == "softplus":
            mean = torch.where(mean > 20, mean, torch.log(torch.expm1(mean.clamp_min(1e-4))))
        last = self.decoder[-1]
        last.bias.copy_(mean.to(last.bias.dtype))

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_standardization(self, features: np.ndarray | torch.Tensor | None = None,
                            neighbour: np.ndarray | torch.Tensor | None = None) -> None:
        """Store mean/std of the training inputs: features (N, S, D) per scale and dim;
        neighbour (N, G_nb) per gene. A std below 1e-6 is replaced by 1 (constant inputs)."""

        def stats(x: np.ndarray | torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x,
                                dtype=torch.float64)
            mean = t.mean(dim=axis)
            std = t.std(dim=axis, correction=0)
            std = torch.where(std < 1e-6, torch.ones_like(std), std)
            return mean.float(), std.float()

        if features is not None and self.config.n_scales > 0:
            m, s = stats(features, 0)
            if m.shape != self.feature_mean.shape:
                raise TrihrgeInputError(
                    f"features have shape (N, {', '.join(map(str, m.shape))}) but the model "
                    f"expects (N, {self.config.n_scales}, {self.config.in_dim})",
                    "use features from the same encoder and windows as the model")
            self.feature_mean.copy_(m)
            self.feature_std.copy_(s)
        if neighbour is not None and self.config.neighbour_input:
            m, s = stats(neighbour, 0)
            if m.shape != self.neighbour_mean.shape:
                raise TrihrgeInputError(
                    f"neighbour input has {m.shape[0]} columns, the model expects "
                    f"{self.config.neighbour_dim}", "use the same genes as for training")
            self.neighbour_mean.copy_(m)
            self.neighbour_std.copy_(s)

    def check_inputs(self, bag: Any, neighbour: Any) -> None:
        """Raise TrihrgeInputError when inputs do not fit this model (shapes, presence)."""
        c = self.config
        if c.n_scales > 0:
            if bag is None:
                raise TrihrgeInputError("this model needs image features", "pass features")
            if tuple(bag.shape[1:]) != (c.n_scales, c.in_dim):
                raise TrihrgeInputError(
                    f"features have shape {tuple(bag.shape)}, the model expects "
                    f"(N, {c.n_scales}, {c.in_dim})",
                    "use features from the same encoder and windows as the model")
        if c.neighbour_input:
            if neighbour is None:
                raise TrihrgeInputError("this model needs the neighbour-expression input",
                                        "pass neighbour=(N, n_genes) interpolated expression")
            if neighbour.ndim != 2 or neighbour.shape[1] != c.neighbour_dim:
                raise TrihrgeInputError(
                    f"neighbour input has shape {tuple(neighbour.shape)}, the model expects "
                    f"(N, {c.neighbour_dim})", "use the same genes as for training")
            if bag is not None and c.n_scales > 0 and len(neighbour) != len(bag):
                raise TrihrgeInputError(
                    f"{len(bag)} feature rows but {len(neighbour)} neighbour rows",
                    "pass one neighbour vector per location")

    def last_hidden(self, bag: torch.Tensor | None, neighbour: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """The decoder's last hidden layer (N, ``config.last_hidden_dim``): the output is this times
        the output layer (``decoder[-1]``), plus the skip path, then the output activation
        (the factorised map store keeps it per location, :mod:`napari_trihrge.io.map_store`)."""
        return self.decoder[:-1](self._pool(bag, neighbour)[0])

    def _pool(self, bag: torch.Tensor | None, neighbour: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        tokens = []
        if c.n_scales > 0:
            x = (bag - self.feature_mean) / self.feature_std
            z = self.image_mlp[0](x) + self.scale_embedding.to(x.dtype)
            tokens.append(self.image_mlp[1:](z))
        if c.neighbour_input:
            nb = (neighbour - self.neighbour_mean) / self.neighbour_std
            tokens.append(self.neighbour_mlp(nb).unsqueeze(1))
        h = tokens[0] if len(tokens) == 1 else torch.cat(tokens, dim=1)
        return self.attention(h)

    def output_before_activation(self, bag: torch.Tensor | None,
                                 neighbour: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output layer plus the skip path (N, G), before the output activation (a count
        loss reads it as the log-rate), and the attention weights (N, S[+1])."""
        c = self.config
        pooled, weights = self._pool(bag, neighbour)
        out = self.decoder(pooled)
        if c.neighbour_skip:
            out = out + self.skip_weight.to(out.dtype) * (neighbour - self.neighbour_mean)
        return out, weights

    def forward(self, bag: torch.Tensor | None, neighbour: torch.Tensor | None = None,
                return_attention: bool = False):
        """``bag`` (N, S, D) raw features (None for a neighbour-only model), ``neighbour``
        (N, G_nb) -> predictions (N, G) [, attention (N, S[+1]); the neighbour is last]."""
        c = self.config
        out, weights = self.output_before_activation(bag, neighbour)
        if c.output_activation == "softplus":
            out = nn.functional.softplus(out)
        elif c.output_activation == "relu" or (c.output_activation == "clip"
                                               and not self.training):
            out = torch.relu(out)
        return (out, weights) if return_attention else out


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def save_model(directory: str | os.PathLike, model: TriHRGENet, config: ModelConfig | None = None,
               extra: dict[str, Any] | None = None, *, overwrite: bool = False) -> Path:
    """Write ``model.pt`` (state_dict) and ``model.json`` (config + ``extra``) into ``directory``.

    ``extra`` holds what is needed to use the model (gene names, windows_um, encoder name, ...);
    it must be JSON-serialisable (numpy arrays and scalars are converted). Each file is written to
    a temporary file and moved into place. Refuses to replace an existing model unless
    ``overwrite=True``. Returns the directory.
    """
    directory = Path(directory)
    config = config if config is not None else model.config
    if config.to_dict() != model.config.to_dict():
        raise TrihrgeInputError("the config passed to save_model does not match the model",
                                "pass the model's own config (model.config)")
    weights, meta = directory / MODEL_WEIGHTS, directory / MODEL_META
    if not overwrite and (weights.exists() or meta.exists()):
        raise TrihrgeInputError(f"a model is already saved in {directory}",
                                "pass overwrite=True or choose another folder")
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": config.to_dict(),
               "extra": dict(extra or {})}
    try:
        text = json.dumps(payload, indent=2, default=_json_default, allow_nan=True)
    except TypeError as err:
        raise TrihrgeInputError(f"model metadata cannot be saved: {err}",
                                "pass only JSON-friendly values (str, numbers, lists, dicts) "
                                "in extra") from err
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        torch.save(state, tmp)
    with atomic_path(meta) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return directory


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu"
               ) -> tuple[TriHRGENet, ModelConfig, dict[str, Any]]:
    """Read a model written by :func:`save_model`; returns ``(model in eval mode, config, extra)``."""
    directory = Path(directory)
    weights, meta = directory / MODEL_WEIGHTS, directory / MODEL_META
    for f in (meta, weights):
        if not f.is_file():
            raise TrihrgeInputError(f"no saved model: {f} is missing",
                                    "pick the folder that holds model.pt and model.json "
                                    "(the 'model' folder of a run)")
    try:
        payload = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrihrgeInputError(f"{meta} is not readable JSON ({err})",
                                "the model folder is damaged; retrain or restore it") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise TrihrgeInputError(f"{meta} is not a napari-trihrge model description",
                                "pick a folder written by napari-trihrge")
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise TrihrgeInputError(f"{meta} was written by a newer napari-trihrge "
                                f"(format {payload.get('version')})", "update napari-trihrge")
    config = ModelConfig.from_dict(payload.get("config") or {})
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle/zip errors of all kinds
        raise TrihrgeInputError(f"{weights} cannot be read ({type(err).__name__}: {err})",
                                "the model file is damaged or not a napari-trihrge model; "
                                "retrain or restore it") from err
    if not isinstance(state, dict):
        raise TrihrgeInputError(f"{weights} does not hold a state_dict",
                                "pick a folder written by napari-trihrge")
    model = TriHRGENet(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TrihrgeInputError(f"the weights in {weights} do not match model.json ({err})",
                                "model.pt and model.json come from different models; "
                                "retrain or restore the folder") from err
    model.to(map_location)
    model.eval()
    return model, config, dict(payload.get("extra") or {})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ModelConfig", "TriHRGENet", "GatedAttentionPool", "save_model", "load_model",
           "count_parameters", "MODEL_WEIGHTS", "MODEL_META", "LOSSES", "COUNT_LOSSES"]
