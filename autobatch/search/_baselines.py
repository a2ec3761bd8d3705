"""Reference configurations every study trains first and is compared with."""

from __future__ import annotations

import math

from typing import Optional

import optuna

from .. import records as R
from ._sampling import params_for
from ._spec import StudySpec

FOLK_BATCH = 32


def enqueue_baselines(study: optuna.Study, spec: StudySpec, sizes: list[int], limit: Optional[int] = None) -> int:
    """Queue the folk default (batch 32 at the rule's lr) and the largest micro-batch that fits
    with a linearly scaled lr (what a batch-size finder plus the Goyal et al. rule would pick),
    then the folk default once more (labelled ``records.REPEAT``, a new trial number and so a new
    seed): one deliberate early repeat that measures the seed-to-seed spread the recommender's
    interval carries (``recommender._calibration.seed_noise``). ``sizes`` are the space's
    micro-batch sizes that fit, ascending. ``limit``: at most this many (the study's
    ``--n-trials``: a queued trial beyond it would stay waiting for ever). Returns how many."""
    folk = min(max(FOLK_BATCH, sizes[0]), sizes[-1])
    largest = sizes[-1]
    linear_multiplier = spec.space.multiplier_for(
        spec.space.base_lr * largest / spec.space.reference_batch_size, largest)
    queue = []
    for label, batch, multiplier in (("folk-default-32", folk, 1.0),
                                     ("largest-fit-linear-lr", largest, linear_multiplier)):
        multiplier = min(max(multiplier, spec.space.lr_multiplier_min), spec.space.lr_multiplier_max)
        queue.append((params_for(spec.space, batch_size=batch, accumulation_steps=min(spec.space.accumulation_steps),
                                 multiplier=multiplier), {R.BASELINE: label}))
    folk_multiplier = min(max(1.0, spec.space.lr_multiplier_min), spec.space.lr_multiplier_max)
    queue.append((params_for(spec.space, batch_size=folk, accumulation_steps=min(spec.space.accumulation_steps),
                             multiplier=folk_multiplier), {R.REPEAT: "folk-default-32"}))
    queue = queue if limit is None else queue[:max(0, limit)]
    for params, attrs in queue:
        study.enqueue_trial(params, user_attrs=attrs)
    return len(queue)


CRITICAL_BASELINE = "critical-batch"


def enqueue_critical_batch(study: optuna.Study, spec: StudySpec, sizes: list[int], critical_batch: float) -> None:
    """Queue the configuration at the critical batch (the gradient noise scale): the effective
    batch of the space nearest ``critical_batch`` (in log scale) at the rule's lr, from the largest
    micro-batch that fits (``sizes``, ascending) and the fewest accumulation steps, at least 2
    when the space has them (so that the trial measures the noise scale as it trains). Nothing
    when no configuration of the space comes within a factor of 2."""
    options = [(b * a, b, a) for b in sizes for a in spec.space.accumulation_steps]
    if not options:
        return
    target = math.log2(critical_batch)
    effective = min({e for e, _, _ in options}, key=lambda e: abs(math.log2(e) - target))
    if abs(math.log2(effective) - target) > 1:
        return
    matching = [(b, a) for e, b, a in options if e == effective]
    accumulating = [(b, a) for b, a in matching if a >= 2]
    batch, accumulation = max(accumulating or matching)
    study.enqueue_trial(params_for(spec.space, batch_size=batch, accumulation_steps=accumulation, multiplier=1.0),
                        user_attrs={R.BASELINE: CRITICAL_BASELINE})
