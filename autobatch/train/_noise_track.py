"""The gradient noise scale as a by-product of a trial that accumulates.

Each optimizer step of ``train_step`` appends the squared gradient norms of its first micro-batch
and of the whole step (``grad_norms``) as a device tensor; nothing is read per step. At each
evaluation checkpoint, where the trial waits for the device anyway, the pending norms come to the
host in one transfer and one point of the series is recorded: ``B_simple`` as the ratio of the
EMAs of the ``tr(Σ)`` and ``|G|²`` estimates over all steps so far (McCandlish et al. 2018,
Appendix A.1), with a bootstrap interval over the steps since the previous checkpoint.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..noise_scale import noise_scale, noise_scale_series


class NoiseScaleTrack:
    """The noise-scale series of one trial at micro-batch ``b_small`` and effective batch
    ``b_big``. ``pending``: the list ``train_step`` appends to; ``series``: one
    ``(samples_seen, b_simple, low, high)`` per checkpoint (``inf`` where ``|G|²`` is lost in
    its noise; ``low``/``high`` None from fewer than 3 steps, ``high`` inf when unbounded)."""

    def __init__(self, *, b_small: int, b_big: int) -> None:
        self.b_small, self.b_big = b_small, b_big
        self.pending: list[torch.Tensor] = []
        self.small: list[float] = []
        self.big: list[float] = []
        self.series: list[tuple[int, float, Optional[float], Optional[float]]] = []

    def checkpoint(self, samples_seen: int) -> None:
        """Bring the pending norms to the host and record the point at ``samples_seen``."""
        if not self.pending:
            return
        start = len(self.small)
        for small, big in torch.stack(self.pending).cpu().tolist():
            if math.isfinite(small) and math.isfinite(big):
                self.small.append(small)
                self.big.append(big)
        self.pending.clear()
        if len(self.small) == start:
            return
        ema = noise_scale_series(self.small, self.big, b_small=self.b_small, b_big=self.b_big)[-1]
        segment = noise_scale(self.small[start:], self.big[start:], b_small=self.b_small, b_big=self.b_big)
        low, high = segment.interval or (None, None)
        self.series.append((samples_seen, float(ema), low, high))

    def to_dict(self) -> dict:
        """The stored form (trial attribute ``noise_scale``): batch sizes, steps measured and
        the series as ``[samples_seen, b_simple, low, high]`` rows, ``inf`` (unbounded) written as
        None."""
        finite = lambda x: x if x is not None and math.isfinite(x) else None  # noqa: E731
        return {"b_small": self.b_small, "b_big": self.b_big, "steps": len(self.small),
                "series": [[s, finite(b), finite(lo), finite(hi)] for s, b, lo, hi in self.series]}
