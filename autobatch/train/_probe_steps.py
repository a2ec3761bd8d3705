"""What the memory probe measures: complete training steps of the study's recipe on a copy of
the model, on real batches of the user's training set."""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..recipe import TrainRecipe
from ._batches import copy_to, sample_batch
from ._build import make_compute_loss, make_optimizer, make_precision
from ._evaluate import evaluate
from ._step import train_step


def step_runner(model: nn.Module, *, dataset: Dataset, device: torch.device,
                recipe: TrainRecipe = TrainRecipe(), steps: int = 2,
                step: Optional[str] = None) -> Callable[[int], None]:
    """``run(b)``: ``steps`` complete training steps at micro-batch ``b`` on a deep copy of
    ``model``; everything it allocates dies on return.

    Batches are real: ``b`` samples drawn from ``dataset`` (the training split), repeated when it
    is smaller, collated as training collates them, so dtypes, vocabularies, structures and
    shapes are the user's. They are drawn on the CPU and copied onto the device inside ``run``
    (on the CPU, a batch drawn inside the window is used as drawn), so a measuring window
    around it counts one batch, as a training step does. ``step`` is the user's ``--step`` (it replaces the conventions' loss).

    The copy and the optimizer are made inside ``run``, so a measuring window around it counts
    parameters exactly once, plus gradients, optimizer state, activations and the batch. Step 1
    allocates the optimizer state, step 2 runs with it. Gradients are zeroed, not freed,
    between steps, as under gradient accumulation: the peak of step 2 then bounds training
    with and without accumulation.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    compute_loss = make_compute_loss(recipe, step=step)
    cpu_batches: dict[int, object] = {}

    def run(batch_size: int) -> None:
        fresh = batch_size not in cpu_batches
        if fresh:
            cpu_batches.clear()  # one size at a time: host memory stays small
            cpu_batches[batch_size] = sample_batch(dataset, batch_size)
        replica = copy.deepcopy(model).to(device).train()
        optimizer = make_optimizer(replica.parameters(), recipe=recipe)
        precision = make_precision(recipe, device)

        def next_batch() -> object:
            if fresh and device.type == "cpu":  # drawn inside this window: counted once already
                return cpu_batches[batch_size]
            return copy_to(cpu_batches[batch_size], device)

        for _ in range(steps):
            train_step(replica, optimizer, next_batch, accumulation_steps=1, compute_loss=compute_loss,
                       precision=precision, free_grads=False)

    return run


def eval_runner(model: nn.Module, *, dataset: Dataset, device: torch.device, recipe: TrainRecipe = TrainRecipe(),
                step: Optional[str] = None, step_eval: Optional[str] = None) -> Callable[[int], None]:
    """``run(e)``: one evaluation at batch ``e`` beside the training state, on a deep copy of
    ``model``; everything it allocates dies on return.

    What a trial holds while it evaluates: the parameters and the optimizer state (made by one
    step on zero gradients, which are then freed, as ``train_step`` frees them); then
    ``autobatch.train.evaluate`` itself (the conventions or the user's ``step`` / ``step_eval``,
    the recipe's metric and autocast, ``torch.no_grad``, eval mode) on ``e`` real samples of
    ``dataset`` (the validation split, repeated when it is smaller) in one batch. The
    state-making step sets a floor (parameters + gradients + state) that the fit's two-regime
    form absorbs.
    """
    device = torch.device(device)

    def run(batch_size: int) -> None:
        replica = copy.deepcopy(model).to(device)
        optimizer = make_optimizer(replica.parameters(), recipe=recipe)
        for p in replica.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        chunk = Subset(dataset, [i % len(dataset) for i in range(batch_size)])
        evaluate(replica, chunk, batch_size, device, recipe, step=step, step_eval=step_eval, num_workers=0)

    return run
