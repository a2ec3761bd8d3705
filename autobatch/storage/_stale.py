"""Trials whose worker died: failing them (heartbeats) and queueing their configuration again."""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import records as R

MAX_RETRIES = 2  # a configuration whose worker dies this often is not re-queued again


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating; ``requeue`` queues their configurations."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the configuration of a trial that did not finish (dead worker, Ctrl-C) again.

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` this drops the dead trial's
    constraints and measurements, so the retry records its own."""
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES:
        return
    # What it was asked to run: its parameters, or, if it died before suggesting any, its
    # slot with the enqueued ``fixed_params`` (a baseline's). The retry history goes along
    # either way, so a configuration that keeps killing workers stops coming back.
    system = {k: v for k, v in trial.system_attrs.items() if not k.startswith(R.LEGACY_CONSTRAINTS)}
    system.update(failed_trial=history[0], retry_history=history)
    user = {k: v for k, v in trial.user_attrs.items() if k == R.BASELINE}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user, system_attrs=system))
