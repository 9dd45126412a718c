"""The factorised map store: every gene's dense map, computed on demand.

A dense map pixel's value is the per-gene blend (:mod:`napari_trihrge.model.stacking`) of
candidates that are each linear in something per location, times something per gene:

* ``knn<k>``: the inverse-distance weights of the location's ``k`` nearest measured spots
  (per location: spot indices and weights) times the spots' measured expression (per gene),
  or with the detail transfer (enhance's ``map_method='residual'``) the spots' level: the
  expression minus the weighted image candidates at the spots;
* ``ridge``: the location's standardised ridge inputs times the ridge coefficients;
* ``network``: each fold network's last hidden layer times its output layer, plus the skip
  path (the kNN interpolation times a per-gene weight), clipped at 0 per network, then the
  mean (and the spread) over the networks.

The blend adds the candidates with per-gene weights and clips at 0; the spread is the
networks' spread times the gene's network weight. So the store keeps what the per-location
factors are made of (``locations/``: the kNN weights and, since format 3, the image
features; ``inputs/``: the fold networks up to their last hidden layer and the ridge head's
standardisation, :class:`FactorModel`) and the per-gene weights (``genes/``), and
:class:`FactorMaps` computes the factors of a chunk of locations when a map needs them (kept
in memory), then any gene's map (and spread): equal to the maps the engine predicts directly
to float rounding with float32 inputs (in memory), within :data:`FLOAT16_TOLERANCE` with the
float16 ones a store on disk holds by default. Stores of format 1 and 2 hold the factors
themselves (each network's last hidden layer, the ridge inputs) and are read as they are.
The layout is versioned (:data:`STORE_VERSION`) and documented in ``docs/map-store.md``. Every file of a finished store is listed with its size in the store's
attributes, so a truncated copy is refused instead of shown with holes.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import refuse_overwrite, replace_folder
from ..errors import TrihrgeInputError
from .writers import as_dtype

STORE_FORMAT = "napari-trihrge-map-store"
STORE_VERSION = 3
#: format versions this version reads (1: float32 factors by default, one chunk per network,
#: no ``genes/spots_level``; 1 and 2: the factors stored, not their inputs)
READABLE_VERSIONS = (1, 2, 3)
#: the version a store holding the factors themselves is written as (format 2's layout)
FACTORS_VERSION = 2
#: the store's name in a run folder
STORE_NAME = "maps.store.zarr"
#: map locations per chunk of a per-location factor
LOCATION_CHUNK = 32768
#: genes computed together when many are asked for (bounded memory: networks x locations x
#: this, 84 MB for five networks and a chunk): the networks' output product is 1.6x as fast
#: per gene with 128 genes as with 32 (docs/map-store.md, "Materialising every gene")
GENE_BLOCK = 128
#: up to this many genes, the ridge head's product is numpy's einsum (torch's batched
#: product is 10x slower for one gene, the gene switch's case; faster for many)
FEW_GENES = 2
#: bytes of per-location factors (as float32) a store's maps keep in memory once read: within
#: it every further gene is computed without reading the store again; beyond it the location
#: chunks are read again when needed, so memory does not grow with the map's area
FACTOR_CACHE_BYTES = 2 * 2**30
#: single genes whose map and spread are kept once computed (the viewer shows a gene's map,
#: then its spread layer, from one pass)
RECENT_GENES = 4
#: the dtype of the dense per-location arrays of a store on disk (the image features, stored
#: standardised; format 1-2: the hidden layers and ridge inputs): float16 halves them; maps
#: from it differ from the direct ones by at most :data:`FLOAT16_TOLERANCE` (measured:
#: docs/map-store.md, "Exactness, measured"). Kept in memory (no path) they stay float32.
STORE_FACTOR_DTYPE = np.dtype(np.float16)
#: largest difference (log-normalised expression) allowed between maps from float16 factors
#: and the maps predicted directly (tests/io/test_map_store.py); float32 factors: float rounding
FLOAT16_TOLERANCE = 1e-3
#: the compressor of the store and of materialised maps (Blosc zstd, byte shuffle), chosen by
#: ``benchmarks/bench_map_store.py`` and ``bench_store_precision.py`` (docs/map-store.md, "Disk")
COMPRESSOR = {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}
#: the activations a network output can have in eval mode (model.network.OUTPUT_ACTIVATIONS)
ACTIVATIONS = ("clip", "relu", "softplus", "none")
#: per-gene arrays (``genes/<name>``), None when the run did not use that part
GENE_ARRAYS = ("blend_weights", "candidate_mean", "target_mean", "spots_expression",
               "spots_level", "ridge_coef", "ridge_intercept", "network_weight", "network_bias",
               "network_skip", "network_neighbour_mean")

#: the most locations of a map a viewer computes at once; a larger map (a fine stride over a
#: large section) is shown at every n-th pixel (:meth:`FactorMaps.display_step`)
DISPLAY_LOCATIONS = 400_000

#: the factor cache of maps made for a viewer now (:func:`for_display`), None: not for one
_DISPLAY_CACHE: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "trihrge_display_cache", default=None)


@contextmanager
def for_display(cache_bytes: int | None) -> Iterator[None]:
    """Inside, factorised maps made in this thread are for a viewer that shows every gene next.

    They keep up to ``cache_bytes`` of factors (at least :data:`FACTOR_CACHE_BYTES`) and,
    when the viewer shows them whole (:meth:`FactorMaps.display_step` is 1), a map at a few
    pixels (:meth:`FactorMaps.values_at`: the consistency check, the overview) computes the
    factors of every location of the chunks it touches and keeps them, so that each
    location's networks run once. ``None``: nothing changes.
    """
    token = _DISPLAY_CACHE.set(None if cache_bytes is None
                               else max(FACTOR_CACHE_BYTES, int(cache_bytes)))
    try:
        yield
    finally:
        _DISPLAY_CACHE.reset(token)


def compressor() -> Any:
    """Return the Blosc compressor of :data:`COMPRESSOR` (numcodecs)."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
               "bitshuffle": Blosc.BITSHUFFLE}[COMPRESSOR["shuffle"]]
    return Blosc(cname=COMPRESSOR["cname"], clevel=COMPRESSOR["clevel"], shuffle=shuffle)


@dataclass
class GeneWeights:
    """Everything a gene's map needs besides the per-location factors.

    Arrays are indexed by gene on their gene axis; None where the run has no such part.
    """

    gene_names: list[str]
    candidates: list[str]  # blend candidates ('knn6', 'knn12', 'ridge', 'network'), in order
    activation: str = "clip"  # the networks' output activation
    skip_k: int | None = None  # neighbours of the skip path's interpolation (None: no skip)
    blend_weights: np.ndarray | None = None  # (G, C); None: the networks alone, no blend
    candidate_mean: np.ndarray | None = None  # (C, G)
    target_mean: np.ndarray | None = None  # (G,)
    spots_expression: np.ndarray | None = None  # (spots, G) measured, log-normalised
    spots_level: np.ndarray | None = None  # (spots, G) what the blend's kNN interpolate, or None
    ridge_coef: np.ndarray | None = None  # (G, F)
    ridge_intercept: np.ndarray | None = None  # (G,)
    network_weight: np.ndarray | None = None  # (N, G, H)
    network_bias: np.ndarray | None = None  # (N, G)
    network_skip: np.ndarray | None = None  # (N, G)
    network_neighbour_mean: np.ndarray | None = None  # (N, G)

    @property
    def n_networks(self) -> int:
        """Number of networks whose weights are held (0 without any)."""
        return 0 if self.network_weight is None else int(self.network_weight.shape[0])

    @property
    def with_std(self) -> bool:
        """Whether the maps have a spread layer (several networks, and the network used)."""
        return self.n_networks > 1 and "network" in self.candidates

    def knn_ks(self) -> list[int]:
        """Return the neighbour counts whose weights the locations need."""
        ks = {int(c[3:]) for c in self.candidates if c.startswith("knn")}
        if self.skip_k is not None:
            ks.add(int(self.skip_k))
        return sorted(ks)


