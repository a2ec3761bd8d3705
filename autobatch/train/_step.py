"""The one training step, used by the trial loop, the throughput measurement and the memory probe."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

Batch = Any                                          # one micro-batch as the data loader yields it
NextBatch = Callable[[], Batch]
ComputeLoss = Callable[[nn.Module, Batch], torch.Tensor]  # (model, batch) -> mean loss, 0-dim


@dataclass(frozen=True, kw_only=True)
class Precision:
    """How a step's arithmetic runs: the autocast context around forward and loss, the gradient
    scaler (fp16), and gradient clipping (max global norm, applied to unscaled gradients)."""

    autocast: Callable[[], ContextManager] = nullcontext
    scaler: Optional[torch.amp.GradScaler] = None
    grad_clip_norm: Optional[float] = None


FP32 = Precision()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, next_batch: NextBatch, *,
               accumulation_steps: int, compute_loss: ComputeLoss, precision: Precision = FP32,
               free_grads: bool = True, grad_norms: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
    """One optimizer step over ``accumulation_steps`` micro-batches from ``next_batch``.

    Each micro-batch: forward and loss under ``precision.autocast``, ``loss / accumulation_steps``,
    backward (gradients add up, so the step's gradient is that of one batch of
    ``accumulation_steps`` micro-batches); then clipping, the optimizer step and ``zero_grad``.
    ``free_grads=False`` keeps the gradient tensors allocated (zeroed), as the memory probe does so
    that its peak bounds accumulation too.

    ``grad_norms``: when given, a step that accumulates (``accumulation_steps > 1``, no fp16
    gradient scaler) appends one float32 tensor ``[|g_micro|², |g_step|²]`` on the model's device:
    the squared norm of the first micro-batch's mean gradient (``accumulation_steps`` times the
    gradient after it) and of the step's gradient, before clipping. These are the gradient norms
    at two batch sizes of the gradient noise scale (``noise_scale``); they are never read here, so
    measuring them adds no wait for the device.

    Returns the step's loss (the mean micro-batch loss), a detached 0-dim tensor on the model's
    device: reading it is the caller's choice, so the step itself never waits for the device.
    """
    scaler = precision.scaler
    measure = grad_norms is not None and accumulation_steps > 1 and scaler is None
    total, micro_sq = None, None
    for index in range(accumulation_steps):
        batch = next_batch()
        with precision.autocast():
            loss = compute_loss(model, batch)
            if accumulation_steps > 1:  # at 1 no division: no extra forward and backward op
                loss = loss / accumulation_steps
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total = loss.detach().float() if total is None else total + loss.detach().float()
        del batch, loss  # the next micro-batch must not coexist with this one
        if measure and index == 0:
            micro_sq = _grad_sq(model) * accumulation_steps**2
    if measure:
        grad_norms.append(torch.stack([micro_sq, _grad_sq(model)]))
    if precision.grad_clip_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), precision.grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=free_grads)
    return total


def _grad_sq(model: nn.Module) -> torch.Tensor:
    """Squared global norm of the model's gradients, a float32 0-dim tensor on their device."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return nn.utils.get_total_norm(grads, 2.0).float() ** 2
