"""Training throughput at a micro-batch size, measured on a copy of the model."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Optional

import torch
from torch import nn

from ..recipe import TrainRecipe
from ..workloads import Workload
from ._batches import MicroBatches
from ._build import make_compute_loss, make_optimizer, make_precision
from ._step import train_step
from ._trial import sync


def measure_throughput(model: nn.Module, workload: Workload, batch_size: int, device: torch.device,
                       steps: int = 3, recipe: TrainRecipe = TrainRecipe(), step: Optional[str] = None,
                       num_workers: Optional[int] = None) -> float:
    """Training samples/s at ``batch_size``: one warm-up step, then ``steps`` timed steps of the
    recipe's training step (or the user's ``step``), on a copy of the model (the caller's
    weights are untouched), with the trials' loader. Each step is timed alone and the median
    step counts (``steady_step_seconds``): on a shared machine one step stalled by another
    process would otherwise set the plan's every trial length. Raises ``UserCodeError`` when
    the user's code raises at this size."""
    model = copy.deepcopy(model).to(device).train()
    optimizer = make_optimizer(model.parameters(), recipe=recipe)
    compute_loss, precision = make_compute_loss(recipe, step=step), make_precision(recipe, device)
    times: list[float] = []
    with MicroBatches(workload.train, batch_size, device, seed=0, num_workers=num_workers,
                      name=f"dataset {workload.name}") as batches:
        for index in range(steps + 1):
            sync(device)
            start = time.perf_counter()
            train_step(model, optimizer, batches.next, accumulation_steps=1, compute_loss=compute_loss,
                       precision=precision)
            sync(device)
            if index:  # the first step warms up
                times.append(time.perf_counter() - start)
    return batch_size / steady_step_seconds(times)


def steady_step_seconds(times: list[float]) -> float:
    """The step time a plan can rest on: the median of ``times`` (seconds, one per timed step;
    at least one), so that one step stalled by another process does not count, while a machine
    that stays busy does. Raises ``ValueError`` for no times."""
    if not times:
        raise ValueError("no step was timed")
    return max(statistics.median(times), 1e-9)
