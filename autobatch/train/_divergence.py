"""Divergence of a trial's training loss, judged on the host from losses read in batches.

The trial loop keeps each optimizer step's loss as the device tensor ``train_step`` returns and
reads them together every ``LOSS_READ_EVERY`` steps (and at evaluation checkpoints and the
end): one device-to-host transfer per read instead of a synchronising ``.item()`` every step.
``LossTrend`` then walks the read losses in step order, exactly as a per-step check would, so
the verdict and the step it names are the same; only the stop comes up to
``LOSS_READ_EVERY - 1`` steps later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

DIVERGENCE_FACTOR = 4.0  # smoothed loss this many times its start: diverged
SMOOTHING = 0.9          # exponential moving average: smooth = 0.9 * smooth + 0.1 * loss
LOSS_READ_EVERY = 16     # optimizer steps between reads of the losses on the host


@dataclass(frozen=True)
class LossTrend:
    """The loss's first value and exponential moving average (``SMOOTHING``) over the steps
    read so far, and the verdict: ``diverged`` is the one-line reason (a non-finite loss, or
    the smoothed loss above ``DIVERGENCE_FACTOR`` times the first), ``""`` while training is
    sound."""

    first: Optional[float] = None
    smooth: Optional[float] = None
    diverged: str = ""

    def after(self, losses: Sequence[float], first_step: int) -> "LossTrend":
        """The trend after ``losses``, the losses of steps ``first_step, first_step + 1, ...``;
        it stops at the first step that diverges (later losses are not looked at)."""
        first, smooth = self.first, self.smooth
        if self.diverged:
            return self
        for step, loss in enumerate(losses, start=first_step):
            if not math.isfinite(loss):
                return replace(self, first=first, smooth=smooth, diverged=f"loss became {loss} at step {step}")
            first = loss if first is None else first
            smooth = loss if smooth is None else SMOOTHING * smooth + (1 - SMOOTHING) * loss
            if smooth > DIVERGENCE_FACTOR * first:
                return replace(self, first=first, smooth=smooth,
                               diverged=f"smoothed loss {smooth:.3g} > {DIVERGENCE_FACTOR:g}x its start "
                                        f"{first:.3g} at step {step}")
        return replace(self, first=first, smooth=smooth)


def read_losses(losses: Sequence[torch.Tensor]) -> list[float]:
    """The values of 0-dim loss tensors (on any one device), read with one transfer."""
    if not losses:
        return []
    return torch.stack(list(losses)).float().tolist()
