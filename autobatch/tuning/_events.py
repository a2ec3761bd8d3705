"""Typed events out of a tuning run, and the run handle callbacks receive.

``tune`` and the worker loop emit an event at each stage; each callback is called as
``callback(run, event)`` (as Optuna calls ``callback(study, frozen_trial)``). The CLI's progress
lines and the benchmark subscribe to them; a callback ends a run early with ``run.stop()``:
the trial in flight finishes, no new one starts, and the run answers from what it has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from optuna.trial import FrozenTrial

from ..memory import MemoryModel, ProbePoint, ProbeResult, ProbeStep
from ..records import TrialConfig
from ..search import StudySpec


@dataclass(frozen=True, kw_only=True)
class Note:
    """A sentence worth showing that no other event carries."""

    text: str


@dataclass(frozen=True, kw_only=True)
class ProbeStarted:
    model: str
    device: str


@dataclass(frozen=True, kw_only=True)
class ProbeProgress:
    """One size the memory probe measured, and the fit of everything measured so far."""

    phase: str                         # "train" (training steps) or "eval" (evaluation batch)
    batch_size: int
    peak_bytes: Optional[int]          # tensor bytes; None: out of memory, or refused
    rss_bytes: Optional[int]           # CPU: the process's peak resident set during it
    seconds: float
    model: Optional[MemoryModel]       # fit so far (None before 2 sizes)
    boundary: int                      # the largest batch the fit says the study will use
    next_size: Optional[int]           # the next size to measure; None: this phase is done
    refused: Optional[str] = None      # the user's code raised at this size: its line
    too_small: bool = False            # ... before any smaller size ran: the probe moves up

    @classmethod
    def of(cls, point: ProbePoint, step: ProbeStep) -> "ProbeProgress":
        """The event for ``probe``'s ``on_point(point, step)``."""
        return cls(phase=point.phase, batch_size=point.batch_size, peak_bytes=point.peak_bytes,
                   rss_bytes=point.rss_bytes, seconds=point.seconds, model=step.model,
                   boundary=step.boundary, next_size=step.next_size, refused=point.refused,
                   too_small=point.too_small)


@dataclass(frozen=True, kw_only=True)
class ProbeDone:
    """The memory model and the throughput the plan and the memory-aware search rest on."""

    probe: ProbeResult
    throughput: tuple[tuple[int, float], ...]   # (micro-batch, training samples/s)
    seconds: float                              # probe and throughput together
    train_size: Optional[int] = None            # training samples: no micro-batch is larger


@dataclass(frozen=True, kw_only=True)
class PlanMade:
    spec: StudySpec


@dataclass(frozen=True, kw_only=True)
class StudyResumed:
    study_name: str
    completed: int


@dataclass(frozen=True, kw_only=True)
class StudyReady:
    """The study exists with its limits set; workers may start."""

    study_name: str
    storage: str                 # masked URL
    deadline: Optional[float]    # unix time
    n_trials: Optional[int]


@dataclass(frozen=True, kw_only=True)
class TrialStarted:
    number: int
    config: TrialConfig
    baseline: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class TrialProgress:
    """A trial at one of its evaluation checkpoints, from the numbers the trial already has (no
    storage read): samples seen of those planned, the metric there, and the time it has taken."""

    number: int
    samples_seen: int
    planned_samples: int          # the trial's training samples (its last checkpoint)
    metric: str                   # the recipe's metric key: "accuracy", "val_loss", ...
    value: float                  # the metric at this checkpoint
    elapsed_s: float              # since the trial's model was built: training and evaluation so far
    deadline: Optional[float] = None  # the study's end (unix time), if it has one

    @property
    def seconds_left(self) -> float:
        """The rest of the trial at its pace so far (seconds), no later than the deadline."""
        left = self.elapsed_s / max(self.samples_seen, 1) * max(self.planned_samples - self.samples_seen, 0)
        if self.deadline is not None:
            left = min(left, max(self.deadline - time.time(), 0.0))
        return left


@dataclass(frozen=True, kw_only=True)
class TrialFinished:
    """A trial told to the study, with the study's state right after it."""

    trial: FrozenTrial
    counts: dict[str, int]            # trials by state name (lower case)
    best_value: Optional[float]
    best_number: Optional[int]
    deadline: Optional[float]
    seconds: float                    # from taking the trial to this event, storage included (idle waits not)
    train_seconds: float = 0.0        # the trainer's training time
    eval_seconds: float = 0.0         # the trainer's evaluation time, storage round trips excluded
    # seconds by stage, each storage round trip counted in its stage: "claim" (taking the trial),
    # "sample" (the sampler, its reads and parameter writes), "write" (configuration, result),
    # "report" (reports and pruning decisions during evaluation), "state" (this event's counts)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def overhead_seconds(self) -> float:
        """Everything but training and evaluation: storage, sampler, pruner, model building."""
        return max(0.0, self.seconds - self.train_seconds - self.eval_seconds)


@dataclass(frozen=True, kw_only=True)
class RecommendationMade:
    answer: dict[str, Any]            # Recommendation.to_dict(), or the best trial's when too few


Event = Any  # one of the dataclasses above
Callback = Callable[["TuneRun", Event], None]


class TuneRun:
    """What callbacks receive: ``stop()`` ends the run after the trial in flight."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self._callbacks = tuple(callbacks)
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def emit(self, event: Event) -> None:
        for callback in self._callbacks:
            callback(self, event)
