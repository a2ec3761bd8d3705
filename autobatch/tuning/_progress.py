"""Progress as text: one line per event, as ``autobatch tune`` and ``worker`` print them."""

from __future__ import annotations

import time
from typing import Optional

from optuna.trial import TrialState

from .. import records as R
from ..memory import EVAL_BATCH_FACTOR, ProbeResult
from ..units import format_bytes, format_duration
from ._events import (Note, PlanMade, ProbeDone, ProbeProgress, ProbeStarted, StudyReady, StudyResumed,
                      TrialFinished, TrialProgress)


def event_line(event: object) -> Optional[str]:
    """The progress line for ``event``, or None for events shown elsewhere."""
    if isinstance(event, Note):
        return event.text
    if isinstance(event, ProbeStarted):
        return f"probing memory of {event.model} on {event.device} ..."
    if isinstance(event, ProbeProgress):
        return probe_line(event)
    if isinstance(event, ProbeDone):
        return probe_done_lines(event)
    if isinstance(event, StudyResumed):
        return f"resuming study {event.study_name!r}: {event.completed} completed trials so far"
    if isinstance(event, PlanMade):
        spec = event.spec
        return (f"plan: {spec.train_samples} training samples per trial "
                f"({spec.train_samples / spec.train_size:.1f} epochs), "
                f"evaluated at {', '.join(map(str, spec.eval_points))} samples seen")
    if isinstance(event, StudyReady):
        return f"study {event.study_name!r} in {event.storage}"
    if isinstance(event, TrialFinished):
        return trial_line(event)
    if isinstance(event, TrialProgress) and event.samples_seen < event.planned_samples:
        return trial_progress_line(event)  # the last checkpoint's line is the trial's own
    return None


def metric_text(metric: str, value: float) -> str:
    """``acc 0.9134`` for accuracy, ``val_loss 0.4213`` for others (a user function: its name)."""
    label = "acc" if metric == "accuracy" else metric.rsplit(":", 1)[-1]
    return f"{label} {value:.4{'f' if metric.endswith('accuracy') else 'g'}}"


def trial_progress_line(event: TrialProgress) -> str:
    """``  trial 3: 360/719 samples (50%), acc 0.2591, 4s left``"""
    return (f"  trial {event.number}: {event.samples_seen}/{event.planned_samples} samples "
            f"({event.samples_seen / max(event.planned_samples, 1):.0%}), {metric_text(event.metric, event.value)}, "
            f"{format_duration(event.seconds_left)} left")


def trial_line(event: TrialFinished) -> str:
    frozen, c, a = event.trial, event.counts, event.trial.user_attrs
    metric = a.get(R.METRIC, "accuracy")  # the study's metric, as the trial recorded it
    what = (metric_text(metric, frozen.value) if frozen.state == TrialState.COMPLETE
            else f"{a.get(R.STOP_REASON, frozen.state.name.lower())}")
    best = (f"best {event.best_value:.4f} (#{event.best_number})" if event.best_value is not None
            else "no completed trial yet")
    left = f" | {format_duration(event.deadline - time.time())} left" if event.deadline else ""
    return (f"trial {frozen.number}: b={a.get(R.BATCH_SIZE)} x{a.get(R.ACCUMULATION_STEPS)} "
            f"lr={a.get(R.LEARNING_RATE, 0):.3g} -> {what} | {best} | "
            f"{c['complete']} done, {c['pruned']} pruned, {c['waiting']} queued{left}")


def probe_line(event: ProbeProgress) -> str:
    """``  probe train b=32: 12.0 MiB (RSS +13.1 MiB) 0.4s | fit: ... | next 128``"""
    what = "training step" if event.phase == "train" else "evaluation"
    peak = ("too small for the model (it raised)" if event.too_small else "refused by the model"
            if event.refused else "out of memory" if event.peak_bytes is None else format_bytes(event.peak_bytes))
    rss = f" (process RSS {format_bytes(event.rss_bytes)})" if event.rss_bytes is not None else ""
    fit = f" | fit: {event.model.describe()}" if event.model is not None else ""
    nxt = f" | next {event.next_size}" if event.next_size else f" | done, up to {event.boundary}"
    return f"  {what} at {event.batch_size}: {peak}{rss} in {event.seconds:.1f}s{fit}{nxt}"


