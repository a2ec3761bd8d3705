"""A recipe checked on the user's model and data before a study spends anything on it."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import AutobatchError
from ..recipe import TrainRecipe
from ._build import make_optimizer, make_precision
from ._evaluate import evaluate

CHECK_SAMPLES = 4


def _head(dataset: Dataset, n: int) -> Dataset:
    n = min(n, len(dataset))
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, range(n))


def check_recipe(model: nn.Module, val: Dataset, device: torch.device,
                 recipe: TrainRecipe = TrainRecipe(), *, step: Optional[str] = None,
                 step_eval: Optional[str] = None) -> None:
    """Build the recipe's precision and optimizer (on a copy of ``model``) and evaluate its loss
    and metric on the first ``CHECK_SAMPLES`` validation samples: fp16 on CPU, a user optimizer,
    loss or metric that cannot be imported, raises or returns the wrong type fail here, with a
    ``RecipeError`` naming the option, before the probe and the study; a model without trainable
    parameters raises ``AutobatchError``. The caller's model is
    left untouched. ``step``/``step_eval``: the user's step and evaluation functions, evaluated
    as the trials will."""
    make_precision(recipe, device)
    if not any(p.requires_grad for p in model.parameters()):
        raise AutobatchError(f"model {type(model).__name__} has no trainable parameters: nothing to tune; "
                             "return a module with parameters that require grad")
    replica = copy.deepcopy(model).to(device)
    make_optimizer(replica.parameters(), recipe=recipe)
    evaluate(replica, _head(val, CHECK_SAMPLES), CHECK_SAMPLES, device, recipe, step=step, step_eval=step_eval)
