"""Training throughput at a micro-batch size, measured on a copy of the model."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..recipe import TrainRecipe
from ..workloads import Workload
from ._batches import MicroBatches
from ._build import make_compute_loss, make_optimizer, make_precision
from ._step import train_step
from ._trial import sync


def measure_throughput(model: nn.Module, workload: Workload, batch_size: int, device: torch.device,
                       steps: int = 3, recipe: TrainRecipe = TrainRecipe()) -> float:
    """Training samples/s at ``batch_size``: one warm-up step, then ``steps`` timed steps of the
    recipe's training step, on a copy of the model (the caller's weights are untouched)."""
    model = copy.deepcopy(model).to(device).train()
    optimizer = make_optimizer(model.parameters(), recipe=recipe)
    compute_loss, precision = make_compute_loss(recipe), make_precision(recipe, device)
    batches = MicroBatches(workload.train, batch_size, device, seed=0)
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        train_step(model, optimizer, batches.next, accumulation_steps=1, compute_loss=compute_loss,
                   precision=precision)
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)
