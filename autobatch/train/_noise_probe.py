"""The noise-scale probe: the gradient noise scale of the study's recipe, measured on a copy of
the model before the search starts, from a few hundred training samples."""

from __future__ import annotations

import copy
import math
import time
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import AutobatchError
from ..recipe import TrainRecipe
from ..workloads import Workload
from ._batches import MicroBatches
from ._build import make_compute_loss, make_optimizer, make_precision
from ..noise_scale import NoiseScale, noise_scale

PROBE_MICRO_BATCH = 8     # the small batch size
PROBE_ACCUMULATION = 16   # the large one: this many micro-batches
MIN_PROBE_STEPS = 3
PROBE_STEPS = 12          # optimizer steps: 12 x 128 = 1536 training samples (about 1 s for the
                          # small models on a CPU; the 80 % interval within ±20 % on digits)


def projected_seconds(ends: Sequence[float], steps: int = MIN_PROBE_STEPS) -> float:
    """Seconds ``steps`` probe steps take, from the end times (seconds since the start) of the
    ones done: the time so far plus the rest at the last step's time (the first step, with its
    warm-up, is not taken as typical once a second one is timed)."""
    if not ends:
        return 0.0
    last = ends[-1] - (ends[-2] if len(ends) > 1 else 0.0)
    return ends[-1] + max(0, steps - len(ends)) * last


def probe_overruns(ends: Sequence[float], max_seconds: float, steps: int = MIN_PROBE_STEPS) -> bool:
    """Whether ``steps`` steps will not fit in ``max_seconds``: already over after one step, or
    projected over (``projected_seconds``) after two."""
    if not ends:
        return False
    return ends[-1] > max_seconds if len(ends) == 1 else projected_seconds(ends, steps) > max_seconds


def probe_noise_scale(model: nn.Module, workload: Workload, device: torch.device, *, learning_rate: float,
                      recipe: TrainRecipe = TrainRecipe(), step: Optional[str] = None,
                      micro_batch: int = PROBE_MICRO_BATCH, accumulation_steps: int = PROBE_ACCUMULATION,
                      steps: int = PROBE_STEPS, seed: int = 0, max_seconds: Optional[float] = None) -> NoiseScale:
    """``B_simple`` from ``steps`` optimizer steps of the recipe at ``learning_rate`` on a copy of
    ``model`` (the caller's weights are untouched), each of ``accumulation_steps`` micro-batches of
    ``micro_batch`` training samples. Per step, the small batch's ``|G_small|²`` is the mean squared
    norm of the micro-batches' gradients (each measured on its own: ``accumulation_steps`` times
    less noisy than one, which a trial's by-product has) and ``|G_big|²`` that of their mean; the
    two-batch estimates are those of McCandlish et al. (2018, Appendix A.1), the interval a
    bootstrap over the steps (``noise_scale``). The copy then steps on the mean gradient, so the
    estimate follows a few hundred samples of training. Memory: one micro-batch and one copy of
    the gradients. ``max_seconds``: stop after this long once ``MIN_PROBE_STEPS`` steps are done
    (a large model on a CPU); when the first two steps show that ``MIN_PROBE_STEPS`` steps would
    take longer than that (``probe_overruns``), give up rather than overrun it.
    Under fp16 the gradient scaler is left out (its changing scale would mix
    norms of different units).

    Raises ``AutobatchError`` when no step gave finite gradient norms (the recipe diverged at
    once) or when ``MIN_PROBE_STEPS`` steps do not fit in ``max_seconds``, and ``UserCodeError`` when the user's code raised."""
    micro_batch = max(1, min(micro_batch, len(workload.train)))
    model = copy.deepcopy(model).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, learning_rate, recipe)
    autocast = make_precision(recipe, device).autocast
    compute_loss = make_compute_loss(recipe, step=step)
    small, big = [], []
    ends: list[float] = []  # seconds since the start at the end of each step done
    started = time.perf_counter()
    with MicroBatches(workload.train, micro_batch, device, seed=seed, num_workers=0,
                      name=f"dataset {workload.name}") as batches:
        for done in range(steps):
            elapsed = time.perf_counter() - started
            if done:
                ends.append(elapsed)
            if max_seconds is not None and done < MIN_PROBE_STEPS and probe_overruns(ends, max_seconds):
                raise AutobatchError(f"{MIN_PROBE_STEPS} probe steps take about {projected_seconds(ends):.1f}s, "
                                     f"more than the probe's share of the study ({max_seconds:.1f}s)")
            if max_seconds is not None and done >= MIN_PROBE_STEPS and elapsed > max_seconds:
                break
            total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
            micro_sq = torch.zeros((), device=device)
            for _ in range(accumulation_steps):
                optimizer.zero_grad(set_to_none=False)
                with autocast():
                    loss = compute_loss(model, batches.next())
                loss.backward()
                # a parameter this batch did not reach has no gradient: zero, as the optimizer sees it
                grads = [torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.float()
                         for p in params]
                micro_sq = micro_sq + nn.utils.get_total_norm(grads, 2.0) ** 2
                torch._foreach_add_(total, grads)
            torch._foreach_div_(total, float(accumulation_steps))
            small.append(micro_sq / accumulation_steps)
            big.append(nn.utils.get_total_norm(total, 2.0) ** 2)
            for p, g in zip(params, total):
                p.grad = g.to(p.dtype)
            optimizer.step()
    pairs = [(s, b) for s, b in torch.stack([torch.stack(small), torch.stack(big)], 1).cpu().tolist()
             if math.isfinite(s) and math.isfinite(b)]
    if not pairs:
        raise AutobatchError(f"the noise-scale probe found no finite gradient norm in {steps} steps at lr "
                             f"{learning_rate:.3g}: the recipe diverges at once")
    small_sq, big_sq = zip(*pairs)
    return noise_scale(small_sq, big_sq, b_small=micro_batch, b_big=micro_batch * accumulation_steps, seed=seed)
