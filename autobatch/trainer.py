"""One trial: train one configuration and measure it.

A single linear loop, nanoGPT-style: lr -> micro-steps with ``loss / accumulation_steps`` ->
optimizer step -> divergence check -> evaluation at fixed samples-seen checkpoints -> timing.
Evaluation happens at the same numbers of training samples for every batch size and
accumulation setting, so trials are compared like with like.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .memory import PeakWindow
from .records import (STOP_BUDGET, STOP_COMPLETED, STOP_DIVERGED, STOP_OUT_OF_MEMORY,
                      STOP_PRUNED, EvalPoint, TrialConfig, TrialResult)
from .workloads import Workload

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
WARMUP_FRACTION = 0.05
DIVERGENCE_FACTOR = 4.0  # smoothed loss this many times its start: diverged
EVAL_BATCH_FACTOR = 4    # evaluation needs no activations for backward: larger batches fit

OnEval = Callable[[EvalPoint], bool]  # returns True to stop the trial (pruned)


def make_optimizer(params, lr: float = 0.1) -> torch.optim.Optimizer:
    """The optimizer every trial, probe and baseline uses."""
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warm-up over the first 5% of optimizer steps, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def eval_points(train_samples: int, n_evals: int) -> tuple[int, ...]:
    """Evenly spaced samples-seen checkpoints ending at ``train_samples``."""
    return tuple(sorted({max(1, round(train_samples * i / n_evals)) for i in range(1, n_evals + 1)}))


def index_stream(n: int, seed: int) -> Iterator[int]:
    """Sample indices forever, reshuffled each epoch: no sample dropped, none seen twice as
    often as another, and effective batches larger than the dataset still work."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


