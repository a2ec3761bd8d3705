"""The budget plan: how long each trial trains so that enough trials fit, and how long a trial
will take (predicted from the probe, then from the trials themselves).

The rule: the time left after probing (less a reserve for the final fit) is divided among
``TARGET_TRIALS`` trials (or ``--n-trials`` when smaller); a trial's length in samples is that
time over the predicted seconds a trial costs per training sample, averaged over the micro-batch
sizes the search will try (small micro-batches are slow, so they weigh most). The length is at
most ``MAX_EPOCHS`` epochs and at least ``MIN_STEPS`` optimizer steps at the folk batch
(``floor_samples``); fractions of an epoch are allowed. When not even ``MIN_FIT_TRIALS`` trials
of the floor length fit, the plan refuses up front (``BudgetTooShortError``, exit 2) and names
the budget that would fit.

A trial's wall time is modelled as ``samples * (a / b + c) + evaluation + start`` (``TrialTimes``):
``a / b + c`` seconds per training sample at micro-batch ``b`` (a per-step cost shared by the
batch plus a per-sample cost), an evaluation cost per trial and a fixed start-up cost. The probe
gives a first guess; workers refit it from the trials' measured times as the study runs
(``TrialTimes.refit``), because a probe of a few steps on a busy machine can be off many times.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..errors import AutobatchError
from ..units import format_duration

TARGET_TRIALS = 30
MIN_FIT_TRIALS = 4           # trials that must fit in a budget: the trade-off model's minimum
MIN_STEPS = 20               # shortest trial: optimizer steps at the folk batch
MAX_EPOCHS = 20.0
DEFAULT_EPOCHS = 5.0
MIN_EPOCHS = 0.0             # no lower bound in epochs any more: see MIN_STEPS
EVAL_COST = 1 / 3            # a forward-only sample against a training one (forward + backward)
START_S = 0.5                # first guess of a trial's fixed cost: model, loaders, storage
SAFETY = 1.25                # a trial is started only if it fits this many times over
FIT_RESERVE_FRACTION, FIT_RESERVE_MIN_S = 0.01, 3.0
MAX_VERIFY_SHARE = 0.5      # of the time left after the probes, the most the verification reserve takes
VERIFY_TWO_AT = 16           # planned trials from which two verification runs are reserved, not one
EARLY_MARGIN = 2.0           # the check before probing refuses only a budget short by this factor
PROBE_BATCHES = 8            # first guess of the memory probe and throughput timing, in training samples per
                             # sample of the largest micro-batch (2 steps at 2, 8, 32, ..., 4 at the ends)


class BudgetTooShortError(AutobatchError):
    """Not even the minimum number of the shortest trials fits in the budget."""


def fit_reserve(budget_s: float) -> float:
    """Seconds kept at the end of the budget for the trade-off fit and the answer."""
    return max(FIT_RESERVE_MIN_S, FIT_RESERVE_FRACTION * budget_s)


@dataclass(frozen=True)
class TrialTimes:
    """Predicted wall seconds of a trial (see the module docstring). ``a``: seconds per step
    shared by a micro-batch; ``c``: seconds per training sample; ``eval_per_sample``: seconds
    per evaluated sample; ``start_s``: seconds per trial outside training and evaluation."""

    a: float
    c: float
    eval_per_sample: float
    start_s: float = START_S

    @classmethod
    def from_throughput(cls, measured: Sequence[tuple[int, float]]) -> "TrialTimes":
        """From (micro-batch, training samples/s) measurements: ``a / b + c`` through two of them
        (a constant from one); evaluation at ``EVAL_COST`` of the fastest training sample."""
        points = sorted((b, 1.0 / thr) for b, thr in measured if thr > 0)
        if not points:
            raise ValueError("no throughput measurement")
        if len(points) == 1 or points[0][0] == points[-1][0]:
            a, c = 0.0, points[0][1]
        else:
            (b1, s1), (b2, s2) = points[0], points[-1]
            a = max(0.0, (s1 - s2) / (1 / b1 - 1 / b2))
            c = max(0.0, s2 - a / b2)
        return cls(a=a, c=c, eval_per_sample=EVAL_COST * min(s for _, s in points))

    def per_sample(self, batch_size: int) -> float:
        return self.a / batch_size + self.c

    def seconds(self, batch_size: int, train_samples: int, eval_samples: int) -> float:
        """Predicted wall seconds of one trial at ``batch_size``."""
        return (train_samples * self.per_sample(batch_size) + eval_samples * self.eval_per_sample
                + self.start_s)

    def refit(self, trials: Sequence[tuple[int, int, float, float, float, int]]) -> "TrialTimes":
        """The model refitted to finished trials: (micro-batch, training samples, training s,
        evaluation s, wall s, evaluated samples) each. Training: ``a / b + c`` by least squares
        over the distinct micro-batches (non-negative; one micro-batch scales this model);
        evaluation and start-up: medians."""
        rows = [r for r in trials if r[1] > 0 and r[2] > 0]
        if not rows:
            return self
        by_batch: dict[int, list[float]] = {}
        for b, samples, train_s, *_ in rows:
            by_batch.setdefault(b, []).append(train_s / samples)
        points = [(b, statistics.median(v)) for b, v in sorted(by_batch.items())]
        if len(points) == 1:
            b, s = points[0]
            scale = s / self.per_sample(b) if self.per_sample(b) > 0 else 1.0
            a, c = self.a * scale, self.c * scale
        else:
            a, c = _fit_inverse(points)
        evals = [r[3] / r[5] for r in rows if r[5] > 0]
        starts = [max(0.0, r[4] - r[2] - r[3]) for r in rows]
        return replace(self, a=a, c=c,
                       eval_per_sample=statistics.median(evals) if evals else self.eval_per_sample,
                       start_s=statistics.median(starts))


def _fit_inverse(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of ``s = a / b + c`` with ``a, c >= 0`` (one of them zero if the free fit
    is negative)."""
    x = [1.0 / b for b, _ in points]
    y = [s for _, s in points]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((v - mx) ** 2 for v in x)
    a = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx if sxx > 0 else 0.0
    c = my - a * mx
    if a < 0:
        return 0.0, my
    if c < 0:
        return sum(u * v for u, v in zip(x, y)) / sum(u * u for u in x), 0.0
    return a, c


