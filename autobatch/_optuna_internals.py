"""The few private Optuna attributes autobatch relies on, in one place.

Optuna 5 has no public way to reach a study's storage backend and id, or a live trial's id,
which the worker loop needs to pop queued trials, record heartbeats and write system
attributes. Every such use goes through these functions; ``tests/test_optuna_internals.py``
fails loudly when an Optuna upgrade moves them.
"""

from __future__ import annotations

import optuna


def backend(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object behind ``study`` (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: "optuna.Trial | optuna.trial.FrozenTrial") -> int:
    """The storage's id of a live or frozen trial (``_trial_id``)."""
    return trial._trial_id
