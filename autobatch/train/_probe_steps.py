"""What the memory probe measures: complete training steps of the study's recipe on a copy."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..recipe import TrainRecipe
from ._build import make_compute_loss, make_optimizer, make_precision
from ._step import train_step


def step_runner(model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int,
                device: torch.device, recipe: TrainRecipe = TrainRecipe(),
                steps: int = 2) -> Callable[[int], None]:
    """``run(b)``: ``steps`` complete training steps at micro-batch ``b`` on a deep copy of
    ``model``; everything it allocates dies on return.

    The copy and the optimizer are made inside ``run``, so a measuring window around it counts
    parameters exactly once, plus gradients, optimizer state, activations and the batch. Step 1
    allocates the optimizer state, step 2 runs with it. Gradients are zeroed, not freed,
    between steps, as under gradient accumulation: the peak of step 2 then bounds training
    with and without accumulation.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)

    def run(batch_size: int) -> None:
        replica = copy.deepcopy(model).to(device).train()
        optimizer = make_optimizer(replica.parameters(), recipe=recipe)
        compute_loss, precision = make_compute_loss(recipe), make_precision(recipe, device)
        generator = torch.Generator(device=device).manual_seed(0)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            inputs = torch.randn((batch_size, *input_shape), generator=generator, device=device)
            labels = torch.randint(0, num_classes, (batch_size,), generator=generator, device=device)
            return inputs, labels

        for _ in range(steps):
            train_step(replica, optimizer, next_batch, accumulation_steps=1, compute_loss=compute_loss,
                       precision=precision, free_grads=False)

    return run