def verification_runs(n_trials: Optional[int]) -> int:
    """Re-trainings of the recommended setting with fresh seeds that the budget reserves: one,
    two when the study plans ``VERIFY_TWO_AT`` trials or more (``TARGET_TRIALS`` without
    ``--n-trials``). Two runs also measure the seed-to-seed spread at the answer."""
    target = min(TARGET_TRIALS, n_trials) if n_trials else TARGET_TRIALS
    return 2 if target >= VERIFY_TWO_AT else 1


def verification_seconds(times: TrialTimes, batch_sizes: Sequence[int], train_samples: int,
                         val_size: int) -> float:
    """Seconds one verification run is reserved: a trial of ``train_samples`` evaluated once
    on ``val_size`` samples, at the slowest of ``batch_sizes`` (the answer is not known yet),
    ``SAFETY`` times over."""
    return SAFETY * max(times.seconds(b, train_samples, val_size) for b in batch_sizes)


def search_deadline(deadline: float, now: float, reserve_s: float) -> float:
    """Unix time the search must end by: ``deadline`` (the budget's, less the final fit's) less
    ``reserve_s`` seconds kept for the verification runs, the reserve taking at most
    ``MAX_VERIFY_SHARE`` of the time left at ``now``. Verification checks an answer the search
    has yet to find: when the probes ran slow (a busy machine) and a reserve timed from them
    would leave the search next to nothing, the search keeps its share and verification runs
    in what is left (or is skipped, saying so)."""
    return deadline - min(reserve_s, MAX_VERIFY_SHARE * max(0.0, deadline - now))


def seconds_per_sample(measured: Sequence[tuple[int, float]], batch_sizes: Sequence[int]) -> float:
    """Mean training seconds per sample over ``batch_sizes``, from measured (batch, samples/s)."""
    times = TrialTimes.from_throughput(measured)
    return sum(times.per_sample(b) for b in batch_sizes) / len(batch_sizes)


def floor_samples(folk_batch: int, train_size: int) -> int:
    """The shortest trial in training samples: ``MIN_STEPS`` optimizer steps at ``folk_batch``."""
    return max(1, min(MIN_STEPS * folk_batch, round(MAX_EPOCHS * train_size)))


def plan_train_samples(*, seconds_left: Optional[float], seconds_per_sample: float,
                       train_size: int, n_trials: Optional[int] = None,
                       epochs: Optional[float] = None, floor: int = 1,
                       seconds_per_trial: float = 0.0, reserved_runs: int = 0) -> int:
    """Training samples per trial (see the module docstring). ``seconds_per_trial``: each
    trial's predicted evaluation and start-up seconds, which do not shrink with its length.
    ``reserved_runs``: runs of the same length kept for after the search (verification): the
    time is shared among the target trials and them."""
    if epochs is not None:
        return max(1, round(epochs * train_size))
    if seconds_left is None:
        return max(floor, round(DEFAULT_EPOCHS * train_size))
    target = (min(TARGET_TRIALS, n_trials) if n_trials else TARGET_TRIALS) + reserved_runs
    per_trial_s = max(0.0, seconds_left) / target - seconds_per_trial
    samples = per_trial_s / seconds_per_sample if per_trial_s > 0 else 0
    return int(max(floor, min(MAX_EPOCHS * train_size, samples)))


