"""A trained network's trunk (up to its last hidden layer) for inference at many locations.

:class:`FusedTrunk` computes what :meth:`TriHRGENet.last_hidden
<napari_trihrge.model.network.TriHRGENet.last_hidden>` computes, in eval mode, to float32
rounding, with less work per location:

* the input standardisation and the per-scale embedding are folded into the first layers'
  weights and biases, and eval-mode BatchNorm into the decoder's Linear layers;
* the neighbour MLP's first layer takes the neighbour input's first-layer activations
  (:meth:`FusedTrunk.neighbour_first_layer`): the neighbour input is the kNN interpolation of the
  measured spots' expression, so that layer is the same interpolation of the spots' own
  first-layer values (spots x hidden, computed once), and no locations x genes matrix is built;
* the attention's two projections run as one product, the bag is held token by token
  (tokens x locations x hidden) so that no concatenation copies it.

The network itself (its training path) is not touched; the trunk is a copy of its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .network import TriHRGENet

#: locations per batch of :func:`trunk_last_hidden`
TRUNK_BATCH = 4096


@dataclass
class _Mlp:
    """The second half of a bag MLP: LayerNorm-GELU, Linear, LayerNorm-GELU."""

    norm1: tuple[torch.Tensor, torch.Tensor, float]
    weight2: torch.Tensor  # (H, H), transposed for ``x @ weight2``
    bias2: torch.Tensor
    norm2: tuple[torch.Tensor, torch.Tensor, float]

    @classmethod
    def from_sequential(cls, mlp: nn.Sequential, device: torch.device) -> _Mlp:
        def norm(layer: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
            return (_f32(layer.weight, device), _f32(layer.bias, device), float(layer.eps))

        return cls(norm(mlp[1]), _f32(mlp[4].weight.T, device), _f32(mlp[4].bias, device),
                   norm(mlp[5]))

    def __call__(self, first: torch.Tensor) -> torch.Tensor:
        """``first`` (n, H): the first Linear's output -> the MLP's output (n, H)."""
        h = F.gelu(_layer_norm(first, self.norm1))
        h = torch.addmm(self.bias2, h, self.weight2)
        return F.gelu(_layer_norm(h, self.norm2))


def _layer_norm(x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor, float]
                ) -> torch.Tensor:
    weight, bias, eps = norm
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _f32(t: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t).detach()
    return t.to(device=device, dtype=torch.float32).contiguous()


class FusedTrunk:
    """A :class:`TriHRGENet` up to its last hidden layer, its weights fused for inference.

    Parameters
    ----------
    net
        The trained network (its eval-mode behaviour is taken; the network is not changed).
    device
        Where the trunk's weights live and it runs (a torch device).
    """

    def __init__(self, net: TriHRGENet, device: str | torch.device = "cpu"):
        c = net.config
        self.config = c
        self.device = torch.device(device)
        dev = self.device
        with torch.no_grad():
            self.image_weight = self.image_bias = self.image_mlp = None
            if c.n_scales > 0:
                first = net.image_mlp[0]
                w = first.weight.double()  # (H, D)
                std = net.feature_std.double()  # (S, D)
                mean = net.feature_mean.double()
                # per scale: W ((x - mean_s) / std_s) + b + embedding_s
                scaled = w[None] / std[:, None, :]  # (S, H, D)
                bias = (first.bias.double()[None] + net.scale_embedding.double()
                        - torch.einsum("shd,sd->sh", scaled, mean))
                self.image_weight = _f32(scaled.transpose(1, 2), dev)  # (S, D, H)
                self.image_bias = _f32(bias, dev)  # (S, H)
                self.image_mlp = _Mlp.from_sequential(net.image_mlp, dev)
            self.neighbour_mlp = None
            if c.neighbour_input:
                first = net.neighbour_mlp[0]
                # ((nb - mean) / std) @ W.T + b: the matrix applied to the centred input
                self.neighbour_matrix = (first.weight.double()
                                         / net.neighbour_std.double()[None]).T.cpu().numpy()
                self.neighbour_centre = net.neighbour_mean.double().cpu().numpy()
                self.neighbour_bias = first.bias.double().cpu().numpy()
                self.neighbour_mlp = _Mlp.from_sequential(net.neighbour_mlp, dev)
            att = net.attention
            self.attention_dim = int(att.V.out_features)
            self.attention_weight = _f32(torch.cat([att.V.weight, att.U.weight]).T, dev)
            self.attention_bias = _f32(torch.cat([att.V.bias, att.U.bias]), dev)
            self.score_weight = _f32(att.w.weight.T, dev)  # (A, 1)
            self.score_bias = _f32(att.w.bias, dev)
            self.decoder = _fold_decoder(net.decoder[:-1], dev)

    # -- the neighbour input ---------------------------------------------------------------
    def neighbour_first_layer_of(self, neighbour: np.ndarray) -> torch.Tensor:
        """The neighbour MLP's first Linear (standardisation included) on neighbour inputs
        ``neighbour`` (n, G_nb): (n, H) float32."""
        out = ((np.asarray(neighbour, dtype=np.float64) - self.neighbour_centre)
               @ self.neighbour_matrix + self.neighbour_bias)
        return torch.from_numpy(out.astype(np.float32)).to(self.device)

    def neighbour_table(self, spots_expression: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`neighbour_first_layer` needs of the spots whose kNN interpolation is the
        neighbour input: (spots, H) and (H,) (:func:`napari_trihrge.neighbours.idw_linear_table`)."""
        from ..neighbours import idw_linear_table

        return idw_linear_table(spots_expression, self.neighbour_matrix, self.neighbour_centre)

    def neighbour_first_layer(self, idx: np.ndarray, w: np.ndarray,
                              table: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        """The neighbour MLP's first Linear at locations whose neighbour input is the kNN
        interpolation ``idx``, ``w`` (M, k) of the spots of ``table`` (:meth:`neighbour_table`):
        (M, H) float32."""
        from ..neighbours import idw_apply_linear

        out = idw_apply_linear(idx, w, table[0], table[1], self.neighbour_bias)
        return torch.from_numpy(out).to(self.device)

    # -- the trunk -------------------------------------------------------------------------
    def last_hidden(self, features: torch.Tensor | None,
                    neighbour_first: torch.Tensor | None = None, *,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer (N, ``config.last_hidden_dim``) float32.

        ``features`` (N, S, D) raw image features (None without image input);
        ``neighbour_first`` (N, H) the neighbour MLP's first Linear (:meth:`neighbour_first_layer`
        or :meth:`neighbour_first_layer_of`; None without neighbour input); ``out``: written
        into that (N, H) tensor on the trunk's device, and returned.
        """
        c = self.config
        n = len(features) if features is not None else len(neighbour_first)
        h_dim = c.hidden_dim
        bag = torch.empty((c.n_tokens, n, h_dim), dtype=torch.float32, device=self.device)
        if c.n_scales > 0:
            x = features.to(device=self.device, dtype=torch.float32)
            for s in range(c.n_scales):
                torch.addmm(self.image_bias[s], x[:, s], self.image_weight[s], out=bag[s])
            image = bag[:c.n_scales].view(-1, h_dim)
            image.copy_(self.image_mlp(image))
        if c.neighbour_input:
            bag[-1] = self.neighbour_mlp(neighbour_first.to(self.device))
        flat = bag.view(-1, h_dim)
        gates = torch.addmm(self.attention_bias, flat, self.attention_weight)
        a = self.attention_dim
        gated = torch.tanh(gates[:, :a]).mul_(torch.sigmoid(gates[:, a:]))
        score = torch.addmm(self.score_bias, gated, self.score_weight).view(c.n_tokens, n)
        weights = torch.softmax(score, dim=0)
        pooled = bag[0] * weights[0, :, None]
        for t in range(1, c.n_tokens):
            pooled.addcmul_(bag[t], weights[t, :, None])
        return self.decoder(pooled, out=out)


class _FoldedDecoder:
    """The decoder up to its output layer, each BatchNorm folded into its Linear."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, bool]]):
        self.layers = layers  # (weight transposed, bias, ReLU after)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        for i, (weight, bias, relu) in enumerate(self.layers):
            last = i == len(self.layers) - 1 and out is not None
            x = torch.addmm(bias, x, weight, out=out) if last else torch.addmm(bias, x, weight)
            if relu:
                x.relu_()
        if out is not None and not self.layers:  # the output layer alone: the pooled vector
            x = out.copy_(x)
        return x


def _fold_decoder(modules: nn.Sequential, device: torch.device) -> _FoldedDecoder:
    layers: list[list[Any]] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            layers.append([module.weight.double(), module.bias.double(), False])
        elif isinstance(module, nn.BatchNorm1d):  # eval mode: a per-unit affine map
            scale = module.weight.double() / torch.sqrt(module.running_var.double()
                                                        + module.eps)
            weight, bias, _ = layers[-1]
            layers[-1][0] = weight * scale[:, None]
            layers[-1][1] = (bias - module.running_mean.double()) * scale \
                + module.bias.double()
        elif isinstance(module, nn.ReLU):
            layers[-1][2] = True
        else:  # pragma: no cover - the decoder holds only these
            raise TypeError(f"cannot fold a {type(module).__name__} into the decoder")
    return _FoldedDecoder([(_f32(w.T, device), _f32(b, device), relu)
                           for w, b, relu in layers])


def trunk_last_hidden(trunks: Sequence[FusedTrunk], features: np.ndarray | None, *,
                      knn: tuple[np.ndarray, np.ndarray] | None = None,
                      tables: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
                      neighbour: np.ndarray | None = None,
                      batch_size: int = TRUNK_BATCH) -> np.ndarray:
    """Each trunk's last hidden layer at every location: (trunks, M, H) float32.

    ``features`` (M, S, D) raw image features; the neighbour input either as the kNN weights
    ``knn`` = (idx, w) (M, k) with each trunk's :meth:`FusedTrunk.neighbour_table` in
    ``tables``, or as the matrix ``neighbour`` (M, G_nb). Runs under ``torch.inference_mode``;
    size the CPU threads around it (:func:`napari_trihrge.threads.cpu_threads`).
    """
    n = len(features) if features is not None else len(knn[0] if knn is not None
                                                         else neighbour)
    out = np.empty((len(trunks), n, trunks[0].config.last_hidden_dim), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            x = None if features is None else torch.from_numpy(
                np.ascontiguousarray(features[s:e], dtype=np.float32))
            for i, trunk in enumerate(trunks):
                first = None
                if trunk.config.neighbour_input:
                    if knn is not None:
                        first = trunk.neighbour_first_layer(knn[0][s:e], knn[1][s:e], tables[i])
                    else:
                        first = trunk.neighbour_first_layer_of(neighbour[s:e])
                features_in = x if trunk.config.n_scales > 0 else None
                if trunk.device.type == "cpu":  # straight into the result
                    trunk.last_hidden(features_in, first, out=torch.from_numpy(out[i, s:e]))
                else:
                    out[i, s:e] = trunk.last_hidden(features_in, first).cpu().numpy()
    return out


__all__ = ["FusedTrunk", "trunk_last_hidden", "TRUNK_BATCH"]
