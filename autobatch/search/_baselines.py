"""Reference configurations every study trains first and is compared with."""

from __future__ import annotations

import optuna

from .. import records as R
from ._sampling import params_for
from ._spec import StudySpec

FOLK_BATCH = 32


def enqueue_baselines(study: optuna.Study, spec: StudySpec, sizes: list[int]) -> None:
    """Queue the folk default (batch 32 at the rule's lr) and the largest micro-batch that fits
    with a linearly scaled lr (what a batch-size finder plus the Goyal et al. rule would pick).
    ``sizes`` are the space's micro-batch sizes that fit, ascending."""
    folk = min(max(FOLK_BATCH, sizes[0]), sizes[-1])
    largest = sizes[-1]
    linear_multiplier = spec.space.multiplier_for(
        spec.space.base_lr * largest / spec.space.reference_batch_size, largest)
    for label, batch, multiplier in (("folk-default-32", folk, 1.0),
                                     ("largest-fit-linear-lr", largest, linear_multiplier)):
        multiplier = min(max(multiplier, spec.space.lr_multiplier_min), spec.space.lr_multiplier_max)
        study.enqueue_trial(params_for(spec.space, batch_size=batch,
                                       accumulation_steps=min(spec.space.accumulation_steps),
                                       multiplier=multiplier), user_attrs={R.BASELINE: label})