def check_budget(*, seconds_left: float, trial_seconds: float, n_trials: Optional[int], elapsed_s: float,
                 budget_s: float, what: str) -> None:
    """Refuse a budget in which fewer than ``MIN_FIT_TRIALS`` trials (or ``n_trials`` if fewer)
    of ``trial_seconds`` fit, naming the budget that would (``elapsed_s``: spent already, on
    the probe). ``what`` describes the trial for the message."""
    needed = min(MIN_FIT_TRIALS, n_trials) if n_trials else MIN_FIT_TRIALS
    if needed * trial_seconds * SAFETY <= seconds_left:
        return
    enough = elapsed_s + needed * trial_seconds * SAFETY
    enough = enough / (1 - FIT_RESERVE_FRACTION) + FIT_RESERVE_MIN_S
    raise BudgetTooShortError(
        f"budget {format_duration(budget_s)} is too short: {needed} trials of {what} need about "
        f"{format_duration(needed * trial_seconds)} after the probe's {format_duration(elapsed_s)}, and "
        f"{format_duration(max(seconds_left, 0))} are left; pass --budget {_round_up(enough)} or more")


def check_budget_early(*, budget_s: float, elapsed_s: float, seconds_per_sample: float, least_samples: int,
                       batch_size: int, largest_batch: int, n_trials: Optional[int], noise_probe_s: float = 0.0,
                       what: str = "") -> None:
    """Refuse, before any probing, a budget that cannot hold the minimum plan: ``MIN_FIT_TRIALS``
    trials (or ``n_trials`` if fewer) of ``least_samples`` training samples (the shortest trial the
    plan allows) at ``seconds_per_sample`` (timed over a step or two at ``batch_size``, the folk
    batch), ``SAFETY`` times over, after the probes still to come: ``noise_probe_s`` seconds and
    ``PROBE_BATCHES * largest_batch`` samples' worth of memory probe and throughput timing
    (``largest_batch``: the largest micro-batch the study may try). ``elapsed_s``: spent
    already (loading the data). A step timed once on a busy machine can be off, so it refuses
    only when the budget left is short by more than ``EARLY_MARGIN`` times; ``check_budget``
    checks the plan itself after the probe. ``what``: the trial's length in words, for the
    message. Raises ``BudgetTooShortError`` naming a budget that holds the whole estimate."""
    needed = min(MIN_FIT_TRIALS, n_trials) if n_trials else MIN_FIT_TRIALS
    trials_s = needed * least_samples * seconds_per_sample * SAFETY
    probes_s = noise_probe_s + PROBE_BATCHES * largest_batch * seconds_per_sample
    left = budget_s - fit_reserve(budget_s) - elapsed_s
    if (trials_s + probes_s) / EARLY_MARGIN <= left:
        return
    # One step timed before probing is a lower bound on the costs the plan will count (model and
    # loader start-up, evaluation, the probes' own steps): the budget named is EARLY_MARGIN times
    # it, so that the budget it names is not refused in turn by the check after the probe.
    enough = EARLY_MARGIN * ((elapsed_s + probes_s + trials_s) / (1 - FIT_RESERVE_FRACTION) + FIT_RESERVE_MIN_S)
    raise BudgetTooShortError(
        f"budget {format_duration(budget_s)} is too short: {needed} trials of at least {least_samples} samples"
        f"{f' ({what})' if what else ''} at {seconds_per_sample * 1000:.3g} ms per sample (micro-batch "
        f"{batch_size}, timed before probing) need "
        f"about {format_duration(trials_s)}, and the probes about {format_duration(probes_s)}; "
        f"pass --budget {_round_up(enough)} or more")


def _round_up(seconds: float) -> str:
    """A budget at least ``seconds``, written the way people write budgets."""
    for step, unit in ((3600, "h"), (60, "m")):
        if seconds > 2 * step:
            return f"{math.ceil(seconds / step)}{unit}"
    if seconds > 60:
        return f"{math.ceil(seconds / 60)}m"
    return f"{max(1, math.ceil(seconds / 10) * 10)}s"
