"""Trials whose worker died: failing them (heartbeats) and queueing their configuration again."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import records as R
from .._optuna_internals import backend, rdb_backend, study_id

MAX_RETRIES = 2  # a configuration whose worker dies this often is not re-queued again


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker stopped beating, each with the reason
    (``stop_reason=worker_lost``) written in the same transaction as its FAIL state, and queue
    their configurations again (``requeue``). Several workers may do this at once: each trial is
    failed by one of them. Returns the numbers of the trials this call failed.

    (Optuna's ``fail_stale_trials`` without the reason: a failed trial must not keep what its
    worker wrote last, nor be left without a word on why it failed.)"""
    storage = backend(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        return []
    grace = getattr(rdb_backend(storage), "grace_period", None) or 2 * interval
    failed = []
    for trial_id in storage._get_stale_trial_ids(study_id(study)):
        attrs = {R.STOP_REASON: R.STOP_WORKER_LOST,
                 R.STOP_DETAIL: f"its worker sent no heartbeat for {grace}s (killed, or its machine "
                                "lost the database); configuration queued again"}
        if fail_trial(storage, trial_id, attrs):
            frozen = storage.get_trial(trial_id)
            requeue(study, frozen)
            failed.append(frozen.number)
    return failed


def fail_trial(storage: optuna.storages.BaseStorage, trial_id: int, attrs: dict) -> bool:
    """Mark a RUNNING trial FAIL with ``attrs`` (its stop reason), in one transaction on an RDB
    storage. False when it was finished already (by its worker, or failed by another)."""
    rdb = rdb_backend(storage)
    try:
        if rdb is None:
            for key, value in attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)
            return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        finish = getattr(rdb, "finish_trial", None) or (lambda *a, **k: R.finish_in_rdb(rdb, *a, **k))
        return finish(trial_id, state=TrialState.FAIL, values=None, user_attrs=attrs, system_attrs={})
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


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
