"""Tasks (``napari_trihrge.tl``): held-out spot recovery and enhancement.

These are the functions the CLI, the napari widgets and Python users all call. They take the
AnnData returned by :func:`napari_trihrge.io.read` (raw counts, ``obsm['spatial']`` in
full-resolution pixels), return result objects holding AnnData and, in the scanpy manner, also
record the result on the AnnData they were given (``key_added``, default ``trihrge_<task>``; see
:func:`store_result`). One module per task: ``_recovery``, ``_transfer``, ``_enhance`` (with
``_maps``), ``_train``, ``_predict`` (both also under ``inference``, with the model's description
in ``_model_io``), ``hd_validation``, ``coarse_validation`` (validate-coarse), ``_cells`` (cells
from nuclei); ``_config`` holds
:class:`RunConfig` and ``_shared`` the steps they share.
"""

from ._cells import CellsResult, cell_spot_consistency, cells
from ._config import (
    BASELINE_KS,
    MODEL_PRESETS,
    STACKING_CANDIDATES,
    TRUST_HOLDOUT_FRACTION,
    RunConfig,
    check_writable_folder,
    model_preset,
    validate_config,
)
from ._enhance import EnhanceResult, enhance
from ._maps import DenseMaps, check_map_size, map_grid, map_spot_consistency, predict_maps
from ._predict import predict
from ._recovery import RecoveryResult, recovery
from ._shared import StackedModel, sample_geometry, trust_summary
from ._store import store_result
from ._train import train
from ._transfer import TransferResult, transfer, transfer_genes
from .coarse_validation import CoarseValidationResult, coarse_sample, validate_coarse

__all__ = [
    "RunConfig",
    "MODEL_PRESETS",
    "BASELINE_KS",
    "TRUST_HOLDOUT_FRACTION",
    "StackedModel",
    "STACKING_CANDIDATES",
    "validate_config",
    "check_map_size",
    "trust_summary",
    "RecoveryResult",
    "TransferResult",
    "EnhanceResult",
    "CoarseValidationResult",
    "DenseMaps",
    "CellsResult",
    "cells",
    "cell_spot_consistency",
    "recovery",
    "transfer",
    "enhance",
    "train",
    "predict",
    "validate_coarse",
    "coarse_sample",
    "transfer_genes",
    "sample_geometry",
    "model_preset",
    "map_grid",
    "predict_maps",
    "map_spot_consistency",
    "check_writable_folder",
    "store_result",
]


def __dir__() -> list[str]:  # dir() and tab completion show the public API only
    return sorted(__all__)
