"""The budget plan: how long each trial trains so the study gets enough trials in time.

The rule: the time left after probing (and a reserve for the final fit) is divided among
``TARGET_TRIALS`` trials (or ``--n-trials`` when smaller); a trial's length in samples is
that time times the expected throughput, averaged over the batch sizes the search will try
(small micro-batches are slow, so they weigh most); clamped to 1..20 epochs. Pruned trials
end early, so a study usually runs more trials than planned.
"""

from __future__ import annotations

from typing import Optional, Sequence

TARGET_TRIALS = 30
MIN_EPOCHS, MAX_EPOCHS = 1.0, 20.0
DEFAULT_EPOCHS = 5.0
FIT_RESERVE_FRACTION, FIT_RESERVE_MIN_S = 0.01, 3.0


def fit_reserve(budget_s: float) -> float:
    """Seconds kept at the end of the budget for the trade-off fit and the answer."""
    return max(FIT_RESERVE_MIN_S, FIT_RESERVE_FRACTION * budget_s)


def seconds_per_sample(measured: Sequence[tuple[int, float]], batch_sizes: Sequence[int]) -> float:
    """Mean training seconds per sample over ``batch_sizes``, from measured (batch, samples/s).

    Per-sample time is modelled as ``a / b + c`` (a per-step overhead shared by the batch plus
    a per-sample cost), fitted exactly through two measurements (or constant from one)."""
    points = sorted((b, 1.0 / thr) for b, thr in measured if thr > 0)
    if not points:
        raise ValueError("no throughput measurement")
    if len(points) == 1 or points[0][0] == points[-1][0]:
        return points[0][1]
    (b1, s1), (b2, s2) = points[0], points[-1]
    a = max(0.0, (s1 - s2) / (1 / b1 - 1 / b2))
    c = max(0.0, s2 - a / b2)
    return sum(a / b + c for b in batch_sizes) / len(batch_sizes)


def plan_train_samples(*, seconds_left: Optional[float], seconds_per_sample: float,
                       train_size: int, n_trials: Optional[int] = None,
                       epochs: Optional[float] = None) -> int:
    """Training samples per trial (see the module docstring for the rule)."""
    if epochs is None:
        if seconds_left is None:
            epochs = DEFAULT_EPOCHS
        else:
            target = min(TARGET_TRIALS, n_trials) if n_trials else TARGET_TRIALS
            per_trial_s = max(0.0, seconds_left) / target
            epochs = per_trial_s / seconds_per_sample / train_size
            epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, epochs))
    return max(1, round(epochs * train_size))
