"""How the study proposes and stops trials: the Optuna distributions of the space, the seeded
sampler, the pruners on the samples-seen axis, and a trial's suggested configuration."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import FloatDistribution, IntDistribution

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


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    acc = sorted(space.accumulation_steps)
    return {
        R.PARAM_BATCH_LOG2: IntDistribution(int(math.log2(space.batch_size_min)),
                                            int(math.log2(space.batch_size_max))),
        R.PARAM_LR_MULTIPLIER: FloatDistribution(space.lr_multiplier_min, space.lr_multiplier_max, log=True),
        R.PARAM_ACCUM_LOG2: IntDistribution(int(math.log2(acc[0])), int(math.log2(acc[-1]))),
    }


def params_for(space: SearchSpace, *, batch_size: int, accumulation_steps: int, multiplier: float) -> dict:
    """Optuna params for a configuration (for enqueued baselines)."""
    return {R.PARAM_BATCH_LOG2: int(math.log2(batch_size)),
            R.PARAM_ACCUM_LOG2: int(math.log2(accumulation_steps)),
            R.PARAM_LR_MULTIPLIER: float(multiplier)}


def suggest(trial: optuna.Trial, space: SearchSpace) -> tuple[TrialConfig, float]:
    """The trial's configuration; the lr is searched as a multiplier of the scaling rule."""
    dists = distributions(space)
    batch_d, accum_d = dists[R.PARAM_BATCH_LOG2], dists[R.PARAM_ACCUM_LOG2]
    batch = 2 ** trial.suggest_int(R.PARAM_BATCH_LOG2, batch_d.low, batch_d.high)
    multiplier = trial.suggest_float(R.PARAM_LR_MULTIPLIER, space.lr_multiplier_min,
                                     space.lr_multiplier_max, log=True)
    accum = 2 ** trial.suggest_int(R.PARAM_ACCUM_LOG2, accum_d.low, accum_d.high)
    lr = space.learning_rate(multiplier, batch * accum)
    return TrialConfig(batch_size=batch, accumulation_steps=accum, learning_rate=lr), multiplier
