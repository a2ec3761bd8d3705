"""The few private Optuna attributes autobatch relies on, in one place.

Optuna 5 has no public way to reach a study's storage backend and id, or a live trial's id,
which the worker loop needs to pop queued trials, record heartbeats and write system
attributes; and the RDB storage's session and table models, with which a trial is claimed and
its result written in one transaction each (Optuna writes each attribute in its own). Every
such use goes through these functions; ``tests/test_optuna_internals.py``
fails loudly when an Optuna upgrade moves them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

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


# --- the RDB storage's session and rows: one transaction for what Optuna does in several ------

def rdb_backend(storage: optuna.storages.BaseStorage) -> "optuna.storages.RDBStorage | None":
    """The RDB storage behind ``storage`` (unwrapping Optuna's ``_CachedStorage``), or None."""
    inner = getattr(storage, "_backend", storage)
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


@contextmanager
def rdb_session(rdb: optuna.storages.RDBStorage) -> Iterator[Any]:
    """One SQLAlchemy session (one transaction), committed at the end (Optuna's own helper)."""
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session) as session:
        yield session


def rdb_models() -> Any:
    """Optuna's table models (``optuna.storages._rdb.models``)."""
    from optuna.storages._rdb import models

    return models


def new_trial_row(rdb: optuna.storages.RDBStorage, study_id: int, session: Any) -> Any:
    """A new RUNNING trial row numbered in ``session`` (the study row must be locked)."""
    return rdb._get_prepared_new_trial(study_id, None, session)


def set_attr_in_session(rdb: optuna.storages.RDBStorage, session: Any, trial_id: int, key: str,
                        value: Any, *, system: bool = False) -> None:
    """Upsert one trial user (or system) attribute inside ``session``, without committing."""
    models = rdb_models()
    model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
    rdb._set_trial_attr_without_commit(session, model, trial_id, key, value)


def set_attrs_in_session(rdb: optuna.storages.RDBStorage, session: Any, trial_id: int,
                         attrs: dict[str, Any], *, system: bool = False) -> None:
    """Upsert many trial user (or system) attributes inside ``session`` with one statement on
    SQLite and PostgreSQL (Optuna issues a lookup and an upsert per attribute), stored exactly
    as Optuna stores them (``value_json = json.dumps(value)``). The caller checks the trial is
    still running."""
    if not attrs:
        return
    models = rdb_models()
    model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
    dialect = rdb.engine.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        for key, value in attrs.items():
            rdb._set_trial_attr_without_commit(session, model, trial_id, key, value)
        return
    rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    statement = insert(model).values(rows)
    session.execute(statement.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                    set_={"value_json": statement.excluded.value_json}))


def set_value_in_session(rdb: optuna.storages.RDBStorage, session: Any, trial_row: Any, value: float) -> None:
    """The trial's (single-objective) value inside ``session``, without committing."""
    rdb._set_trial_value_without_commit(session, trial_row, 0, value)


def cached_frozen(trial: "optuna.Trial") -> optuna.trial.FrozenTrial:
    """A live trial's own record of itself (``Trial._cached_frozen_trial``): parameters,
    reports and attributes set through the trial, kept by Optuna as they are written."""
    return trial._cached_frozen_trial


def fill_trial_cache(study: optuna.Study, trials: list) -> None:
    """Hand the samplers a list of all trials just read (``Study._get_trials(use_cache=True)``
    reads it instead of the storage), as ``Study.ask`` has them read once per trial."""
    study._thread_local.cached_all_trials = trials
