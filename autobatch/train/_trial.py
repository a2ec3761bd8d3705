"""One trial: train one configuration and measure it.

A single linear loop, nanoGPT-style: one training step (micro-batches with
``loss / accumulation_steps`` under the recipe's precision, clipping, optimizer step) -> the lr
scheduler's step -> divergence check -> evaluation of the recipe's metric at fixed samples-seen
checkpoints -> timing. Evaluation happens at the same numbers of training samples for
every batch size and accumulation setting, so trials are compared like with like.

Per step the loop does what a plain PyTorch loop does and no more: no host synchronisation (the
losses are read every ``LOSS_READ_EVERY`` steps and at checkpoints, see ``_divergence``), and
the memory accounting of the first ``MEASURED_STEPS`` steps is kept out of the training time.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import ExitStack, nullcontext
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import AutobatchError
from ..interrupts import check as check_interrupt
from ..memory import EVAL_BATCH_FACTOR, TrialMeter, is_out_of_memory, live_tensor_bytes
from ..recipe import TrainRecipe
from ..records import (STOP_BUDGET, STOP_COMPLETED, STOP_DIVERGED, STOP_ERROR, STOP_INFEASIBLE,
                       STOP_OUT_OF_MEMORY, STOP_OVER_CAP, STOP_PRUNED, EvalPoint, PeakReadings, TrialConfig,
                       TrialResult)
from ..units import format_bytes
from ..workloads import Workload
from ._batches import MicroBatches
from ._build import make_compute_loss, make_optimizer, make_precision, make_scheduler
from ._divergence import LOSS_READ_EVERY, LossTrend, read_losses
from ._evaluate import evaluate
from ._noise_track import NoiseScaleTrack
from ._step import train_step

MEASURED_STEPS = 2       # optimizer steps measured: the first allocates the state, the second runs with it

OnEval = Callable[[EvalPoint], bool]  # returns True to stop the trial (pruned)


def eval_points(train_samples: int, n_evals: int) -> tuple[int, ...]:
    """Evenly spaced samples-seen checkpoints ending at ``train_samples``."""
    return tuple(sorted({max(1, round(train_samples * i / n_evals)) for i in range(1, n_evals + 1)}))


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[object]:
    """Parameters, buffers, gradients and optimizer state: what lives between steps."""
    params = list(model.parameters())
    return itertools.chain(params, model.buffers(), (p.grad for p in params),
                           (v for state in optimizer.state.values() for v in state.values()))


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA); a no-op on CPU."""
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
    recipe: TrainRecipe = TrainRecipe(),
    seed: int = 0,
    on_eval: Optional[OnEval] = None,
    deadline: Optional[float] = None,
    step: Optional[str] = None,
    step_eval: Optional[str] = None,
    num_workers: Optional[int] = None,
    eval_batch_size: Optional[int] = None,
    memory_cap: Optional[int] = None,
    measure_memory: bool = True,
) -> TrialResult:
    """Train ``model`` with ``config`` for ``train_samples`` samples; evaluate at ``checkpoints``.

    The recipe gives the optimizer (at ``config.learning_rate``), the lr scheduler (built once
    over ``ceil(train_samples / effective batch)`` optimizer steps, stepped after each), the
    precision, the loss and the metric the curve records (``EvalPoint.metric``).

    ``on_eval`` sees each evaluation and may stop the trial (a pruner). ``deadline`` (unix
    time) cuts the trial off as ``budget``. Evaluation runs at ``eval_batch_size`` (default
    ``EVAL_BATCH_FACTOR * batch_size``).

    Memory (``autobatch.memory.TrialMeter``): on CUDA the allocator's peak over the whole trial;
    on CPU the exact tensor accounting of the first ``MEASURED_STEPS`` optimizer steps (one
    window) and of the first evaluation, each window plus the tensors alive before it. A
    measured phase over ``memory_cap`` stops the trial as ``over_cap``; an allocation failure on any device
    (``is_out_of_memory``, also when the user's code raised it) stops it as ``out_of_memory``;
    either names the phase. ``measure_memory=False`` measures nothing (no peaks, no cap
    enforced), for re-training a configuration whose memory is known.

    Time: ``train_time_s`` (and each checkpoint's) is the wall time of the training steps;
    the steps the CPU profiler measured (slowed down by it) are counted at the rate of the
    unprofiled steps, and likewise the evaluation it measured (``eval_time_s``) at the mean of the
    unprofiled evaluations; their real wall time stays in ``wall_time_s``. Divergence (a non-finite
    loss, or the smoothed loss over ``DIVERGENCE_FACTOR`` times its start: ``LossTrend``) is
    judged on losses read every ``LOSS_READ_EVERY`` steps, at checkpoints and at the end.

    ``step`` / ``step_eval`` are the user's training-step and evaluation functions (see
    ``make_compute_loss`` and ``evaluate``); ``num_workers`` the loader's worker processes, shut
    down when the trial ends. The user's code raising (``UserCodeError``) ends the trial as a
    result, never a crash: ``infeasible`` when the first step raised (this micro-batch cannot
    train the model, e.g. BatchNorm at 1), ``error`` later; the exception's one line is the
    detail and the curve so far is kept.
    """
    torch.manual_seed(seed)
    b, k = config.batch_size, config.accumulation_steps
    total_steps = max(1, math.ceil(train_samples / config.effective_batch_size))
    model = model.to(device).train()
    precision = make_precision(recipe, device)  # fp16 on CPU fails here, before anything runs
    optimizer = make_optimizer(model.parameters(), config.learning_rate, recipe)
    scheduler = make_scheduler(optimizer, total_steps, recipe)
    compute_loss = make_compute_loss(recipe, step=step)
    batches = MicroBatches(workload.train, b, device, seed, num_workers=num_workers, name=f"dataset {workload.name}")
    eval_batch = eval_batch_size or b * EVAL_BATCH_FACTOR
    meter, phase = TrialMeter(device), "train"
    live = lambda: live_tensor_bytes(state_tensors(model, optimizer))  # noqa: E731
    noise = NoiseScaleTrack(b_small=b, b_big=b * k) if k > 1 else None  # read at checkpoints only

    curve: list[EvalPoint] = []
    samples, train_time, eval_time = 0, 0.0, 0.0
    losses: list[torch.Tensor] = []  # the steps' losses on the device, not read yet
    trend, read_upto = LossTrend(), 0
    profiled = MEASURED_STEPS if measure_memory else 0  # steps run inside the memory meter
    excluded = profiled if meter.profiles else 0        # ... of which the profiler slowed down
    profile_time = 0.0
    evals: list[tuple[float, bool]] = []  # (seconds, under the profiler) of each evaluate() call
    # The measured steps run in one window, as the probe measures its steps (a window costs the CPU
    # profiler's start, stop and event read, ~6 ms): its peak counts everything they hold. An
    # evaluation within them ends the window before it and a new one measures the steps left
    # (the second step is the first with the optimizer's state: it must be measured).
    measured, window_open = ExitStack(), False
    stop, detail = STOP_COMPLETED, ""
    pending = list(checkpoints)
    started = segment = time.perf_counter()
    steps_done = 0

    def trained_seconds() -> float:
        """Training time so far, the profiled steps counted at the unprofiled steps' rate."""
        timed_steps = steps_done - min(steps_done, excluded)
        if excluded == 0 or timed_steps == 0:
            return train_time
        timed = train_time - profile_time
        return timed * steps_done / timed_steps

    try:
        for step_index in range(total_steps):
            check_interrupt()  # a recorded Ctrl-C that a callback swallowed: raised here
            begun = time.perf_counter()
            if step_index < profiled and not window_open:  # the first step, or the first after an evaluation
                measured.enter_context(meter.phase("train", live))
                window_open = True
            step_loss = train_step(model, optimizer, batches.next, accumulation_steps=k,
                                   compute_loss=compute_loss, precision=precision,
                                   grad_norms=noise.pending if noise else None)
            if step_index < profiled:
                profile_time += time.perf_counter() - begun
            scheduler.step()
            samples += b * k
            steps_done += 1
            due = bool(pending) and samples >= pending[0]
            if step_index < profiled and (steps_done == profiled or due or steps_done == total_steps):
                begun = time.perf_counter()
                measured.close()  # the measured steps' window ends: the profiler's events are read here
                window_open = False
                profile_time += time.perf_counter() - begun
                if over := _over_cap(meter, "train", memory_cap):
                    stop, detail = STOP_OVER_CAP, f"training step at micro-batch {b} {over}"
                    break

            losses.append(step_loss)
            if due or len(losses) >= LOSS_READ_EVERY or steps_done == total_steps:
                trend = trend.after(read_losses(losses), read_upto)  # one transfer for these steps
                read_upto += len(losses)
                losses.clear()
                if trend.diverged:
                    stop, detail = STOP_DIVERGED, trend.diverged
                    break
            if deadline is not None and time.time() > deadline:
                stop, detail = STOP_BUDGET, f"cut off by the study budget after {samples} samples"
                break

            if due:
                sync(device)
                now = time.perf_counter()
                train_time += now - segment
                phase = "eval"
                profiling = not curve and measure_memory and meter.profiles
                with meter.phase("eval", live) if not curve and measure_memory else nullcontext():
                    value, val_loss = evaluate(model, workload.val, eval_batch, device, recipe, step=step,
                                               step_eval=step_eval, num_workers=num_workers)
                evals.append((time.perf_counter() - now, profiling))
                if over := _over_cap(meter, "eval", memory_cap):
                    stop, detail = STOP_OVER_CAP, f"evaluation at batch {eval_batch} {over}"
                    break
                phase = "train"
                if noise is not None:
                    noise.checkpoint(samples)
                prune = False
                # One step may pass several checkpoints (an effective batch larger than their
                # spacing): each is reported, so every trial has every checkpoint.
                while pending and samples >= pending[0] and not prune:
                    point = EvalPoint(samples_seen=pending.pop(0), metric=value, loss=val_loss,
                                      train_time_s=trained_seconds())
                    curve.append(point)
                    prune = on_eval is not None and on_eval(point)  # reporting counts as evaluation
                segment = time.perf_counter()
                eval_time += segment - now
                if prune:
                    stop, detail = STOP_PRUNED, f"pruned at {point.samples_seen} samples seen"
                    break
    except Exception as exc:
        measured.__exit__(type(exc), exc, exc.__traceback__)  # a failed phase records no peak
        if is_out_of_memory(exc):  # an allocation failure on any device, in the user's code too
            where = f"training step at micro-batch {b}" if phase == "train" else f"evaluation at batch {eval_batch}"
            stop, detail = STOP_OUT_OF_MEMORY, f"{where}: {_first_line(exc)}"
        elif isinstance(exc, AutobatchError):  # the user's code or output (UserCodeError and kin): a result
            stop = STOP_INFEASIBLE if steps_done == 0 else STOP_ERROR
            detail = (f"micro-batch {b} cannot train this model: {exc}" if steps_done == 0 else str(exc))[:500]
        else:
            raise
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    finally:
        measured.close()  # cut off inside the measured steps (a deadline, Ctrl-C): what ran is measured
        batches.close()

    sync(device)
    end = time.perf_counter()
    train_time += end - segment
    train_time = trained_seconds()
    eval_time -= _profiler_excess(evals)
    failed = phase if stop in (STOP_OUT_OF_MEMORY, STOP_OVER_CAP) else None
    peaks = PeakReadings(train_bytes=meter.peaks.get("train"), eval_bytes=meter.peaks.get("eval"),
                         eval_batch_size=eval_batch, rss_bytes=meter.rss_bytes, failed_phase=failed)
    return TrialResult(
        config=config, curve=tuple(curve), samples_seen=samples, train_time_s=train_time,
        eval_time_s=eval_time, wall_time_s=end - started, measured_peak_bytes=meter.peak_bytes(),
        stop_reason=stop, stop_detail=detail, metric=recipe.metric, direction=recipe.direction, peaks=peaks,
        noise_scale=noise.to_dict() if noise is not None and noise.series else None,
    )


def _profiler_excess(evals: Sequence[tuple[float, bool]]) -> float:
    """Seconds the profiler added to the evaluations it measured: each one's time less the mean
    of the unprofiled ones (the same work: the whole validation set at the same batch); 0 when
    none ran unprofiled."""
    plain = [seconds for seconds, profiled in evals if not profiled]
    if not plain:
        return 0.0
    rate = sum(plain) / len(plain)
    return sum(max(0.0, seconds - rate) for seconds, profiled in evals if profiled)


def _over_cap(meter: TrialMeter, phase: str, cap: Optional[int]) -> str:
    """``"measured X > cap Y"`` when ``phase``'s measured peak is over ``cap``, else ``""``."""
    peak = meter.peaks.get(phase)
    if cap is None or peak is None or peak <= cap:
        return ""
    return f"measured {format_bytes(peak)} > cap {format_bytes(cap)}"


def _first_line(exc: BaseException) -> str:
    """The first line of the allocation failure inside ``exc`` (a wrapper's cause, if wrapped)."""
    inner = exc
    while inner is not None and not (isinstance(inner, MemoryError) or "memory" in str(inner).lower()):
        inner = inner.__cause__ or inner.__context__
    return (str(inner or exc).splitlines() or [""])[0][:200]
