"""Validation: the recipe's metric and loss of a model on a dataset, through the batch
conventions (or the user's ``--step`` and evaluation function)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import AutobatchError
from ..recipe import TrainRecipe
from ..workloads import batch_length, call_model, import_path, prediction_of, split_batch, user_code
from ._batches import eval_batches
from ._build import autocast, make_compute_loss, make_loss, make_metric
from ._step import Batch

# (model, batch, device) -> (outputs, targets): the prediction tensor and the targets, on device
Predict = Callable[[nn.Module, Batch, torch.device], tuple[torch.Tensor, torch.Tensor]]


def predict_batch(model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch conventions (``autobatch.workloads``): ``batch`` (on ``device``) is
    ``(inputs, targets)`` or a Hugging Face style dict; the model is called as ``model(x)``,
    ``model(*inputs)`` or ``model(**inputs)``; the prediction is the output tensor, the first of
    a tuple/list or ``logits``. A forward that raises is a ``UserCodeError`` naming the model."""
    inputs, targets, key = split_batch(batch)
    with user_code(f"forward of {type(model).__name__} (evaluation)"):
        outputs = call_model(model, inputs, targets, key)
    return prediction_of(outputs), targets


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             recipe: TrainRecipe = TrainRecipe(), predict: Predict = predict_batch, *,
             step: Optional[str] = None, step_eval: Optional[str] = None,
             num_workers: Optional[int] = 0) -> tuple[float, float]:
    """Validation ``(metric, mean loss)``: the recipe's metric (accuracy for today's recipe) and
    its loss, averaged over every sample of ``dataset``, forward passes in ``batch_size``
    chunks under the recipe's autocast; the model is left in training mode. ``num_workers``:
    loader worker processes for a dataset that is not in-memory tensors (shut down at the end).

    With ``step`` (the user's ``--step``): the mean of ``step(model, batch)`` over the validation
    batches is the loss, and the metric is ``step_eval(model, batches)`` (an iterable of
    validation batches on the device; called in eval mode under ``torch.no_grad``), or the mean
    loss without one.

    The per-batch sums stay on the device (float64) and are read once at the end, so
    evaluation does not wait for the device after every batch (a user metric returning a
    Python float is the exception: it is read per batch). Raises ``RecipeError`` for a loss or
    metric that fails on the model's outputs, ``UserCodeError`` for the user's code raising.
    """
    model.eval()
    try:
        if step is not None:
            return _evaluate_step(model, dataset, batch_size, device, recipe, step, step_eval, num_workers)
        metric, loss_fn = make_metric(recipe), make_loss(recipe)
        metric_sum = loss_sum = None
        n = 0
        for batch in eval_batches(dataset, batch_size, device, num_workers):
            with autocast(recipe, device):
                outputs, targets = predict(model, batch, device)
                with user_code(f"loss {recipe.loss} on the model's prediction {tuple(outputs.shape)}"):
                    batch_loss = loss_fn(outputs, targets).detach().to(torch.float64) * len(targets)
            with user_code(f"metric {recipe.metric} on the model's prediction {tuple(outputs.shape)}"):
                batch_metric = metric(outputs, targets)
            metric_sum = batch_metric if metric_sum is None else metric_sum + batch_metric
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            n += len(targets)
    finally:
        model.train()
    if n == 0:
        raise ValueError("evaluate: the dataset is empty")
    return metric.reduce(metric_sum, n), float(loss_sum) / n


def _evaluate_step(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                   recipe: TrainRecipe, step: str, step_eval: Optional[str],
                   num_workers: Optional[int]) -> tuple[float, float]:
    compute_loss = make_compute_loss(recipe, step=step)
    loss_sum, n = 0.0, 0
    for batch in eval_batches(dataset, batch_size, device, num_workers):
        with autocast(recipe, device):
            loss = compute_loss(model, batch)
        size = batch_length(batch)
        loss_sum, n = loss_sum + float(loss.detach()) * size, n + size
    mean_loss = loss_sum / n
    if step_eval is None:
        return mean_loss, mean_loss
    function = import_path(step_eval, "evaluation function")
    with user_code(f"evaluation function {step_eval}"), autocast(recipe, device):
        value = function(model, eval_batches(dataset, batch_size, device, num_workers))
    try:
        return float(value), mean_loss
    except (TypeError, ValueError):
        raise AutobatchError(f"evaluation function {step_eval} must return a number, got "
                             f"{type(value).__name__}") from None
