"""Validation: the recipe's metric and loss of a model on a dataset."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..recipe import TrainRecipe
from ._build import autocast, make_loss, make_metric
from ._step import Batch

# (model, batch, device) -> (outputs, targets): the prediction tensor and the targets, on device
Predict = Callable[[nn.Module, Batch, torch.device], tuple[torch.Tensor, torch.Tensor]]


def predict_batch(model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain convention: ``batch = (inputs, targets)``, ``outputs = model(inputs)``."""
    inputs, targets = batch
    return model(inputs.to(device, non_blocking=True)), targets.to(device, non_blocking=True)


def _chunks(dataset: Dataset, batch_size: int) -> Iterable[Batch]:
    if isinstance(dataset, TensorDataset):  # fast path: slices, no per-sample Python
        tensors = dataset.tensors
        return (tuple(t[i:i + batch_size] for t in tensors) for i in range(0, len(tensors[0]), batch_size))
    return DataLoader(dataset, batch_size=batch_size, num_workers=2)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             recipe: TrainRecipe = TrainRecipe(), predict: Predict = predict_batch) -> tuple[float, float]:
    """Validation ``(metric, mean loss)``: the recipe's metric (accuracy for today's recipe) and
    its loss, averaged over every sample of ``dataset``, forward passes in ``batch_size``
    chunks under the recipe's autocast.

    The per-batch sums stay on the device (float64) and are read once at the end, so
    evaluation does not wait for the device after every batch (a user metric returning a
    Python float is the exception: it is read per batch). Raises ``RecipeError`` for a loss or
    metric that fails on the model's outputs.
    """
    model.eval()
    metric, loss_fn = make_metric(recipe), make_loss(recipe)
    metric_sum = loss_sum = None
    n = 0
    try:
        for batch in _chunks(dataset, batch_size):
            with autocast(recipe, device):
                outputs, targets = predict(model, batch, device)
                batch_loss = loss_fn(outputs, targets).detach().to(torch.float64) * len(targets)
            batch_metric = metric(outputs, targets)
            metric_sum = batch_metric if metric_sum is None else metric_sum + batch_metric
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            n += len(targets)
    finally:
        model.train()
    if n == 0:
        raise ValueError("evaluate: the dataset is empty")
    return metric.reduce(metric_sum, n), float(loss_sum) / n
