"""Progress as text: one line per event, as ``autobatch tune`` and ``worker`` print them."""

from __future__ import annotations

import time
from typing import Optional

from optuna.trial import TrialState

from .. import records as R
from ..units import format_bytes, format_duration
from ._events import (Note, PlanMade, ProbeDone, ProbeStarted, StudyReady, StudyResumed, TrialFinished)


def event_line(event: object) -> Optional[str]:
    """The progress line for ``event``, or None for events shown elsewhere."""
    if isinstance(event, Note):
        return event.text
    if isinstance(event, ProbeStarted):
        return f"probing memory of {event.model} on {event.device} ..."
    if isinstance(event, ProbeDone):
        probe, mm = event.probe, event.probe.model
        fits = (f", largest micro-batch under {format_bytes(probe.cap_bytes)}: {probe.max_batch_size}"
                if probe.cap_bytes else "")
        memory = (f"memory: {format_bytes(mm.fixed_bytes)} + {format_bytes(mm.per_sample_bytes)}/sample"
                  f"{fits} ({probe.seconds:.1f}s)")
        speed = "throughput: " + ", ".join(f"{thr:.0f} samples/s at batch {b}" for b, thr in event.throughput)
        return f"{memory}\n{speed}"
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
    return None


def trial_line(event: TrialFinished) -> str:
    frozen, c, a = event.trial, event.counts, event.trial.user_attrs
    metric = a.get(R.METRIC, "accuracy")  # the study's metric, as the trial recorded it
    label = "acc" if metric == "accuracy" else metric.rsplit(":", 1)[-1]
    what = (f"{label} {frozen.value:.4{'f' if metric.endswith('accuracy') else 'g'}}"
            if frozen.state == TrialState.COMPLETE else f"{a.get(R.STOP_REASON, frozen.state.name.lower())}")
    best = (f"best {event.best_value:.4f} (#{event.best_number})" if event.best_value is not None
            else "no completed trial yet")
    left = f" | {format_duration(event.deadline - time.time())} left" if event.deadline else ""
    return (f"trial {frozen.number}: b={a.get(R.BATCH_SIZE)} x{a.get(R.ACCUMULATION_STEPS)} "
            f"lr={a.get(R.LEARNING_RATE, 0):.3g} -> {what} | {best} | "
            f"{c['complete']} done, {c['pruned']} pruned, {c['waiting']} queued{left}")