def probe_done_lines(event: ProbeDone) -> str:
    """The memory estimate (training, evaluation, cap, largest micro-batch) and the throughput."""
    probe = event.probe
    estimate, sizes = probe.estimate, ", ".join(str(p.batch_size) for p in probe.points)
    checked = (f", {100 * probe.boundary_error:+.1f}% at the boundary {probe.boundary}"
               if probe.boundary_error is not None else f", boundary {probe.boundary} not measured")
    lines = [f"memory: {probe.model.describe()} ({probe.model.form}); "
             f"{format_bytes(probe.per_sample_bytes)}/sample at micro-batch {probe.boundary}"
             f" (sizes {sizes}{checked}; {probe.seconds:.1f}s)"]
    if estimate.eval is not None:
        lines.append(f"evaluation memory: {estimate.eval.describe()} ({estimate.eval.form}); "
                     f"evaluation batch min({EVAL_BATCH_FACTOR} x micro-batch, {estimate.eval_max_batch_size})")
    if probe.eval_note:
        lines.append(probe.eval_note)
    if probe.cap_bytes:
        lines.append(largest_line(probe.max_batch_size, probe.cap_bytes, event.train_size))
    lines.append("throughput: " + ", ".join(f"{thr:.0f} samples/s at batch {b}" for b, thr in event.throughput))
    return "\n".join(lines)


def refused_line(batch_size: int, reason: str) -> str:
    """What to tell once about the smallest micro-batch the user's code refused (``reason``: the
    ``UserCodeError``'s line)."""
    return f"micro-batch {batch_size} cannot train this model ({reason}); larger micro-batches are not tried"


def small_line(batch_size: int, reason: str) -> str:
    """What to tell once about a small micro-batch the model cannot train (BatchNorm at 1, a
    model's minimum batch; ``reason``: the ``UserCodeError``'s line)."""
    return f"micro-batch {batch_size} cannot train this model ({reason}); trials at it are recorded infeasible"


def largest_line(max_batch: Optional[int], cap_bytes: int, train_size: Optional[int]) -> str:
    """``largest micro-batch under 4.0 GiB: 512``; when the memory model's limit is the whole
    training set or more (``train_size`` samples), that the whole set fits as one micro-batch,
    never a micro-batch larger than the data."""
    cap = format_bytes(cap_bytes)
    if train_size is not None and (max_batch is None or max_batch >= train_size):
        return f"the whole training set ({train_size} samples) fits under {cap} as one micro-batch"
    return f"largest micro-batch under {cap}: {max_batch}"


def probe_summary(probe: ProbeResult, title: str, cap_source: str, train_size: Optional[int] = None) -> str:
    """``autobatch probe``'s answer: the fitted form, the per-sample figure at the boundary, the
    sizes measured, the process's resident set beside the tensors, evaluation, cap and limit
    (``train_size``: the training samples, above which no micro-batch is claimed)."""
    mm, estimate = probe.model, probe.estimate
    at = next((p for p in probe.points if p.batch_size == probe.boundary and p.fits), None)
    sizes = ", ".join(str(p.batch_size) + ("" if p.fits else " (too small)" if p.too_small else " (refused)"
                                           if p.refused else " (out of memory)") for p in probe.points)
    measured = (f"; at {probe.boundary}: predicted {format_bytes(mm.predict(probe.boundary))}, "
                f"measured {format_bytes(at.peak_bytes)}" if at else "")
    lines = [title, f"  form             {mm.form}: {mm.describe()}",
             f"  per sample       {format_bytes(probe.per_sample_bytes)} at micro-batch {probe.boundary}",
             f"  probe sizes      {sizes}{measured} ({probe.reason})"]
    if probe.refused is not None:
        lines.append(f"  refused          {refused_line(probe.refused.batch_size, probe.refused.refused)}")
    if at is not None and at.rss_bytes is not None:
        lines.append(f"  process memory   resident set peaked at {format_bytes(at.rss_bytes)} during micro-batch "
                     f"{probe.boundary} (its tensors: {format_bytes(at.peak_bytes)}; the rest is the "
                     "interpreter, libraries and allocator caches)")
    if estimate.eval is not None:
        eval_sizes = ", ".join(str(p.batch_size) for p in probe.eval_points)
        lines.append(f"  evaluation       {estimate.eval.form}: {estimate.eval.describe()}; batch up to "
                     f"{estimate.eval_max_batch_size} (sizes {eval_sizes})")
    if probe.cap_bytes:
        lines += [f"  cap              {format_bytes(probe.cap_bytes)} ({cap_source})",
                  f"  {largest_line(probe.max_batch_size, probe.cap_bytes, train_size)}"]
    else:
        lines.append("  cap              none")
    return "\n".join(lines + [f"  probe time       {probe.seconds:.1f}s"])
