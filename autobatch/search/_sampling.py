"""How the study proposes and stops trials: the Optuna distributions of the space, the seeded
sampler, the pruners on the samples-seen axis, and a trial's suggested configuration."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from .. import records as R
from ..errors import AutobatchError
from ..records import TrialConfig
from ._space import SearchSpace

PRUNERS = ("median", "halving", "hyperband", "none")


def make_pruner(name: str, checkpoints: tuple[int, ...]) -> optuna.pruners.BasePruner:
    """Pruners on the samples-seen axis: every trial reports at the same ``checkpoints``."""
    first, last = checkpoints[0], checkpoints[-1]
    if name == "median":
        # Checkpoints are identical for every trial, so the median pruner compares like with
        # like; 4 finished trials before it judges anyone.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=last, reduction_factor=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise AutobatchError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Seeded multivariate TPE; ``constant_liar`` keeps parallel workers from proposing the
    configuration another worker is already training."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=8)


# The micro-batch and the accumulation steps are categorical powers of two, so that the study
# (optuna-dashboard, trials_dataframe) shows them in their own units. TPE loses their order
# with it; scripts/bench_param_encoding.py measures what that costs against the log2 integers
# searched before 0.2 (see the issue 16 note). A study made before keeps its log2 integers
# (``param_encoding``), so it resumes as it was. The lr stays a multiplier of the scaling rule
# (the absolute lr is each trial's ``learning_rate`` attribute): its good region moves little
# with the batch, so the search stays well conditioned.
VALUES, LOG2 = "values", "log2"  # parameter encodings: 0.2 on, and before


def param_encoding(trials: list) -> str:
    """``LOG2`` for a study whose trials searched ``batch_size_log2`` (made before 0.2), else
    ``VALUES``: a resumed study goes on searching as it began."""
    return LOG2 if any(R.PARAM_BATCH_LOG2 in t.params for t in trials) else VALUES


def distributions(space: SearchSpace, encoding: str = VALUES) -> dict[str, optuna.distributions.BaseDistribution]:
    lr = FloatDistribution(space.lr_multiplier_min, space.lr_multiplier_max, log=True)
    accumulation = sorted(space.accumulation_steps)
    if encoding == LOG2:
        return {R.PARAM_BATCH_LOG2: IntDistribution(int(math.log2(space.batch_size_min)),
                                                    int(math.log2(space.batch_size_max))),
                R.PARAM_LR_MULTIPLIER: lr,
                R.PARAM_ACCUM_LOG2: IntDistribution(int(math.log2(accumulation[0])), int(math.log2(accumulation[-1])))}
    return {R.PARAM_BATCH_SIZE: CategoricalDistribution(tuple(space.batch_sizes)), R.PARAM_LR_MULTIPLIER: lr,
            R.PARAM_ACCUM: CategoricalDistribution(tuple(accumulation))}


def params_for(space: SearchSpace, *, batch_size: int, accumulation_steps: int, multiplier: float) -> dict:
    """Optuna params for a configuration (for enqueued baselines)."""
    return {R.PARAM_BATCH_SIZE: int(batch_size), R.PARAM_ACCUM: int(accumulation_steps),
            R.PARAM_LR_MULTIPLIER: float(multiplier)}


def suggest(trial: optuna.Trial, space: SearchSpace, encoding: str = VALUES) -> tuple[TrialConfig, float]:
    """The trial's configuration; the lr is searched as a multiplier of the scaling rule.
    ``encoding``: the study's ``param_encoding``."""
    dists = distributions(space, encoding)
    if encoding == LOG2:
        batch_d, accum_d = dists[R.PARAM_BATCH_LOG2], dists[R.PARAM_ACCUM_LOG2]
        batch = 2 ** trial.suggest_int(R.PARAM_BATCH_LOG2, batch_d.low, batch_d.high)
    else:
        batch = int(trial.suggest_categorical(R.PARAM_BATCH_SIZE, dists[R.PARAM_BATCH_SIZE].choices))
    multiplier = trial.suggest_float(R.PARAM_LR_MULTIPLIER, space.lr_multiplier_min,
                                     space.lr_multiplier_max, log=True)
    if encoding == LOG2:
        accum = 2 ** trial.suggest_int(R.PARAM_ACCUM_LOG2, accum_d.low, accum_d.high)
    else:
        accum = int(trial.suggest_categorical(R.PARAM_ACCUM, dists[R.PARAM_ACCUM].choices))
    lr = space.learning_rate(multiplier, batch * accum)
    return TrialConfig(batch_size=batch, accumulation_steps=accum, learning_rate=lr), multiplier
