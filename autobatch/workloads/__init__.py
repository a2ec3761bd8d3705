"""Workloads: the model and the data a study trains.

Models: any torchvision classification model by name (looked up in torchvision's own
registry), autobatch's small reference models, or ``pkg.module:function`` called as
``function(num_classes=..., input_shape=SHAPE)``. Datasets: ``digits``, ``synthetic[:NxCxHxW]``,
``cifar10``, ``imagefolder:PATH`` and ``pkg.module:function`` returning
``(train_dataset, val_dataset, num_classes)``.
"""

from ._datasets import Workload, load_workload
from ._models import InputAdapter, build_model, check_model_name, list_models

__all__ = ["InputAdapter", "Workload", "build_model", "check_model_name", "list_models", "load_workload"]