class _Batches:
    """Micro-batches from a stream of reshuffled epochs: in-memory tensors are sliced directly
    (fast path: one permutation tensor per epoch, no per-sample Python), other datasets go
    through a DataLoader over ``index_stream`` (the same order)."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, seed: int):
        self.batch_size, self.device = batch_size, device
        if isinstance(dataset, TensorDataset):
            self.x, self.y = (t.to(device) for t in dataset.tensors)
            self.n, self.gen = len(dataset), torch.Generator().manual_seed(seed)
            self.order, self.pos = torch.empty(0, dtype=torch.long), 0
            self._next = self._tensor_batch
        else:
            loader = DataLoader(dataset, batch_size=batch_size, sampler=index_stream(len(dataset), seed),
                                num_workers=2, pin_memory=device.type == "cuda", persistent_workers=True)
            iterator = iter(loader)
            self._next = lambda: tuple(t.to(self.device, non_blocking=True) for t in next(iterator))

    def _tensor_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts, need = [], self.batch_size
        while need:
            if self.pos == len(self.order):  # next epoch: as index_stream does
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, len(self.order) - self.pos)
            parts.append(self.order[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        idx = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(self.device)
        return self.x[idx], self.y[idx]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._next()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Validation (accuracy, mean loss)."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors
        chunks = ((x_all[i:i + batch_size], y_all[i:i + batch_size])
                  for i in range(0, len(x_all), batch_size))
    else:
        chunks = DataLoader(dataset, batch_size=batch_size, num_workers=2)
    for x, y in chunks:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train()
    return correct / n, loss_sum / n


def _resident_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_trial(
    model: nn.Module,
    workload: Workload,
    config: TrialConfig,
    *,
    train_samples: int,
    checkpoints: Sequence[int],
    device: torch.device,
    seed: int = 0,
    on_eval: Optional[OnEval] = None,
    deadline: Optional[float] = None,
) -> TrialResult:
    """Train ``model`` with ``config`` for ``train_samples`` samples; evaluate at ``checkpoints``.

    ``on_eval`` sees each evaluation and may stop the trial (a pruner). ``deadline`` (unix
    time) cuts the trial off as ``budget``. Peak memory: on CUDA the allocator's own peak over
    the whole trial; on CPU the exact tensor accounting of the first optimizer step (which
    allocates the optimizer state) plus the parameters and buffers that existed before it.
    """
    torch.manual_seed(seed)
    b, k = config.batch_size, config.accumulation_steps
    total_steps = max(1, math.ceil(train_samples / config.effective_batch_size))
    model = model.to(device).train()
    optimizer = make_optimizer(model.parameters(), config.learning_rate)
    batches = _Batches(workload.train, b, device, seed)
    eval_batch = b * EVAL_BATCH_FACTOR
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    curve: list[EvalPoint] = []
    samples, train_time, eval_time = 0, 0.0, 0.0
    first_loss, smooth_loss, peak_bytes = None, None, None
    stop, detail = STOP_COMPLETED, ""
    pending = list(checkpoints)
    started = segment = time.perf_counter()

    try:
        for step in range(total_steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * lr_factor(step, total_steps)
            window = PeakWindow() if (step == 0 and device.type == "cpu") else nullcontext()
            with window:
                step_loss = torch.zeros((), device=device)
                for _ in range(k):
                    x, y = batches.next()
                    loss = nn.functional.cross_entropy(model(x), y) / k
                    loss.backward()
                    step_loss += loss.detach()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if isinstance(window, PeakWindow):
                peak_bytes = _resident_bytes(model) + window.peak_bytes
            samples += b * k

            loss_value = step_loss.item()
            if not math.isfinite(loss_value):
                stop, detail = STOP_DIVERGED, f"loss became {loss_value} at step {step}"
                break
            first_loss = loss_value if first_loss is None else first_loss
            smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
            if smooth_loss > DIVERGENCE_FACTOR * first_loss:
                stop = STOP_DIVERGED
                detail = f"smoothed loss {smooth_loss:.3g} > {DIVERGENCE_FACTOR:g}x its start {first_loss:.3g}"
                break
            if deadline is not None and time.time() > deadline:
                stop, detail = STOP_BUDGET, f"cut off by the study budget after {samples} samples"
                break

            if pending and samples >= pending[0]:
                _sync(device)
                now = time.perf_counter()
                train_time += now - segment
                accuracy, val_loss = evaluate(model, workload.val, eval_batch, device)
                prune = False
                # One step may pass several checkpoints (an effective batch larger than their
                # spacing): each is reported, so every trial has every checkpoint.
                while pending and samples >= pending[0] and not prune:
                    point = EvalPoint(samples_seen=pending.pop(0), accuracy=accuracy, loss=val_loss,
                                      train_time_s=train_time)
                    curve.append(point)
                    prune = on_eval is not None and on_eval(point)  # reporting counts as evaluation
                segment = time.perf_counter()
                eval_time += segment - now
                if prune:
                    stop, detail = STOP_PRUNED, f"pruned at {point.samples_seen} samples seen"
                    break
    except torch.OutOfMemoryError as exc:  # typed: only a real allocator OOM
        stop, detail = STOP_OUT_OF_MEMORY, str(exc).splitlines()[0][:200]
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    _sync(device)
    end = time.perf_counter()
    train_time += end - segment
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
    return TrialResult(
        config=config, curve=tuple(curve), samples_seen=samples, train_time_s=train_time,
        eval_time_s=eval_time, wall_time_s=end - started, measured_peak_bytes=peak_bytes,
        stop_reason=stop, stop_detail=detail,
    )


def measure_throughput(model: nn.Module, workload: Workload, batch_size: int,
                       device: torch.device, steps: int = 3) -> float:
    """Training samples/s at ``batch_size``: one warm-up step, then ``steps`` timed steps,
    on a copy of the model (the caller's weights are untouched)."""
    import copy

    model = copy.deepcopy(model).to(device).train()
    optimizer = make_optimizer(model.parameters())
    batches = _Batches(workload.train, batch_size, device, seed=0)
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        x, y = batches.next()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)
