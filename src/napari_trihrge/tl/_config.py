"""Run settings: :class:`RunConfig`, presets and the checks made before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import TrihrgeInputError
from ..features.extract import DEFAULT_WINDOWS_UM
from ..features.registry import DEFAULT_ENCODER
from ..io.sample import is_positive_number
from ..pp import DEFAULT_N_TOP_GENES
from ..pp.markers import DEFAULT_MARKER_PANEL, check_marker_panel
from ..threads import parse_threads

#: k of the image-free inverse-distance kNN baselines scored next to every model; "the baseline"
#: is the better of them on the fair score (:func:`napari_trihrge.metrics.spot_scores`)
BASELINE_KS = (6, 12)


#: share of the spots an enhance run holds out (before training the final model on all spots)
#: to measure, per gene, whether the model beats interpolation
TRUST_HOLDOUT_FRACTION = 0.25


#: what the blend of recovery and enhance can combine (:mod:`napari_trihrge.model.stacking`)
STACKING_CANDIDATES = ("knn6", "knn12", "ridge", "network")

#: the neighbouring spots' windows averaged by ``RunConfig.neighbour_images``: the spot window
#: (the smallest of ``windows_um``) as one more window, or every window of the bag
NEIGHBOUR_IMAGE_WINDOWS = ("spot", "all")

#: how enhance combines the candidates into virtual spots and maps (``RunConfig.map_method``)
MAP_METHODS = ("blend", "residual")


#: Network widths. 'paper' is TriHRGE's (1024 wide embedding MLP, 1024-2048-2048 decoder);
#: 'compact' keeps the architecture with narrower layers so a whole slide trains in about a minute
#: on a 2-core CPU. 'auto' picks 'paper' on a GPU and 'compact' on the CPU.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hidden_dim": 1024, "attention_dim": 256, "decoder_dims": (1024, 2048, 2048)},
    "compact": {"hidden_dim": 256, "attention_dim": 128, "decoder_dims": (256, 512, 512)},
}


@dataclass
class RunConfig:
    """Parameters of a run; every length in micrometres.

    The napari Train widget builds its form from these fields and takes its tooltips from this
    list.

    Parameters
    ----------
    encoder
        Image encoder: 'stain-texture' (built in), 'uni', 'uni2-h', 'hf-hub:...', a timm name
        or a local checkpoint.
    encoder_architecture
        For a local checkpoint: its architecture ('uni', 'uni2-h' or a timm name).
    hf_token
        Hugging Face token for gated encoders; used for this call only, never stored.
    windows_um
        Sizes of the image windows around each spot, in micrometres.
    local_window_um
        Size of the extra small window used for dense sub-spot maps, in micrometres.
    n_top_genes
        How many of the most variable genes the model learns (more = slower).
    extra_genes
        Genes to learn in any case. A gene you want to see as an enhanced map must be among
        the learned genes: add it here and run again.
    marker_panel
        Marker genes of a tissue learned and mapped as well as the variable genes: 'all' (the
        default: breast/tumour, brain, immune and stroma together), 'breast', 'brain', 'immune',
        'stroma', or None for the variable genes alone. Panel genes the sample lacks or detects
        in under 1 % of its spots are skipped. Enhance and train (for predict) use it; recovery
        scores the variable genes only.
    neighbour_input
        Give the model the interpolated expression of the measured neighbours as input.
    neighbour_skip
        Add a learned per-gene shortcut from that interpolated expression to the output.
    image_input
        Use the H&E image (off: neighbours only).
    n_neighbours
        Measured spots used for the neighbour input and the kNN baseline.
    stacking
        Recovery: candidates of the per-gene blend; () = the network alone.
    stacking_folds
        Recovery: folds of the out-of-fold predictions that weight the blend.
    map_method
        Enhance (virtual spots, maps, trust): 'blend', the per-gene blend of the candidates as
        recovery's; 'residual', interpolation of the measured spots plus the image candidates'
        detail between them (each minus its own interpolation, weighted per gene), which keeps
        every measured spot's level.
    loss
        What the network is trained on: 'mse' on log-normalised expression, or 'poisson' /
        'negative_binomial' on the raw counts with each spot's library size.
    output_rank
        0: every gene has its own output; k > 0: genes are mixes of k shared gene programs.
    target_smoothing
        Share (0 to below 1) of the nearest measured spots' interpolated expression mixed into
        each training spot's target, to denoise it; 0 = the measured expression.
    target_smoothing_k
        Measured spots used for that interpolation.
    neighbour_images
        0: off. k > 0: one more image window, the mean of the spot-window features of the k
        spots nearest each location (its own spot left out), so the model also sees the
        tissue around the neighbouring spots.
    neighbour_images_windows
        Which of the neighbouring spots' windows are averaged: 'spot' (the smallest of the
        windows, one more window) or 'all' (every window, as many more).
    ensemble
        Models trained with different seeds; their mean is the prediction and their spread
        shows where they disagree (less sure).
    model_preset
        Network size: 'compact' is fast on a laptop CPU, 'paper' uses the reference widths
        (better with a GPU), 'auto' picks compact on CPU and paper on GPU.
    seed
        Random seed: the same seed and settings give the same result.
    device
        'auto' (CUDA when present, else CPU), 'cuda' or 'cpu'.
    threads
        CPU threads for training and prediction (None: chosen from the free cores).
    cache_dir
        Folder for the image-feature cache (None: no cache).
    model
        Network settings that override the preset (ModelConfig fields).
    train
        Training settings (TrainConfig fields, e.g. max_epochs).
    """

    encoder: str = DEFAULT_ENCODER
    encoder_architecture: str | None = None  # for a local checkpoint: 'uni', 'uni2-h', a timm name
    hf_token: str | None = field(default=None, repr=False)  # this call only; never stored
    windows_um: tuple[float, ...] = DEFAULT_WINDOWS_UM
    local_window_um: float = 24.0
    n_top_genes: int = DEFAULT_N_TOP_GENES
    extra_genes: tuple[str, ...] = ()
    marker_panel: str | None = DEFAULT_MARKER_PANEL  # see napari_trihrge.pp.markers
    neighbour_input: bool = True
    # a learned per-gene shortcut from the interpolated neighbour expression to the output, for
    # genes that follow their neighbours more than the image (docs/benchmarks.md)
    neighbour_skip: bool = True
    image_input: bool = True
    n_neighbours: int = 12  # k=12 is the best image-free kNN on the shared sections
    # recovery and enhance (virtual spots, dense maps): the prediction is a per-gene non-negative
    # blend of these candidates (kNN k=6 and k=12 of the measured spots, a ridge head on image
    # features + neighbour-expression PCs, the network), weighted on out-of-fold predictions of the
    # training spots (napari_trihrge.model.stacking); the network is then the average of the fold
    # models. () = the network alone, trained on every training spot
    stacking: tuple[str, ...] = STACKING_CANDIDATES
    stacking_folds: int = 5
    # enhance: 'blend' (as recovery) or 'residual' (detail transfer, model.stacking; better on
    # her2st coarse-to-fine, worse on DLPFC split counts and the synthetic demo: docs/benchmarks.md)
    map_method: str = "blend"
    # levers of the network (issue 21 item 4; measured in docs/benchmarks.md, "levers tried")
    loss: str = "mse"  # 'mse' | 'poisson' | 'negative_binomial' (raw counts, library offset)
    output_rank: int = 0  # 0 = full output layer; k = k gene programs shared by all genes
    target_smoothing: float = 0.0  # weight of the neighbours in the denoised training targets
    target_smoothing_k: int = 6
    # k > 0: the mean image features of the k nearest spots as one more window
    # (tl._shared.NeighbourImages; docs/benchmarks.md, "Levers tried")
    neighbour_images: int = 0
    neighbour_images_windows: str = "spot"  # 'spot' | 'all' (NEIGHBOUR_IMAGE_WINDOWS)
    ensemble: int = 1
    model_preset: str = "auto"  # 'auto' | 'paper' | 'compact' (see MODEL_PRESETS)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads for training and prediction (None: the free cores)
    cache_dir: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threads = parse_threads(self.threads, "threads")

    def most_genes(self, n_vars: int) -> int:
        """Return the most genes a run of a sample with ``n_vars`` genes can learn (size checks)."""
        from ..pp.markers import marker_panel_genes

        return (min(self.n_top_genes, n_vars) + len(self.extra_genes)
                + len(marker_panel_genes(self.marker_panel)))

    def public_dict(self) -> dict[str, Any]:
        """Parameters to record with outputs (the token is never included)."""
        d = asdict(self)
        d.pop("hf_token", None)
        d["windows_um"] = list(self.windows_um)
        d["extra_genes"] = list(self.extra_genes)
        d["stacking"] = list(self.stacking)
        for key in ("model", "train"):  # tuples (decoder_dims) cannot be stored in h5ad
            d[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in d[key].items()}
        return d


def validate_config(cfg: RunConfig) -> None:
    """Raise :class:`TrihrgeInputError` for run parameters that cannot work.

    Checked before any heavy work by every task and by the CLI.
    """
    from ..model.training import TrainConfig

    problems = []

    def whole(name: str, value: Any, flag: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            problems.append(f"{name} must be a whole number >= 1 ({flag}), got {value!r}")

    whole("the number of models in the ensemble", cfg.ensemble, "--ensemble")
    whole("the number of genes", cfg.n_top_genes, "--genes")
    whole("the number of neighbours", cfg.n_neighbours, "n_neighbours")
    windows = tuple(cfg.windows_um) if isinstance(cfg.windows_um, list | tuple) else ()
    if not windows or not all(is_positive_number(w) for w in windows):
        problems.append(f"the window sizes must be positive micrometres (--windows-um), got "
                        f"{cfg.windows_um!r}")
    if not is_positive_number(cfg.local_window_um):
        problems.append(f"the local window must be positive micrometres, got "
                        f"{cfg.local_window_um!r}")
    if problems:
        raise TrihrgeInputError("; ".join(problems), "fix the listed settings")
    check_marker_panel(cfg.marker_panel)
    _check_stacking(cfg)
    _check_levers(cfg)
    try:
        TrainConfig(**{"seed": cfg.seed, "device": cfg.device, **cfg.train}).validate()
    except TypeError as exc:
        raise TrihrgeInputError(f"unknown training setting: {exc}",
                                "see napari_trihrge.model.training.TrainConfig") from exc
    if cfg.cache_dir is not None:
        check_writable_folder(cfg.cache_dir, "the feature cache folder", "--cache-dir")


def check_writable_folder(path: Any, what: str, flag: str) -> None:
    """Raise unless ``path`` is (or can be made) a folder this process can write into."""
    import os
    from pathlib import Path

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise TrihrgeInputError(f"{what} {folder} is a file, not a folder",
                                f"pass a folder with {flag}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrihrgeInputError(f"{what} {folder} cannot be written (no write permission in "
                                f"{existing})", f"pass a folder you can write to with {flag}")


def model_preset(cfg: RunConfig) -> dict[str, Any]:
    """Return the network widths for this run (``cfg.model`` entries override them)."""
    name = cfg.model_preset
    if name == "auto":
        from ..device import resolve_device

        name = "paper" if resolve_device(cfg.device).type == "cuda" else "compact"
    if name not in MODEL_PRESETS:
        raise TrihrgeInputError(f"unknown model preset {name!r}",
                                f"use one of: auto, {', '.join(MODEL_PRESETS)}")
    return dict(MODEL_PRESETS[name])


def _check_levers(cfg: RunConfig) -> None:
    from ..model.network import LOSSES

    problems = []
    if cfg.loss not in LOSSES:
        problems.append(f"loss must be one of {', '.join(LOSSES)} (got {cfg.loss!r})")
    if isinstance(cfg.output_rank, bool) or not isinstance(cfg.output_rank, int | np.integer) \
            or cfg.output_rank < 0:
        problems.append(f"output_rank must be a whole number >= 0 (got {cfg.output_rank!r})")
    if not (isinstance(cfg.target_smoothing, int | float) and 0 <= cfg.target_smoothing < 1):
        problems.append(f"target_smoothing must be in [0, 1) (got {cfg.target_smoothing!r})")
    elif cfg.target_smoothing > 0 and cfg.loss != "mse":
        problems.append("target_smoothing denoises the log-normalised targets of the 'mse' "
                        f"loss; it cannot be combined with loss={cfg.loss!r}")
    if isinstance(cfg.target_smoothing_k, bool) or \
            not isinstance(cfg.target_smoothing_k, int | np.integer) or cfg.target_smoothing_k < 1:
        problems.append(f"target_smoothing_k must be a whole number >= 1 "
                        f"(got {cfg.target_smoothing_k!r})")
    if isinstance(cfg.neighbour_images, bool) or \
            not isinstance(cfg.neighbour_images, int | np.integer) or cfg.neighbour_images < 0:
        problems.append(f"neighbour_images must be a whole number >= 0 (got "
                        f"{cfg.neighbour_images!r})")
    elif cfg.neighbour_images > 0 and not cfg.image_input:
        problems.append("neighbour_images averages the neighbouring spots' image features; "
                        "it needs the image input (image_input=True)")
    if cfg.neighbour_images_windows not in NEIGHBOUR_IMAGE_WINDOWS:
        problems.append(f"neighbour_images_windows must be one of "
                        f"{', '.join(NEIGHBOUR_IMAGE_WINDOWS)} (got "
                        f"{cfg.neighbour_images_windows!r})")
    if problems:
        raise TrihrgeInputError("; ".join(problems), "fix the listed settings")


def check_neighbour_images(k: int, n_spots: int, what: str = "the sample") -> None:
    """Refuse ``neighbour_images=k`` where ``what`` has too few spots (k others per spot)."""
    if k and n_spots < int(k) + 2:
        raise TrihrgeInputError(
            f"neighbour_images={k} averages the {k} spots nearest each location besides its own, "
            f"and {what} has {n_spots} spots", f"use neighbour_images={max(0, n_spots - 2)} or "
            "less (for example 4 or 6), or 0 to switch it off")


def check_levers_supported(cfg: RunConfig, task: str) -> None:
    """Refuse the levers ``task`` does not implement (count losses, denoised targets).

    Recovery and enhance implement them; train and transfer (several sections pooled) do not.
    Every lever's value is checked first (:func:`validate_config` does it for the others).
    """
    _check_levers(cfg)
    unsupported = [f"loss={cfg.loss!r}"] if cfg.loss != "mse" else []
    if cfg.target_smoothing:
        unsupported.append(f"target_smoothing={cfg.target_smoothing}")
    if unsupported:
        raise TrihrgeInputError(f"{task} does not support {' and '.join(unsupported)}",
                                "use them with recovery or enhance, or leave the defaults "
                                "(loss='mse', target_smoothing=0)")


def _check_stacking(cfg: RunConfig) -> None:
    unknown = sorted(set(cfg.stacking) - set(STACKING_CANDIDATES))
    if unknown:
        raise TrihrgeInputError(f"unknown stacking candidates {unknown}",
                                f"use any of {', '.join(STACKING_CANDIDATES)}, or () for the "
                                "network alone")
    if cfg.map_method not in MAP_METHODS:
        raise TrihrgeInputError(f"unknown map method {cfg.map_method!r}",
                                f"use one of: {', '.join(MAP_METHODS)}")
    if cfg.stacking and cfg.stacking_folds < 2:
        raise TrihrgeInputError(f"stacking_folds must be at least 2 (got {cfg.stacking_folds})",
                                "use for example 5, or stacking=() for the network alone")
