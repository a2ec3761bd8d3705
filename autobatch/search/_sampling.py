"""How the study proposes and stops trials: the Optuna distributions of the space, the seeded
sampler, the pruners on the samples-seen axis, and a trial's suggested configuration."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

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
# searched before 0.2 (no difference beyond the noise; see the issue 16 note). The lr stays a
# multiplier of the scaling rule (the absolute lr is each trial's ``learning_rate`` attribute):
# its good region moves little with the batch, so the search stays well conditioned.
def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    return {
        R.PARAM_BATCH_SIZE: CategoricalDistribution(tuple(space.batch_sizes)),
        R.PARAM_LR_MULTIPLIER: FloatDistribution(space.lr_multiplier_min, space.lr_multiplier_max, log=True),
        R.PARAM_ACCUM: CategoricalDistribution(tuple(sorted(space.accumulation_steps))),
    }


def params_for(space: SearchSpace, *, batch_size: int, accumulation_steps: int, multiplier: float) -> dict:
    """Optuna params for a configuration (for enqueued baselines)."""
    return {R.PARAM_BATCH_SIZE: int(batch_size), R.PARAM_ACCUM: int(accumulation_steps),
            R.PARAM_LR_MULTIPLIER: float(multiplier)}


def suggest(trial: optuna.Trial, space: SearchSpace) -> tuple[TrialConfig, float]:
    """The trial's configuration; the lr is searched as a multiplier of the scaling rule."""
    dists = distributions(space)
    batch = int(trial.suggest_categorical(R.PARAM_BATCH_SIZE, dists[R.PARAM_BATCH_SIZE].choices))
    multiplier = trial.suggest_float(R.PARAM_LR_MULTIPLIER, space.lr_multiplier_min,
                                     space.lr_multiplier_max, log=True)
    accum = int(trial.suggest_categorical(R.PARAM_ACCUM, dists[R.PARAM_ACCUM].choices))
    lr = space.learning_rate(multiplier, batch * accum)
    return TrialConfig(batch_size=batch, accumulation_steps=accum, learning_rate=lr), multiplier


def check_params(trials: list, study_name: str) -> None:
    """Refuse to add trials to a study made before 0.2 (it searched ``batch_size_log2`` and
    ``accumulation_steps_log2``): the sampler would treat the two encodings as unrelated
    parameters. Its trials stay readable by every reading command."""
    if any(R.PARAM_BATCH_LOG2 in t.params for t in trials):
        raise AutobatchError(
            f"study {study_name!r} was made by an earlier autobatch (parameters {R.PARAM_BATCH_LOG2}, "
            f"{R.PARAM_ACCUM_LOG2}); recommend, report, show and the dashboard still read it, but new trials "
            f"search {R.PARAM_BATCH_SIZE} and {R.PARAM_ACCUM}: tune under a new --study-name")