@dataclass
class LocationFactors:
    """Per-location factors of map locations (the mask's pixels in row-major order).

    Or what they are made of (format 3): the kNN weights and the image ``features``, from which
    a :class:`FactorModel` computes ``ridge`` and ``hidden``.
    """

    knn: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # k -> idx, w
    ridge: np.ndarray | None = None  # (M, F) standardised ridge inputs
    hidden: np.ndarray | None = None  # (N, M, H) each network's last hidden layer
    features: np.ndarray | None = None  # (M, S, D) image features (the networks' input)

    def __len__(self) -> int:
        for arr in (self.ridge, self.features, *(w for _, w in self.knn.values())):
            if arr is not None:
                return len(arr)
        return 0 if self.hidden is None else int(self.hidden.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """Return the factors as arrays by name (name -> array), as stored under ``locations/``."""
        out: dict[str, np.ndarray] = {}
        for k, (idx, w) in sorted(self.knn.items()):
            out[f"knn{k}_index"] = idx
            out[f"knn{k}_weight"] = w
        if self.ridge is not None:
            out["ridge_inputs"] = self.ridge
        if self.hidden is not None:
            out["network_hidden"] = self.hidden
        if self.features is not None:
            out["image_features"] = self.features
        return out

    @classmethod
    def concatenate(cls, parts: Sequence[LocationFactors]) -> LocationFactors:
        """Join the factors of consecutive blocks of locations into one."""
        if not parts:
            return cls()
        first = parts[0]
        return cls(
            knn={k: (np.concatenate([p.knn[k][0] for p in parts]),
                     np.concatenate([p.knn[k][1] for p in parts])) for k in first.knn},
            ridge=(None if first.ridge is None
                   else np.concatenate([p.ridge for p in parts])),
            hidden=(None if first.hidden is None
                    else np.concatenate([p.hidden for p in parts], axis=1)),
            features=(None if first.features is None
                      else np.concatenate([p.features for p in parts])))


@dataclass
class FactorModel:
    """What turns a location's stored inputs into its factors (format 3).

    The fold networks up to their last hidden layer and the ridge head's standardisation,
    applied to the location's image features and its neighbour input: the kNN interpolation
    (``neighbour_k`` neighbours) of the spots' expression (``genes/spots_expression``).
    """

    networks: list[Any] = field(default_factory=list)  # model.network.TriHRGENet
    ridge: Any = None  # model.stacking.RidgeHead: its standardisation (coefficients: genes/)
    neighbour_k: int | None = None  # None: no neighbour input
    image_input: bool = True
    device: str = "auto"
    threads: int | str | None = None  # CPU threads of the networks (threads.cpu_threads)
    #: a store holds the image features as ``(features - feature_mean) / feature_scale``
    #: (S, D), set from the first locations written: float16 keeps each one's variation
    feature_mean: np.ndarray | None = None
    feature_scale: np.ndarray | None = None
    _prepared_for: Any = field(default=None, init=False, repr=False, compare=False)
    _prepare_lock: Any = field(default_factory=threading.Lock, init=False, repr=False,
                               compare=False)

    def knn_ks(self, weights: GeneWeights) -> list[int]:
        """Return the neighbour counts whose kNN weights the locations need."""
        ks = set(weights.knn_ks())
        if self.neighbour_k is not None:
            ks.add(int(self.neighbour_k))
        return sorted(ks)

    def factors(self, inputs: LocationFactors, spots_expression: np.ndarray | None
                ) -> LocationFactors:
        """Return the factors (kNN weights, ridge inputs, hidden layers) of ``inputs``.

        The networks run as :class:`~napari_trihrge.model.trunk.FusedTrunk` s, and the neighbour
        input enters the networks' and the ridge head's first (linear) layer through the spots'
        own values (``spots_expression``): no locations x genes interpolation is built.
        """
        from ..model.trunk import trunk_last_hidden
        from ..neighbours import idw_apply_linear
        from ..threads import cpu_threads

        knn = None if self.neighbour_k is None else inputs.knn[int(self.neighbour_k)]
        feats = inputs.features if self.image_input else None
        out = LocationFactors(knn=dict(inputs.knn))
        if not len(inputs):
            return out
        trunks, tables, ridge_table = self._prepared(spots_expression)
        if self.ridge is not None:
            pcs = None if ridge_table is None else idw_apply_linear(*knn, *ridge_table)
            out.ridge = self.ridge.standardised_inputs(feats, None, neighbour_pcs=pcs
                                                       ).astype(np.float32)
        if trunks:
            with cpu_threads(self.threads):
                out.hidden = trunk_last_hidden(trunks, feats, knn=knn, tables=tables)
        return out

    def _prepared(self, spots_expression: np.ndarray | None) -> tuple[list, list, Any]:
        """Return the fused trunks and the spots' first-layer tables (once per expression)."""
        from ..device import resolve_device
        from ..model.trunk import FusedTrunk

        with self._prepare_lock:
            kept = self._prepared_for
            if kept is not None and kept[0] is spots_expression:
                return kept[1]
            device = resolve_device(self.device)
            trunks = [FusedTrunk(net, device) for net in self.networks]
            use_knn = self.neighbour_k is not None
            tables = [trunk.neighbour_table(spots_expression) if use_knn else None
                      for trunk in trunks]
            ridge_table = (self.ridge.neighbour_pcs_table(spots_expression)
                           if use_knn and self.ridge is not None else None)
            prepared = (trunks, tables, ridge_table)
            self._prepared_for = (spots_expression, prepared)
            return prepared

    def set_feature_scaling(self, features: np.ndarray) -> None:
        """Set the stored features' standardisation from these locations (if not set)."""
        if self.feature_mean is None:
            x = np.asarray(features, dtype=np.float64)
            sd = x.std(axis=0)
            self.feature_mean = x.mean(axis=0).astype(np.float32)
            self.feature_scale = np.where(sd < 1e-6, 1.0, sd).astype(np.float32)

    def write(self, group: Any, **kw: Any) -> None:
        """Write the networks and the ridge head's standardisation into the zarr ``group``.

        The networks' configuration and weights, but the output layer (``genes/`` holds it).
        """
        group.attrs.update({"neighbour_k": self.neighbour_k, "image_input": self.image_input,
                            "networks": [m.config.to_dict() for m in self.networks]})
        for i, net in enumerate(self.networks):  # one flat array each: few files to write
            tensors, integers, flat = [], {}, []
            for key, value in _trunk_state(net).items():
                value = value.detach().cpu()
                if value.is_floating_point():
                    tensors.append([key, list(value.shape)])
                    flat.append(value.float().numpy().ravel())
                else:  # BatchNorm's step counters
                    integers[key] = value.tolist()
            data = np.concatenate(flat) if flat else np.zeros(0, np.float32)
            arr = group.create_array(f"network{i}", data=data, chunks=(max(1, len(data)),),
                                     **kw)
            arr.attrs.update({"tensors": tensors, "integers": integers})
        arrays = {"feature_mean": self.feature_mean, "feature_scale": self.feature_scale}
        if self.ridge is not None:
            arrays.update({f"ridge_{name}": getattr(self.ridge, name) for name in RIDGE_ARRAYS})
        for name, value in arrays.items():
            if value is not None:
                group.create_array(name, data=np.asarray(value), **kw)

    @classmethod
    def read(cls, group: Any) -> FactorModel:
        """Read what :meth:`write` wrote (raises on a damaged or inconsistent group)."""
        import torch

        from ..model.network import ModelConfig, TriHRGENet
        from ..model.stacking import RidgeHead

        attrs = dict(group.attrs)
        networks = []
        for i, config in enumerate(attrs["networks"]):
            net = TriHRGENet(ModelConfig.from_dict(config))
            stored = group[f"network{i}"]
            flat, layout = np.asarray(stored[...]), dict(stored.attrs)
            state, start = {}, 0
            for key, shape in layout["tensors"]:
                size = int(np.prod(shape, dtype=np.int64))
                state[key] = torch.from_numpy(flat[start:start + size].reshape(shape).copy())
                start += size
            if start != len(flat):
                raise ValueError(f"network {i}: {len(flat)} stored weights, its layout "
                                 f"lists {start}")
            state.update({k: torch.tensor(v) for k, v in layout["integers"].items()})
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or set(missing) != set(_output_layer_keys(net)):
                raise ValueError(f"network {i}: weights do not match its configuration "
                                 f"(missing {sorted(missing)[:3]}, unexpected "
                                 f"{sorted(unexpected)[:3]})")
            networks.append(net.eval())
        ridge = None
        if "ridge_feature_mean" in group:
            ridge = RidgeHead(None, **{name: (np.asarray(group[f"ridge_{name}"][...])
                                              if f"ridge_{name}" in group else None)
                                       for name in RIDGE_ARRAYS})
        return cls(networks=networks, ridge=ridge,
                   neighbour_k=None if attrs.get("neighbour_k") is None
                   else int(attrs["neighbour_k"]),
                   image_input=bool(attrs["image_input"]),
                   **{name: (np.asarray(group[name][...]) if name in group else None)
                      for name in ("feature_mean", "feature_scale")})


#: the ridge head's standardisation (``inputs/ridge_<name>``)
RIDGE_ARRAYS = ("feature_mean", "feature_sd", "neighbour_mean", "neighbour_axes")


def _output_layer_keys(net: Any) -> list[str]:
    """Return the state keys of a network's output layer (stored under ``genes/``)."""
    last = f"decoder.{len(net.decoder) - 1}."
    return [k for k in net.state_dict() if k.startswith(last)]


def _trunk_state(net: Any) -> dict[str, Any]:
    skip = set(_output_layer_keys(net))
    return {k: v for k, v in net.state_dict().items() if k not in skip}


# -----------------------------------------------------------------------------------------
# Computing maps from the factors
# -----------------------------------------------------------------------------------------
def _networks_linear(hidden: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Every network's output layer at once: (N, M, H) hidden x (N, g, H) -> (N, M, g) float32.

    One batched product in torch (faster than numpy's for a few genes: bound by reading the
    hidden layers from memory). Also the ridge head's product (N = 1).
    """
    import torch

    h = torch.from_numpy(np.asarray(hidden, dtype=np.float32))
    n, m = h.shape[:2]
    if weight.shape[1] == 1 and m and m % 2 == 0 and h.is_contiguous():
        # one gene (the viewer): each network's locations in two halves, so that both
        # threads have equal shares (five networks split 3 + 2); each value is the same
        # matrix-vector product as unsplit. The weights as a transposed view, the layout
        # torch's matrix-vector kernel is picked for (also for a dimension of length 1).
        w = torch.from_numpy(np.repeat(np.asarray(weight, dtype=np.float32), 2, axis=0))
        with torch.no_grad():
            halves = h.view(2 * n, m // 2, h.shape[2])
            return torch.bmm(halves, w.transpose(1, 2)).view(n, m, 1).numpy()
    w = torch.from_numpy(np.ascontiguousarray(weight.transpose(0, 2, 1), dtype=np.float32))
    with torch.no_grad():
        return torch.bmm(h, w).numpy()


def _mean_and_spread(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and population standard deviation over the networks (axis 0), network by network.

    In place where it can (no (networks, locations, genes) temporaries); the spread is None
    for one network.
    """
    n = len(stacked)
    mean = stacked.sum(axis=0, dtype=np.float32)
    mean *= np.float32(1.0 / n)
    if n == 1:
        return mean, None
    var = np.zeros_like(mean)
    diff = np.empty_like(mean)
    for i in range(n):
        np.subtract(stacked[i], mean, out=diff)
        diff *= diff
        var += diff
    var *= np.float32(1.0 / n)
    return mean, np.sqrt(var, out=var)


def gene_block_values(weights: GeneWeights, factors: LocationFactors, genes: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Compute the maps of the genes with indices ``genes`` at every location of ``factors``.

    Returns values (M, g) float32 and the spread (M, g) float32 (None without one), computed
    as the engine computes them (:func:`napari_trihrge.tl._shared._stacked_predict`), to
    float32 rounding: the products in torch, the per-element work in place in float32 (no
    temporaries of every network), the kNN terms as sparse products.
    """
    from ..neighbours import idw_apply

    genes = np.asarray(genes, dtype=np.int64)
    knn_done: dict[int, np.ndarray] = {}

    def knn(k: int, values: np.ndarray | None = None) -> np.ndarray:
        # the spots' expression (or ``values``: the residual form's levels) interpolated; the
        # skip path and the kNN candidate share k=12 of the expression: computed once
        idx, w = factors.knn[k]
        if values is not None:
            return idw_apply(idx, w, values[:, genes])
        if k not in knn_done:
            knn_done[k] = idw_apply(idx, w, weights.spots_expression[:, genes])
        return knn_done[k]

    def per_gene(arr: np.ndarray) -> np.ndarray:
        return np.asarray(arr, dtype=np.float32)[None]  # (1, g): broadcast over locations

    net_mean = net_std = None
    if "network" in weights.candidates:
        lin = _networks_linear(factors.hidden, weights.network_weight[:, genes])
        bias = weights.network_bias[:, genes].astype(np.float32)
        skip = nb = tmp = None
        if weights.skip_k is not None:  # skip * (kNN - neighbour mean): the mean in the bias
            skip = weights.network_skip[:, genes].astype(np.float32)
            bias = bias - skip * weights.network_neighbour_mean[:, genes]
            nb, tmp = knn(weights.skip_k), np.empty(lin.shape[1:], dtype=np.float32)
        for i in range(len(lin)):
            lin[i] += bias[i][None]
            if skip is not None:
                np.multiply(nb, skip[i][None], out=tmp)
                lin[i] += tmp
        if weights.activation in ("clip", "relu"):
            np.maximum(lin, np.float32(0.0), out=lin)
        elif weights.activation == "softplus":  # torch.nn.functional.softplus (threshold 20)
            lin = np.where(lin > 20, lin, np.logaddexp(np.float32(0.0), lin)).astype(np.float32)
        net_mean, net_std = _mean_and_spread(lin)
    if weights.blend_weights is None:  # the networks alone
        return net_mean, net_std
    blend = weights.blend_weights[genes].astype(np.float64)  # (g, C)
    # target mean - sum of weight x candidate mean: one constant per gene
    offset = weights.target_mean[genes] - np.einsum(
        "gc,cg->g", blend, weights.candidate_mean[:, genes].astype(np.float64))
    out = np.empty((len(factors), len(genes)), dtype=np.float32)
    out[:] = per_gene(offset)
    scratch = np.empty_like(out)
    for c, name in enumerate(weights.candidates):
        if name.startswith("knn"):
            part = knn(int(name[3:]), weights.spots_level)
        elif name == "ridge":
            coef = weights.ridge_coef[genes].astype(np.float32)
            if len(genes) <= FEW_GENES:  # a gene or two (the viewer): 10x faster than bmm
                part = np.einsum("mf,gf->mg", factors.ridge, coef)
            else:
                part = _networks_linear(factors.ridge[None], coef[None])[0]
            part += per_gene(weights.ridge_intercept[genes])
        else:
            part = net_mean
        out += np.multiply(part, per_gene(blend[:, c]), out=scratch)
    values = np.maximum(out, np.float32(0.0), out=out)
    std = None
    if net_std is not None:
        net_std *= per_gene(blend[:, weights.candidates.index("network")])
        std = net_std
    return values, std


class FactorMaps:
    """Per-gene maps computed on demand from a factorised store.

    Used where a :class:`~napari_trihrge.tl.DenseMaps` is: ``values`` and ``std`` are lazy
    (genes, rows, cols) arrays (index them by gene, or :meth:`to_dask`); ``maps[gene]`` or
    ``maps.sel(gene=...)`` gives one gene's map (rows, cols), NaN outside ``mask``.

    A store's per-location factors are read chunk by chunk (:data:`LOCATION_CHUNK`
    locations) when a map needs them, and kept up to ``cache_bytes``
    (:data:`FACTOR_CACHE_BYTES`); a map at a few pixels (:meth:`values_at`) reads only their
    chunks. With a ``factor_model`` (format 3) ``factors`` (or the store) hold the locations'
    inputs, and a chunk's factors are computed from them when first needed.
    """

    def __init__(self, weights: GeneWeights, factors: LocationFactors | None, mask: np.ndarray,
                 stride_um: float, origin_rc_um: Any, *, path: Path | None = None,
                 group: Any = None, cache_bytes: int = FACTOR_CACHE_BYTES,
                 factor_model: FactorModel | None = None,
                 parent: tuple[FactorMaps, np.ndarray] | None = None):
        self.weights = weights
        #: maps whose locations are some of another's (:meth:`window`, :meth:`every`): that
        #: one and the indices of these locations among its own, read from it when needed
        self._parent = parent
        self.factor_model = factor_model
        self._factors = factors
        self.mask = np.asarray(mask, dtype=bool)
        self.stride_um = float(stride_um)
        self.origin_rc_um = np.asarray(origin_rc_um, dtype=np.float64).reshape(2)
        self.gene_names = list(weights.gene_names)
        self.path = path
        self._group = group
        self._rows, self._cols = np.nonzero(self.mask)
        self.n_locations = len(self._rows)
        display_cache = _DISPLAY_CACHE.get()
        #: a map at some pixels computes (and keeps) their chunks whole, in a cache the size
        #: of the viewer's (:func:`for_display`); not for maps a viewer shows at every n-th
        #: pixel, whose other pixels it never shows
        self.whole_chunks = display_cache is not None \
            and self.display_step(max(cache_bytes, display_cache)) == 1
        self.cache_bytes = int(max(cache_bytes, display_cache) if self.whole_chunks
                               else cache_bytes)
        #: :meth:`every`'s maps by step, kept with what they computed
        self._every: dict[int, FactorMaps] = {}
        #: the whole maps at full resolution these are part of (:meth:`every`,
        #: :meth:`window`), these maps themselves otherwise
        self.whole: FactorMaps = self
        self._cache: OrderedDict[int, LocationFactors] = OrderedDict()
        self._cached_bytes = 0
        self._checked = False
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.chunk_locations = _store_chunk_locations(group) \
            if factors is None and parent is None else LOCATION_CHUNK
        self.values = LazyMapArray(self, "values")
        self.std = LazyMapArray(self, "std") if weights.with_std else None

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path is not None else ""
        return (f"FactorMaps({len(self.gene_names)} genes, {self.mask.shape[0]} x "
                f"{self.mask.shape[1]} px at {self.stride_um:g} um, "
                f"{self.n_locations} locations{where})")

    @property
    def factors(self) -> LocationFactors:
        """All per-location factors in memory (a store's are read whole: prefer the maps)."""
        if self._factors is None or self.factor_model is not None:
            return LocationFactors.concatenate([self.location_chunk(c)
                                                for c in range(self.n_chunks)])
        return self._factors

    @property
    def n_chunks(self) -> int:
        """Number of location chunks the factors are read in."""
        return -(-self.n_locations // self.chunk_locations)

    def location_chunk(self, c: int, *, keep: bool = True) -> LocationFactors:
        """Return the factors (float32) of location chunk ``c`` (read or computed once).

        ``keep=False``: not added to the cache (a caller that needs each chunk once).
        """
        if self._factors is not None and self.factor_model is None:
            return self.input_chunk(c)
        with self._lock:  # dask may ask from several threads
            if c in self._cache:
                self._cache.move_to_end(c)
                return self._cache[c]
        chunk = self._expand(self.input_chunk(c))
        size = sum(a.nbytes for a in chunk.arrays().values())
        with self._lock:
            if keep and size <= self.cache_bytes and c not in self._cache:
                self._cache[c] = chunk
                self._cached_bytes += size
                while self._cached_bytes > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= sum(a.nbytes for a in old.arrays().values())
        return chunk

    def warm(self, *, progress: Any = None) -> int:
        """Compute (format 3) or read the location chunks' factors into the cache now.

        As far as ``cache_bytes`` allows, so that each gene's map is then a product over cached
        factors; returns the number of chunks cached. ``progress``: stage 'maps for display',
        one step per chunk (cancellable).
        """
        from ..progress import ensure_progress

        progress = ensure_progress(progress)
        if self._factors is not None and self.factor_model is None:
            return 0  # the factors are in memory already
        progress.stage("maps for display", total=self.n_chunks)
        for c in range(self.n_chunks):
            if c not in self._cache and not self._room_for_a_chunk(c):
                break  # stop before a chunk would push out an earlier one
            self.location_chunk(c)
            progress.advance()
            with self._lock:
                if c not in self._cache:  # it does not fit: later chunks are computed anew
                    break
        with self._lock:
            return len(self._cache)

    def _room_for_a_chunk(self, c: int) -> bool:
        """Whether chunk ``c`` fits the cache beside those kept.

        Its bytes are estimated from theirs per location.
        """
        with self._lock:
            kept, used = list(self._cache), self._cached_bytes
        if not kept:
            return True
        per_location = used / sum(self._chunk_size(k) for k in kept)
        return used + per_location * self._chunk_size(c) <= self.cache_bytes

    def _chunk_size(self, c: int) -> int:
        """Return the number of locations of chunk ``c``."""
        start, stop = self._chunk_bounds(c)
        return stop - start

    def _chunk_bounds(self, c: int) -> tuple[int, int]:
        """Return the locations (start, stop) of chunk ``c``."""
        start = c * self.chunk_locations
        return start, min(self.n_locations, start + self.chunk_locations)

    def ready(self, gene: int | None = None) -> bool:
        """Whether a map (``gene``'s, or any) comes without running networks or reading the store.

        True when every chunk's factors are in memory (or ``gene``'s map is kept from
        earlier); the viewer computes a map that is not ready in a worker.
        """
        if self._factors is not None and self.factor_model is None:
            return True
        with self._lock:
            return (gene is not None and int(gene) in self._recent) \
                or len(self._cache) == self.n_chunks

    def moved_to(self, path: str | os.PathLike) -> FactorMaps:
        """Return these maps read from their store moved to ``path`` (a run folder swapped in).

        The store there is opened and checked as :func:`open_map_store` does; when it is this
        store (the same attributes, every file the same size), these maps are pointed at it and
        keep what they computed, else the maps opened there are returned.
        """
        moved = open_map_store(path)
        if self._group is None or dict(moved._group.attrs) != dict(self._group.attrs):
            return moved
        with self._lock:
            self.path, self._group, self._checked = moved.path, moved._group, True
        return self

    def window(self, rows_um: Sequence[float], cols_um: Sequence[float]) -> FactorMaps:
        """Return the maps inside a rectangle of the section, as maps of their own.

        ``rows_um`` and ``cols_um`` are (start, stop) in micrometres, in the run's coordinates
        (napari's world coordinates): the map pixels whose centres lie inside are kept, at their
        place. Its maps are computed when asked, as the whole maps' are (the same values at the
        same pixels), from the rectangle's locations only: at 2 um a region takes seconds to
        minutes where the whole section takes hours. Raises
        :class:`~napari_trihrge.errors.TrihrgeInputError` for a rectangle without a map location
        in the tissue.
        """
        bounds = []
        for name, pair, axis in (("rows", rows_um, 0), ("cols", cols_um, 1)):
            lo_um, hi_um = (float(v) for v in pair)
            if not (np.isfinite(lo_um) and np.isfinite(hi_um) and lo_um < hi_um):
                raise TrihrgeInputError(
                    f"the rectangle's {name} must be two increasing numbers of micrometres "
                    f"(got {lo_um:g}, {hi_um:g})", "give start < stop, e.g. 1000 2000")
            first = int(np.ceil((lo_um - self.origin_rc_um[axis]) / self.stride_um - 1e-9))
            last = int(np.floor((hi_um - self.origin_rc_um[axis]) / self.stride_um + 1e-9))
            bounds.append((max(0, first), min(self.mask.shape[axis], last + 1)))
        (i0, i1), (j0, j1) = bounds
        inside = ((self._rows >= i0) & (self._rows < i1) & (self._cols >= j0)
                  & (self._cols < j1))
        picked = np.flatnonzero(inside)
        if not len(picked):
            extent = self.origin_rc_um[:, None] + np.array(
                [[0, self.mask.shape[0] - 1], [0, self.mask.shape[1] - 1]]) * self.stride_um
            raise TrihrgeInputError(
                f"the rectangle rows {rows_um[0]:g}-{rows_um[1]:g} um, cols {cols_um[0]:g}-"
                f"{cols_um[1]:g} um holds no map location in the tissue",
                f"give a rectangle over the tissue: the map spans rows {extent[0, 0]:.0f}-"
                f"{extent[0, 1]:.0f} um and cols {extent[1, 0]:.0f}-{extent[1, 1]:.0f} um")
        return self._subset(picked, slice(i0, i1), slice(j0, j1))

    def every(self, step: int) -> FactorMaps:
        """Return the maps at every ``step``-th map pixel along rows and columns.

        They are maps of their own, at ``step`` times the stride from the same origin. Their
        values are the maps' at those pixels (samples, not averages over the pixels between);
        the viewer shows a map too large for it this way (:meth:`display_step`). The same
        step gives the same maps (with what they computed and kept).
        """
        step = int(step)
        if step < 1:
            raise TrihrgeInputError(f"the step must be a positive number of pixels, got {step}",
                                    "use 1 (every pixel), 2, 3, ...")
        if step == 1:
            return self
        with self._lock:
            kept = self._every.get(step)
        if kept is None:
            picked = np.flatnonzero((self._rows % step == 0) & (self._cols % step == 0))
            made = self._subset(picked, slice(None, None, step), slice(None, None, step))
            with self._lock:
                kept = self._every.setdefault(step, made)
        return kept

    def display_step(self, cache_bytes: int) -> int:
        """Return the n at which a viewer shows these maps, every n-th pixel (1: every one).

        The smallest n, along rows and columns, that leaves at most :data:`DISPLAY_LOCATIONS`
        locations whose factors fit ``cache_bytes``.
        """
        fits = int(cache_bytes) // max(1, self.factor_bytes_per_location())
        most = max(1, min(DISPLAY_LOCATIONS, fits))
        if self.n_locations <= most:
            return 1
        step = int(np.ceil(np.sqrt(self.n_locations / most)))
        while self.mask[::step, ::step].sum() > most:  # the mask's pixels need not fall evenly
            step += 1
        return step

    def _subset(self, picked: np.ndarray, rows: slice, cols: slice) -> FactorMaps:
        """Return the maps of the locations ``picked`` on the grid ``mask[rows, cols]``.

        ``picked``: their row-major indices. Nothing is read now: their inputs are read from
        these maps chunk by chunk when a map needs them (:meth:`inputs_at`).
        """
        step = rows.step or 1
        first = np.array([rows.start or 0, cols.start or 0])
        sub = FactorMaps(self.weights, None, self.mask[rows, cols], self.stride_um * step,
                         self.origin_rc_um + first * self.stride_um, path=self.path,
                         factor_model=self.factor_model, parent=(self, picked))
        sub.whole = self.whole
        if sub.n_locations != len(picked):  # pragma: no cover - the mask and locations agree
            raise RuntimeError("the sub-grid's mask does not match its locations")
        return sub

    def factor_bytes_per_location(self) -> int:
        """Return the bytes of one location's factors as the cache keeps them (float32)."""
        w = self.weights
        size = 0
        if "network" in w.candidates and w.network_weight is not None:
            size += 4 * w.network_weight.shape[0] * w.network_weight.shape[-1]
        if "ridge" in w.candidates and w.ridge_coef is not None:
            size += 4 * w.ridge_coef.shape[1]
        ks = w.knn_ks() if self.factor_model is None else self.factor_model.knn_ks(w)
        return size + sum(8 * int(k) for k in ks)  # int32 index and float32 weight

    def inputs_at(self, locations: np.ndarray) -> LocationFactors:
        """Return what the store holds for the locations with these (increasing) indices."""
        locations = np.asarray(locations, dtype=np.int64)
        chunk_of = locations // self.chunk_locations
        parts = []
        for c in np.unique(chunk_of):
            local = locations[chunk_of == c] - int(c) * self.chunk_locations
            parts.append(_take_factors(self.input_chunk(int(c)), local))
        return LocationFactors.concatenate(parts)

    def input_chunk(self, c: int) -> LocationFactors:
        """Return what the store holds for location chunk ``c`` (float32; not kept).

        The factors themselves (format 1-2), or with a factor model their inputs (the kNN
        weights and the image features).
        """
        s, e = self._chunk_bounds(c)
        if self._factors is not None:
            return _slice_factors(self._factors, s, e)
        if self._parent is not None:
            parent, picked = self._parent
            return parent.inputs_at(picked[s:e])
        with self._lock:
            if not self._checked:  # still whole? (files may go between open and first use)
                _check_files(self.path, dict(self._group.attrs).get("files"),
                             "re-run enhance to write the maps again")
                self._checked = True
        ks = (self.weights.knn_ks() if self.factor_model is None
              else self.factor_model.knn_ks(self.weights))
        return _read_factors(self._group, ks, s, e, self.factor_model)

    def _expand(self, inputs: LocationFactors) -> LocationFactors:
        if self.factor_model is None:
            return inputs
        return self.factor_model.factors(inputs, self.weights.spots_expression)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the maps: (genes, rows, cols)."""
        return (len(self.gene_names), *self.mask.shape)

    def gene_index(self, gene: str) -> int:
        """Index of ``gene``; an unknown gene raises with the nearest names."""
        return gene_index(self.gene_names, gene)

    def compute(self, genes: Iterable[int], *, with_std: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Compute the maps of the genes with these indices, NaN outside the mask.

        Returns values (g, rows, cols) and, with ``with_std``, the spread (None without one).
        Each location chunk is read once per call, whatever the number of genes.
        """
        genes = np.asarray(list(genes), dtype=np.int64).reshape(-1)
        if len(genes) == 1:  # one gene (the viewer): its map and spread in one pass, kept
            return self._one_gene(int(genes[0]), with_std)
        return self._compute(genes, with_std)

    def _one_gene(self, gene: int, with_std: bool) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            kept = self._recent.get(gene)
            if kept is not None:
                self._recent.move_to_end(gene)
        if kept is None:
            kept = self._compute(np.array([gene]), True)
            with self._lock:
                self._recent[gene] = kept
                while len(self._recent) > RECENT_GENES:
                    self._recent.popitem(last=False)
        values, std = kept
        return values.copy(), (std.copy() if with_std and std is not None else None)

    def _compute(self, genes: np.ndarray, with_std: bool, *, rows: tuple[int, int] | None = None,
                 chunks: dict[int, LocationFactors] | None = None,
                 gene_block: int = GENE_BLOCK) -> tuple[np.ndarray, np.ndarray | None]:
        """Compute the maps of ``genes`` (g, rows, cols), or of map rows ``rows`` (start, stop).

        ``chunks``: location chunks already at hand (index -> factors), used before the cache.
        """
        n_rows, n_cols = self.mask.shape
        r0, r1 = (0, n_rows) if rows is None else (int(rows[0]), int(rows[1]))
        values = np.full((len(genes), r1 - r0, n_cols), np.nan, dtype=np.float32)
        std = values.copy() if with_std and self.std is not None else None
        flat_values = values.reshape(len(genes), -1)
        flat_std = None if std is None else std.reshape(len(genes), -1)
        first, stop = self.row_locations(r0, r1)
        for c in range(first // self.chunk_locations,
                       -(-stop // self.chunk_locations)):
            chunk = (chunks or {}).get(c)
            if chunk is None:
                chunk = self.location_chunk(c)
            s = c * self.chunk_locations
            a, b = max(first, s), min(stop, s + len(chunk))
            if a >= b:
                continue
            sub = chunk if (a, b) == (s, s + len(chunk)) else _slice_factors(chunk, a - s, b - s)
            where = (self._rows[a:b] - r0) * n_cols + self._cols[a:b]
            for g0 in range(0, len(genes), gene_block):
                block = genes[g0:g0 + gene_block]
                vals, sd = gene_block_values(self.weights, sub, block)
                flat_values[g0:g0 + len(block), where] = vals.T
                if flat_std is not None:
                    flat_std[g0:g0 + len(block), where] = sd.T
        return values, std

    def row_locations(self, r0: int, r1: int) -> tuple[int, int]:
        """Return the locations (start, stop) in map rows ``r0:r1`` (locations are row-major)."""
        start, stop = np.searchsorted(self._rows, [r0, r1])
        return int(start), int(stop)

    def values_at(self, genes: Iterable[int], rows: np.ndarray, cols: np.ndarray
                  ) -> np.ndarray:
        """Compute the maps of the genes with these indices at map pixels ``(rows, cols)`` only.

        ``rows`` and ``cols`` are integer arrays of one shape; returns (g, *rows.shape), NaN
        outside the mask. Computes just those locations, and reads only their chunks (with a
        factor model: computes the factors of those locations only, and keeps none; with
        :attr:`whole_chunks`, of every location of those chunks, kept while the cache has
        room).
        """
        genes = np.asarray(list(genes), dtype=np.int64).reshape(-1)
        rows, cols = np.asarray(rows), np.asarray(cols)
        order = np.full(self.mask.shape, -1, dtype=np.int64)
        order[self._rows, self._cols] = np.arange(self.n_locations)
        where = order[rows, cols]
        inside = where >= 0
        wanted, inverse = np.unique(where[inside], return_inverse=True)
        picked = np.empty((len(genes), len(wanted)), dtype=np.float32)
        chunk_of = wanted // self.chunk_locations
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == c)
            local = wanted[sel] - int(c) * self.chunk_locations
            with self._lock:
                cached = self._cache.get(int(c))
            if cached is None and self.whole_chunks and self._room_for_a_chunk(int(c)):
                cached = self.location_chunk(int(c))  # every location once, kept
            if cached is not None or self.factor_model is None:
                sub = _take_factors(cached if cached is not None
                                    else self.location_chunk(int(c)), local)
            else:
                sub = self._expand(_take_factors(self.input_chunk(int(c)), local))
            for g0 in range(0, len(genes), GENE_BLOCK):
                vals, _ = gene_block_values(self.weights, sub, genes[g0:g0 + GENE_BLOCK])
                picked[g0:g0 + GENE_BLOCK, sel] = vals.T
        out = np.full((len(genes), *rows.shape), np.nan, dtype=np.float32)
        out[:, inside] = picked[:, inverse.reshape(-1)]
        return out

    def gene(self, name: str) -> np.ndarray:
        """Return the map of ``name`` (rows, cols) float32."""
        return self.compute([self.gene_index(name)])[0][0]

    def gene_std(self, name: str) -> np.ndarray | None:
        """Return the spread of ``name``'s map (rows, cols), or None without a spread."""
        return self.compute([self.gene_index(name)], with_std=True)[1][0] \
            if self.std is not None else None

    def __getitem__(self, gene: str) -> np.ndarray:
        return self.gene(gene)

    def sel(self, gene: str | Sequence[str]) -> np.ndarray:
        """One gene's map (rows, cols), or several genes' (g, rows, cols)."""
        if isinstance(gene, str):
            return self.gene(gene)
        return self.compute([self.gene_index(g) for g in gene])[0]

    def to_dask(self, kind: str = "values") -> Any:
        """Return a dask array (genes, rows, cols), one chunk per gene, computed when read."""
        import dask.array as da

        lazy = self.values if kind == "values" else self.std
        if lazy is None:
            raise TrihrgeInputError("these maps have no spread layer",
                                    "the spread needs several networks (the blend's folds)")
        return da.from_array(lazy, chunks=(1, *self.mask.shape), asarray=True, fancy=False,
                             name=f"trihrge-{kind}-{id(self):x}")


class LazyMapArray:
    """A (genes, rows, cols) float32 array-like whose genes are computed when indexed."""

    def __init__(self, maps: FactorMaps, kind: str):
        self._maps = maps
        self._kind = kind
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the array: (genes, rows, cols), that of its maps."""
        return self._maps.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if first is Ellipsis:
            first, rest = slice(None), (Ellipsis, *rest) if len(key) > 1 else ()
        n = self.shape[0]
        squeeze = np.ndim(first) == 0 and not isinstance(first, slice)
        genes = np.arange(n)[first]
        values, std = self._maps.compute(np.atleast_1d(genes), with_std=self._kind == "std")
        out = std if self._kind == "std" else values
        if squeeze:
            out = out[0]
        return out[rest] if rest else out

    def to_dask(self) -> Any:
        """Return a dask array of these maps, one chunk per gene (:meth:`FactorMaps.to_dask`)."""
        return self._maps.to_dask(self._kind)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


def gene_index(gene_names: Sequence[str], gene: str) -> int:
    """Return the index of ``gene`` in ``gene_names``.

    An unknown gene raises :class:`TrihrgeInputError` listing the nearest names (difflib).
    """
    names = list(gene_names)
    try:
        return names.index(str(gene))
    except ValueError:
        pass
    near = difflib.get_close_matches(str(gene), names, n=5, cutoff=0.5)
    if not near:  # case differences (e.g. 'erbb2')
        lower = {n.lower(): n for n in names}
        near = [lower[n] for n in difflib.get_close_matches(str(gene).lower(), list(lower),
                                                            n=5, cutoff=0.5)]
    hint = (f"near names: {', '.join(near)}" if near
            else f"the model has {len(names)} genes, e.g. {', '.join(names[:5])}")
    raise TrihrgeInputError(f"gene {gene!r} is not in the model's maps", hint)


# -----------------------------------------------------------------------------------------
# Writing
# -----------------------------------------------------------------------------------------
class MapStoreWriter:
    """Collect the per-location factors block by block and write the store.

    The locations come in the mask's row-major order. The store is written in
    ``<path>.partial``, moved into place by :meth:`finalize` once whole
    (``_atomic.replace_folder``); :meth:`abort` deletes it. Without ``path`` the factors stay
    in memory and :meth:`finalize` returns in-memory :class:`FactorMaps`. With a
    ``factor_model`` the appended blocks hold the locations' inputs (kNN weights, image
    features) and the store is of format 3 (the model written in it); without, they hold the
    factors and the store has format 2's layout.
    """

    def __init__(self, path: str | os.PathLike | None, weights: GeneWeights, mask: np.ndarray,
                 stride_um: float, origin_rc_um: Any, *, overwrite: bool = False,
                 factor_dtype: Any = None, factor_model: FactorModel | None = None):
        self.path = None if path is None else Path(path)
        self.weights = weights
        self.factor_model = factor_model
        self.mask = np.asarray(mask, dtype=bool)
        self.stride_um = float(stride_um)
        self.origin_rc_um = np.asarray(origin_rc_um, dtype=np.float64).reshape(2)
        self.overwrite = overwrite
        self.factor_dtype = np.dtype(factor_dtype if factor_dtype is not None
                                     else np.float32 if path is None else STORE_FACTOR_DTYPE)
        self.n_locations = int(self.mask.sum())
        self._parts: list[LocationFactors] = []
        self._pending = 0
        self._written = 0
        self._arrays: dict[str, Any] = {}
        self._memory: LocationFactors | None = None
        self._group = None
        if self.path is not None:
            refuse_overwrite(self.path, overwrite)
            self.partial_path = self.path.with_name(self.path.name + ".partial")
            _remove(self.partial_path)
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, factors: LocationFactors) -> None:
        """Add the factors of the next locations."""
        if not len(factors):
            return
        if self.path is None:  # in memory: filled in place (no copy of the whole at the end)
            self._fill(factors)
            return
        self._parts.append(factors)
        self._pending += len(factors)
        if self.path is not None and self._pending >= LOCATION_CHUNK:
            self._flush(final=False)

    def _fill(self, factors: LocationFactors) -> None:
        n = len(factors)
        if self._memory is None:
            m = self.n_locations
            self._memory = LocationFactors(
                knn={k: (np.empty((m, idx.shape[1]), np.int32),
                         np.empty((m, w.shape[1]), np.float32))
                     for k, (idx, w) in factors.knn.items()},
                ridge=(None if factors.ridge is None
                       else np.empty((m, factors.ridge.shape[1]), np.float32)),
                hidden=(None if factors.hidden is None else np.empty(
                    (factors.hidden.shape[0], m, factors.hidden.shape[2]), np.float32)),
                features=(None if factors.features is None
                          else np.empty((m, *factors.features.shape[1:]), np.float32)))
        s, e = self._written, self._written + n
        if e > self.n_locations:
            raise RuntimeError(f"more than the mask's {self.n_locations} map locations")
        mem = self._memory
        for k, (idx, w) in factors.knn.items():
            mem.knn[k][0][s:e] = idx
            mem.knn[k][1][s:e] = w
        if mem.ridge is not None:
            mem.ridge[s:e] = as_dtype(factors.ridge, self.factor_dtype)
        if mem.hidden is not None:
            mem.hidden[:, s:e] = as_dtype(factors.hidden, self.factor_dtype)
        if mem.features is not None:
            mem.features[s:e] = as_dtype(factors.features, self.factor_dtype)
        self._written = e

    def _open(self, first: LocationFactors) -> None:
        import zarr

        group = zarr.open_group(str(self.partial_path), mode="w", zarr_format=2)
        self._group = group
        kw = dict(chunk_key_encoding={"name": "v2", "separator": "/"}, compressors=compressor())
        group.create_array("mask", data=self.mask, **kw)
        genes = group.create_group("genes")
        for name in GENE_ARRAYS:
            value = getattr(self.weights, name)
            if value is not None:
                genes.create_array(name, data=np.asarray(value), **kw)
        if self.factor_model is not None:
            if first.features is not None:
                self.factor_model.set_feature_scaling(first.features)
            self.factor_model.write(group.create_group("inputs"), **kw)
        locs = group.create_group("locations")
        for name, arr in first.arrays().items():
            dtype = self._dtype(name, arr)
            if name == "network_hidden":
                shape = (arr.shape[0], self.n_locations, arr.shape[2])
                chunks = (arr.shape[0], LOCATION_CHUNK, arr.shape[2])  # every network at once
            else:
                shape = (self.n_locations, *arr.shape[1:])
                chunks = (LOCATION_CHUNK, *arr.shape[1:])
            self._arrays[name] = locs.create_array(name, shape=shape, chunks=chunks,
                                                   dtype=dtype, **kw)

    def _dtype(self, name: str, arr: np.ndarray) -> np.dtype:
        if name.endswith("_index"):
            return np.dtype(np.int32)
        if name.endswith("_weight"):
            return np.dtype(np.float32)  # kNN weights: small, kept exact
        return self.factor_dtype

    def _flush(self, final: bool) -> None:
        block = (self._parts[0] if len(self._parts) == 1
                 else LocationFactors.concatenate(self._parts))
        n = len(block)
        take = n if final else (n // LOCATION_CHUNK) * LOCATION_CHUNK
        if self._group is None:
            self._open(block)
        arrays = block.arrays()
        for c0 in range(0, take, LOCATION_CHUNK):  # whole chunks: bounded temporary memory
            c1 = min(take, c0 + LOCATION_CHUNK)
            s, e = self._written + c0, self._written + c1
            for name, arr in arrays.items():
                target = self._arrays[name]
                if name == "image_features":  # standardised: float16 keeps their variation
                    model = self.factor_model
                    target[s:e] = as_dtype((arr[c0:c1] - model.feature_mean)
                                           / model.feature_scale, target.dtype)
                elif name == "network_hidden":
                    target[:, s:e] = as_dtype(arr[:, c0:c1], target.dtype)
                else:
                    target[s:e] = as_dtype(arr[c0:c1], target.dtype)
        self._written += take
        rest = _slice_factors(block, take, n)
        self._parts = [rest] if len(rest) else []
        self._pending = len(rest)

    def finalize(self) -> FactorMaps:
        """Finish the store (or, in memory, the factors) and return its maps."""
        if self.path is None:
            self._check_count(self._written)
            return FactorMaps(self.weights, self._memory or LocationFactors(), self.mask,
                              self.stride_um, self.origin_rc_um,
                              factor_model=self.factor_model)
        if self._parts or self._group is None:
            if not self._parts:
                raise TrihrgeInputError("the map has no location", "nothing to store")
            self._flush(final=True)
        self._check_count(self._written)
        self._group.attrs.update(_attributes(
            self.weights, self.mask, self.stride_um, self.origin_rc_um, self.factor_dtype,
            STORE_VERSION if self.factor_model is not None else FACTORS_VERSION))
        self._group.attrs["files"] = _file_sizes(self.partial_path)
        refuse_overwrite(self.path, self.overwrite)
        replace_folder(self.partial_path, self.path)
        return open_map_store(self.path)

    def _check_count(self, n: int) -> None:
        if n != self.n_locations:
            raise RuntimeError(f"{n} map locations stored, the mask has {self.n_locations}")

    def abort(self) -> None:
        """Delete the partial store."""
        if self.path is not None:
            _remove(self.partial_path)


def write_map_store(maps: FactorMaps, path: str | os.PathLike, *, overwrite: bool = False,
                    factor_dtype: Any = None) -> FactorMaps:
    """Write factorised maps (in memory, or another store) as a store at ``path``.

    As they are held: their inputs and factor model (format 3), or the factors (format 2's
    layout; maps without a factor model). Dense arrays in ``factor_dtype`` (default
    :data:`STORE_FACTOR_DTYPE`). Refused when ``path`` exists, unless ``overwrite``; returns
    the maps opened from it.
    """
    writer = MapStoreWriter(path, maps.weights, maps.mask, maps.stride_um, maps.origin_rc_um,
                            overwrite=overwrite, factor_dtype=factor_dtype,
                            factor_model=maps.factor_model)
    try:
        for c in range(maps.n_chunks):  # chunk by chunk: a store is never read whole
            writer.append(maps.input_chunk(c))
        return writer.finalize()
    except BaseException:
        writer.abort()
        raise


def _take_factors(f: LocationFactors, index: np.ndarray | slice) -> LocationFactors:
    return LocationFactors(knn={k: (i[index], w[index]) for k, (i, w) in f.knn.items()},
                           ridge=None if f.ridge is None else f.ridge[index],
                           hidden=None if f.hidden is None else f.hidden[:, index],
                           features=None if f.features is None else f.features[index])


def _slice_factors(f: LocationFactors, s: int, e: int) -> LocationFactors:
    return _take_factors(f, slice(s, e))


def _attributes(weights: GeneWeights, mask: np.ndarray, stride_um: float, origin: np.ndarray,
                factor_dtype: np.dtype, version: int) -> dict[str, Any]:
    return {"format": STORE_FORMAT, "version": int(version),
            "gene_names": list(weights.gene_names), "candidates": list(weights.candidates),
            "activation": weights.activation, "skip_k": weights.skip_k,
            "blend": weights.blend_weights is not None, "n_networks": weights.n_networks,
            "stride_um": float(stride_um), "origin_rc_um": [float(v) for v in origin],
            "shape": [int(s) for s in mask.shape], "n_locations": int(mask.sum()),
            "factor_dtype": str(np.dtype(factor_dtype)), "compressor": dict(COMPRESSOR)}


def _file_sizes(root: Path) -> dict[str, int]:
    """Every file under ``root`` but the attributes holding this list, with its size."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != ".zattrs":
            out[rel] = p.stat().st_size
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -----------------------------------------------------------------------------------------
# Reading
# -----------------------------------------------------------------------------------------
def is_map_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a factorised map store (its attributes name the format)."""
    import json

    attrs = Path(path) / ".zattrs"
    try:
        return json.loads(attrs.read_text(encoding="utf-8")).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def open_map_store(path: str | os.PathLike) -> FactorMaps:
    """Open a factorised map store.

    Its format and version are checked and every file listed in it must be there whole (a
    truncated store raises, nothing is computed from it). The per-gene weights (and in format
    3 the networks) are read now, the per-location factors on the first map asked for.
    """
    import json

    path = Path(path)
    how = "re-run `trihrge enhance` (or `trihrge predict`) to write the maps again"
    if not path.is_dir():
        raise TrihrgeInputError(f"map store not found: {path}",
                                f"pass the {STORE_NAME} folder of a run")
    try:
        attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrihrgeInputError(f"{path} is not a finished map store (no .zattrs)",
                                f"the run was interrupted or the copy is incomplete; {how}") \
            from None
    except (OSError, ValueError) as err:
        raise TrihrgeInputError(f"{path}/.zattrs is not readable ({err})",
                                f"the store is damaged; {how}") from err
    if not isinstance(attrs, dict) or attrs.get("format") != STORE_FORMAT:
        raise TrihrgeInputError(f"{path} is not a napari-trihrge map store",
                                f"pass the {STORE_NAME} folder of a run")
    version = attrs.get("version")
    if not isinstance(version, int) or version > max(READABLE_VERSIONS):
        raise TrihrgeInputError(
            f"{path} is a map store of format version {version}; this napari-trihrge reads "
            f"versions up to {max(READABLE_VERSIONS)}", "update napari-trihrge to read it")
    if version not in READABLE_VERSIONS:
        raise TrihrgeInputError(
            f"{path} is a map store of the older format version {version}; this "
            f"napari-trihrge reads versions {', '.join(map(str, READABLE_VERSIONS))}", how)
    _check_files(path, attrs.get("files"), how)
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        genes = group["genes"]
        weights = GeneWeights(
            gene_names=[str(g) for g in attrs["gene_names"]],
            candidates=[str(c) for c in attrs["candidates"]],
            activation=str(attrs["activation"]),
            skip_k=None if attrs.get("skip_k") is None else int(attrs["skip_k"]),
            **{name: (np.asarray(genes[name][...]) if name in genes else None)
               for name in GENE_ARRAYS})
        mask = np.asarray(group["mask"][...], dtype=bool)
        # format 3: the networks and the ridge standardisation that make the factors
        factor_model = FactorModel.read(group["inputs"]) if version >= 3 else None
    except TrihrgeInputError:
        raise
    except Exception as err:  # noqa: BLE001 - zarr/JSON errors of all kinds
        raise TrihrgeInputError(f"the map store {path} cannot be read ({type(err).__name__}: "
                                f"{err})", f"the store is damaged; {how}") from err
    if weights.activation not in ACTIVATIONS or mask.shape != tuple(attrs["shape"]):
        raise TrihrgeInputError(f"the map store {path} is inconsistent",
                                f"the store is damaged; {how}")
    return FactorMaps(weights, None, mask, float(attrs["stride_um"]), attrs["origin_rc_um"],
                      path=path, group=group, factor_model=factor_model)


def _check_files(path: Path, files: Any, how: str) -> None:
    if not isinstance(files, dict) or not files:
        raise TrihrgeInputError(f"{path} is not a finished map store (no file list)",
                                f"the run was interrupted; {how}")
    bad = []
    for rel, size in files.items():
        p = path / rel
        if not p.is_file():
            bad.append(f"{rel} missing")
        elif p.stat().st_size != int(size):
            bad.append(f"{rel} has {p.stat().st_size} of {int(size)} bytes")
    if bad:
        raise TrihrgeInputError(
            f"the map store {path} is incomplete: {len(bad)} of {len(files)} files missing or "
            f"cut short ({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''})",
            f"copy the whole folder again or {how}")


def _read_factors(group: Any, knn_ks: Sequence[int], start: int, stop: int,
                  factor_model: FactorModel | None = None) -> LocationFactors:
    """Read locations ``start:stop`` of a store's factors (format 3: their inputs).

    As float32 (indices int32); the image features un-standardised with ``factor_model``'s
    scaling.
    """
    locs = group["locations"]

    def read(name: str, dtype: Any = np.float32) -> np.ndarray | None:
        if name not in locs:
            return None
        arr = locs[name]
        part = arr[:, start:stop] if name == "network_hidden" else arr[start:stop]
        return as_dtype(np.asarray(part), dtype)

    features = read("image_features")
    if features is not None and factor_model is not None:
        features *= factor_model.feature_scale
        features += factor_model.feature_mean
    return LocationFactors(
        knn={k: (read(f"knn{k}_index", np.int32), read(f"knn{k}_weight")) for k in knn_ks},
        ridge=read("ridge_inputs"), hidden=read("network_hidden"), features=features)


def _store_chunk_locations(group: Any) -> int:
    """Return the locations per chunk of a store's per-location arrays.

    :data:`LOCATION_CHUNK` for a store written by this version.
    """
    if group is None:
        return LOCATION_CHUNK
    try:
        locs = group["locations"]
        for name in locs.array_keys():
            chunks = locs[name].chunks
            return int(chunks[1] if name == "network_hidden" else chunks[0])
    except (KeyError, AttributeError, IndexError, TypeError):
        pass
    return LOCATION_CHUNK


# -----------------------------------------------------------------------------------------
# Materialising
# -----------------------------------------------------------------------------------------
#: chunks of materialised maps: genes x rows x cols (one gene of a whole section and one
#: tile of all genes both read few chunks; measured on C3: docs/map-store.md, "Disk")
MATERIALISED_CHUNKS = (16, 128, 128)
#: the dtypes materialised maps can be written in (float32 by default: OME's pixel types have
#: no float16, so other tools may not read it)
MATERIALISED_DTYPES = ("float32", "float16")
#: bytes (as float32) of the maps computed at once while materialising: a band of map rows
#: for as many genes as fit (values and spread)
MATERIALISE_BLOCK_BYTES = 192 * 2**20


def resolve_genes(maps: Any, genes: Sequence[str] | None) -> list[str]:
    """Return the genes asked for (all when None), each checked (near names on a typo)."""
    if genes is None:
        return list(maps.gene_names)
    out = [str(g) for g in genes]
    for g in out:
        gene_index(maps.gene_names, g)
    if not out:
        raise TrihrgeInputError("no gene asked for", "pass at least one gene, or none for all")
    return out


def check_materialised_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` as a numpy dtype; one not in :data:`MATERIALISED_DTYPES` raises."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or checked.name not in MATERIALISED_DTYPES:
        raise TrihrgeInputError(f"materialised maps cannot be {dtype}",
                                f"use one of: {', '.join(MATERIALISED_DTYPES)}")
    return checked


def materialise_ome_zarr(maps: FactorMaps, path: str | os.PathLike, *,
                         genes: Sequence[str] | None = None, overwrite: bool = False,
                         dtype: Any = np.float32, progress: Any = None) -> list[Path]:
    """Write the maps of ``genes`` (all by default) as today's multiscale OME-Zarr map ``path``.

    The map and its spread beside it (``<name>_std.ome.zarr``) are chunked
    :data:`MATERIALISED_CHUNKS`, in ``dtype`` (:data:`MATERIALISED_DTYPES`; float16 is within
    :data:`FLOAT16_TOLERANCE` only for values under 4, docs/map-store.md). The maps are made
    in bands of whole chunk rows: each band's location factors are computed (or read) once
    for every gene (not kept in the maps' cache), its pyramid levels are averaged in memory,
    and a thread compresses and writes one band while the next is computed. Refuses to
    replace an existing map unless ``overwrite``, before any work. Returns the paths written.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import ensure_progress
    from .writers import open_ome_zarr_map

    names = resolve_genes(maps, genes)
    dtype = check_materialised_dtype(dtype)
    path = Path(path)
    std_path = path.with_name(path.name.replace(".ome.zarr", "") + "_std.ome.zarr")
    targets = [path] + ([std_path] if maps.std is not None else [])
    for p in targets:
        refuse_overwrite(p, overwrite)
    index = np.array([maps.gene_index(g) for g in names], dtype=np.int64)
    n_rows, n_cols = maps.mask.shape
    chunks = (min(MATERIALISED_CHUNKS[0], len(names)), min(MATERIALISED_CHUNKS[1], n_rows),
              min(MATERIALISED_CHUNKS[2], n_cols))
    kw = dict(chunks=chunks, um_per_px=maps.stride_um, gene_names=names, dtype=dtype,
              origin_rc_um=maps.origin_rc_um, fill_value=np.nan, overwrite=overwrite,
              stream_levels=True)
    writers = [open_ome_zarr_map(p, (len(names), n_rows, n_cols), compressors=compressor(),
                                 **kw) for p in targets]
    band_rows = writers[0].band_rows
    per_gene = band_rows * n_cols * 4 * len(writers)  # bytes of one gene's band, as float32
    most = max(1, min(len(names), MATERIALISE_BLOCK_BYTES // per_gene) // chunks[0])
    n_blocks = -(-len(names) // (most * chunks[0]))  # blocks of whole chunks, about even
    step = -(-len(names) // (n_blocks * chunks[0])) * chunks[0]
    bands = range(0, n_rows, band_rows)
    progress = ensure_progress(progress)
    progress.stage("maps", total=len(bands))
    pending: list[Any] = []
    held: dict[int, LocationFactors] = {}

    def write(g0: int, r0: int, blocks: Sequence[np.ndarray]) -> None:
        valid = maps.mask[r0:r0 + blocks[0].shape[1]]  # the maps are numbers there, NaN elsewhere
        for writer, block in zip(writers, blocks, strict=False):
            writer.write_band(g0, r0, block, valid)  # the levels averaged in float32

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trihrge-maps-writer") as pool:
            for r0 in bands:
                r1 = min(n_rows, r0 + band_rows)
                first, stop = maps.row_locations(r0, r1)
                # the band's location chunks, computed once for every gene (a chunk reaching
                # into the next band is kept for it) and not cached: memory holds two chunks'
                # factors, not the whole section's
                held = {c: held[c] if c in held else maps.location_chunk(c, keep=False)
                        for c in range(first // maps.chunk_locations,
                                       -(-stop // maps.chunk_locations))}
                for g0 in range(0, len(names), step):
                    values, std = maps._compute(index[g0:g0 + step], len(writers) > 1,
                                                rows=(r0, r1), chunks=held, gene_block=step)
                    while pending:  # one block written while the next is computed
                        pending.pop(0).result()
                    pending.append(pool.submit(write, g0, r0, (values, std)))
                progress.advance()
            while pending:
                pending.pop(0).result()
        return [w.finalize() for w in writers]
    except BaseException:
        for f in pending:
            f.cancel()
        for w in writers:
            w.abort()
        raise


__all__: Sequence[str] = [
    "STORE_FORMAT", "STORE_VERSION", "READABLE_VERSIONS", "STORE_NAME", "STORE_FACTOR_DTYPE",
    "FLOAT16_TOLERANCE", "GeneWeights", "LocationFactors", "FactorModel",
    "FactorMaps", "LazyMapArray", "MapStoreWriter", "open_map_store", "is_map_store",
    "write_map_store",
    "gene_index", "gene_block_values", "materialise_ome_zarr", "resolve_genes", "compressor",
    "MATERIALISED_DTYPES", "check_materialised_dtype", "for_display",
]
