"""Train once, apply anywhere: ``tl.train`` (:mod:`._train`) and ``tl.predict``
(:mod:`._predict`), with the model's description and run models in :mod:`._model_io`; the run
folders of ``trihrge train`` / ``trihrge predict`` are written by
:mod:`napari_trihrge.workflows.runs`. This module gathers them under one name."""

from __future__ import annotations

from ..io.model_folder import TrainedModel
from ._model_io import describe, save_run_model
from ._predict import (
    DEFAULT_IMAGE_STRIDE_UM,
    IMAGE_SUFFIXES,
    PredictResult,
    image_target,
    is_image_path,
    predict,
    prediction_inputs,
)
from ._train import TrainResult, train

__all__ = ["train", "predict", "TrainResult", "TrainedModel", "PredictResult", "describe",
           "image_target", "is_image_path", "prediction_inputs", "save_run_model",
           "DEFAULT_IMAGE_STRIDE_UM", "IMAGE_SUFFIXES"]
