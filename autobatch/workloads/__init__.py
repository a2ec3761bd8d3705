"""Workloads: the model and the data a study trains, and the batch conventions between them.

Models: any torchvision classification model by name (looked up in torchvision's own
registry), autobatch's small reference models (``small_cnn``, ``mlp``, ``cnn1d``, ``gru``), or
``pkg.module:function`` called as ``function(num_classes=..., input_shape=SHAPE)``. Datasets:
``digits``, ``mnist1d``, ``wine``, ``breast_cancer``, ``synthetic[:NxCxHxW]``, ``cifar10``,
``imagefolder:PATH`` and ``pkg.module:function`` returning ``(train_dataset, val_dataset,
num_classes)``, checked at load. Conventions: how an item calls the model and what in its
output is the prediction (``_conventions``).
"""

from ._checks import MAX_SCAN, DataFacts, TargetFacts, check_data
from ._conventions import (TARGET_KEYS, batch_length, call_model, first_tensor, is_out_of_memory,
                           own_loss, prediction_of, raise_user_error, split_batch, to_device, user_code)
from ._datasets import Workload, load_workload, user_dataset
from ._holdout import HOLDOUT_FRACTION, MIN_VAL_FOR_HOLDOUT, holdout_size, split_holdout
from ._imports import import_path, in_process, in_scope, object_name
from ._models import InputAdapter, build_model, check_model_name, list_models

__all__ = ["HOLDOUT_FRACTION", "MIN_VAL_FOR_HOLDOUT", "holdout_size", "split_holdout", "DataFacts", "InputAdapter", "MAX_SCAN", "TARGET_KEYS", "TargetFacts", "Workload", "batch_length", "build_model",
           "call_model", "check_data", "check_model_name", "first_tensor", "import_path", "in_process",
           "in_scope", "is_out_of_memory", "list_models", "load_workload", "object_name",
           "own_loss", "prediction_of", "raise_user_error", "split_batch", "to_device", "user_code", "user_dataset"]
