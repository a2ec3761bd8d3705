"""Torch objects built from the study's ``TrainRecipe``: the optimizer, the lr schedule's
factor, the loss, the step's loss computation and its precision. Every trial, probe, throughput
measurement and baseline builds them here."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from ..recipe import TrainRecipe
from ._step import FP32, ComputeLoss, Precision

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> mean loss


def make_optimizer(params: Iterable[nn.Parameter], lr: float = 0.1,
                   recipe: TrainRecipe = TrainRecipe()) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` at learning rate ``lr``."""
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                           weight_decay=recipe.weight_decay)


def lr_factor(step: int, total_steps: int, recipe: TrainRecipe = TrainRecipe()) -> float:
    """The lr multiplier at optimizer step ``step`` of ``total_steps``: linear warm-up over the
    recipe's warm-up fraction of the steps, then cosine decay to zero."""
    warmup = max(1, int(recipe.warmup_fraction * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_loss(recipe: TrainRecipe = TrainRecipe()) -> LossFn:
    """The recipe's training loss: mean over the batch."""
    return nn.functional.cross_entropy


def make_compute_loss(recipe: TrainRecipe = TrainRecipe()) -> ComputeLoss:
    """``compute_loss(model, batch)``: the recipe's loss of the model's outputs for a batch of
    ``(inputs, targets)``."""
    loss_fn = make_loss(recipe)

    def compute_loss(model: nn.Module, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
        inputs, targets = batch
        return loss_fn(model(inputs), targets)

    return compute_loss


def make_precision(recipe: TrainRecipe = TrainRecipe(), device: torch.device = torch.device("cpu")) -> Precision:
    """The step's precision for the recipe on ``device``: autocast, gradient scaler, clipping."""
    if recipe.precision == "fp32" and recipe.grad_clip_norm is None:
        return FP32
    return Precision(grad_clip_norm=recipe.grad_clip_norm)
