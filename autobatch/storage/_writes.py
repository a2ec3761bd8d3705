"""A running trial's writes, held and made together: one transaction where Optuna makes one each.

Optuna writes every parameter, attribute and intermediate value of a trial in a transaction of
its own (on SQLite: ``BEGIN``, a read of the trial's state, the write, a commit; more for a
parameter). ``TrialWrites`` stands in for the study's storage while one trial runs
(``run_trial``): the trial's parameters, its user and system attributes and the study's user
attributes are held in memory and written in one transaction with the next write that must reach
the database at once — an intermediate value (``Trial.report``) or the trial's state
(``Study.tell``) — or at ``flush`` (before training, so that other workers and a re-queue see
the configuration). The rows are the ones Optuna writes (the same tables, keys and JSON), so
``optuna.load_study`` and optuna-dashboard read the study as before. What Optuna checks still
holds: a trial that is finished refuses every write (``UpdateFinishedTrialError``), a parameter
whose name the study stores with an incompatible distribution is refused (at ``suggest_*`` when
this process knows the stored distribution, else when written), and Optuna's conversions and the
sampler's ``after_trial`` run as in ``Study.tell``. A crash loses only what the trial in flight
held: that trial fails by its heartbeat as before.

Only SQLite and PostgreSQL (the upserts are theirs); any other storage is used as it is
(``hold_writes`` returns None).
"""

from __future__ import annotations

import datetime
import functools
import json
import types
from typing import Any, Optional, Sequence

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.trial import TrialState

from .._optuna_internals import (dialect_insert, known_distribution, rdb_backend, rdb_models, rdb_session,
                                 remember_distribution, set_attrs_in_session, trial_end_assignment, upsert_rows,
                                 upsert_statement)

UPDATABLE = (TrialState.RUNNING, TrialState.WAITING)  # Optuna refuses writes to a finished trial only
_PASS_THROUGH = ("get_study_", "get_heartbeat", "get_all_studies", "record_heartbeat")  # touch no trial row


class TrialWrites:
    """The study's storage as the running trial ``trial_id`` sees it, its writes held (see the
    module docstring). Calls about other trials, and reads, write what is held first and then
    go to the storage."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, trial_id: int) -> None:
        self.inner, self.rdb = storage, rdb_backend(storage)
        self.study_id, self.trial_id = study_id, trial_id
        self.params: dict[str, tuple[float, BaseDistribution]] = {}
        self.user: dict[str, Any] = {}
        self.system: dict[str, Any] = {}
        self.study: dict[str, Any] = {}

    # --- held ----------------------------------------------------------------------------
    def set_trial_param(self, trial_id: int, name: str, internal: float, distribution: BaseDistribution) -> None:
        if trial_id != self.trial_id:
            return self._through("set_trial_param")(trial_id, name, internal, distribution)
        known = known_distribution(self.inner, self.study_id, name)
        if known is not None:  # refused now, as Optuna refuses it in suggest_*
            check_distribution_compatibility(known, distribution)
        self.params[name] = (internal, distribution)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id != self.trial_id:
            return self._through("set_trial_user_attr")(trial_id, key, value)
        self.hold_attrs({key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id != self.trial_id:
            return self._through("set_trial_system_attr")(trial_id, key, value)
        self.hold_attrs({}, {key: value})

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        if study_id != self.study_id:
            return self._through("set_study_user_attr")(study_id, key, value)
        json.dumps(value)  # refused now if it cannot be stored, as Optuna's own write would
        self.study[key] = value

    def hold_attrs(self, user: dict[str, Any], system: Optional[dict[str, Any]] = None) -> None:
        """Hold user (and system) attributes of the trial, JSON-checked now."""
        json.dumps([user, system])  # refused now if it cannot be stored, as Optuna's own write would
        self.user.update(user)
        self.system.update(system or {})

    # --- reads that see what is held -------------------------------------------------------
    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        stored = self.inner.get_trial_user_attrs(trial_id)
        return {**stored, **self.user} if trial_id == self.trial_id else stored

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        stored = self.inner.get_trial_system_attrs(trial_id)
        return {**stored, **self.system} if trial_id == self.trial_id else stored

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        stored = self.inner.get_study_user_attrs(study_id)
        return {**stored, **self.study} if study_id == self.study_id else stored

    # --- written at once, with what is held ----------------------------------------------------
    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        if trial_id != self.trial_id:
            return self._through("set_trial_intermediate_value")(trial_id, step, value)
        self._write(intermediate=(step, value))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Optional[Sequence[float]] = None) -> bool:
        if trial_id != self.trial_id or not state.is_finished():
            return self._through("set_trial_state_values")(trial_id, state, values)
        try:
            self._write(state=state, values=values)
        except sqlalchemy.exc.IntegrityError:  # as Optuna's own answers a lost race
            return False
        return True

    def flush(self) -> None:
        """Write what is held, in one transaction (none when nothing is)."""
        if self.params or self.user or self.system or self.study:
            self._write()

    def _write(self, **change: Any) -> None:
        write = getattr(self.rdb, "write_trial", None) or (lambda *a, **k: write_trial_in_rdb(self.rdb, *a, **k))
        known = {name: known_distribution(self.inner, self.study_id, name) for name in self.params}
        write(self.study_id, self.trial_id, params=self.params, known=known, user_attrs=self.user,
              system_attrs=self.system, study_attrs=self.study, **change)
        for name, (_, distribution) in self.params.items():
            remember_distribution(self.inner, self.study_id, name, distribution)
        self.params, self.user, self.system, self.study = {}, {}, {}, {}

    # --- everything else -------------------------------------------------------------------------
    def _through(self, name: str):
        method = getattr(self.inner, name)
        if name.startswith(_PASS_THROUGH):
            return method

        def call(*args, **kwargs):
            self.flush()
            return method(*args, **kwargs)
        return call

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        return self._through(name) if callable(value) else value


def hold_writes(storage: optuna.storages.BaseStorage, study_id: int, trial_id: int) -> Optional[TrialWrites]:
    """A ``TrialWrites`` for the trial on an SQLite or PostgreSQL storage, else None."""
    rdb = rdb_backend(storage)
    if rdb is None or rdb.engine.name not in ("sqlite", "postgresql"):
        return None
    return TrialWrites(storage, study_id, trial_id)


def write_trial_in_rdb(rdb: optuna.storages.RDBStorage, study_id: int, trial_id: int, *,
                       params: dict[str, tuple[float, BaseDistribution]],
                       known: dict[str, Optional[BaseDistribution]], user_attrs: dict[str, Any],
                       system_attrs: dict[str, Any], study_attrs: dict[str, Any],
                       intermediate: Optional[tuple[int, float]] = None, state: Optional[TrialState] = None,
                       values: Optional[Sequence[float]] = None) -> None:
    """One transaction: the trial's parameters (``known``: the study's stored distribution of
    each, when this process knows it), user and system attributes, the study's user attributes,
    and an intermediate value or the trial's end (``state``, ``values``). The trial's state is
    checked first, by the statement that changes it where there is one (raises
    ``UpdateFinishedTrialError`` for a finished trial, ``KeyError`` for none). SQLite or
    PostgreSQL only; each statement is built once (``upsert_statement``, ``_guarded``), the rows
    of a table go in one statement (``upsert_rows``)."""
    models, dialect = rdb_models(), rdb.engine.name
    only_report = intermediate is not None and not (params or user_attrs or system_attrs or study_attrs)
    with rdb_session(rdb) as session:
        if state is not None:
            changed = session.execute(_guarded(dialect).finish, {
                "id": trial_id, "state": state, **_end_time()}).rowcount
            if not changed:
                _refuse(session, models, rdb, trial_id)
        elif only_report:
            if not session.execute(_guarded(dialect).report, _intermediate_row(models, trial_id, *intermediate)).rowcount:
                _refuse(session, models, rdb, trial_id)
            return
        else:
            row = models.TrialModel.find_or_raise_by_id(trial_id, session)
            rdb.check_trial_is_updatable(trial_id, row.state)
        _insert_params(session, models, dialect, study_id, trial_id, params, known)
        set_attrs_in_session(rdb, session, trial_id, user_attrs)
        set_attrs_in_session(rdb, session, trial_id, system_attrs, system=True)
        if study_attrs:
            rows = [{"study_id": study_id, "key": k, "value_json": json.dumps(v)} for k, v in study_attrs.items()]
            upsert_rows(session, dialect, "study_user_attributes", ("study_id", "key"), ("value_json",), rows)
        if intermediate is not None:
            session.execute(upsert_statement(dialect, "trial_intermediate_values", ("trial_id", "step"),
                                             ("intermediate_value", "intermediate_value_type")),
                            [_intermediate_row(models, trial_id, *intermediate)])
        if values:
            rows = [_value_row(models, trial_id, objective, value) for objective, value in enumerate(values)]
            upsert_rows(session, dialect, "trial_values", ("trial_id", "objective"), ("value", "value_type"), rows)


def _refuse(session: Any, models: Any, rdb: optuna.storages.RDBStorage, trial_id: int) -> None:
    """Raise what Optuna raises for a write to ``trial_id`` (none, or finished)."""
    row = models.TrialModel.find_or_raise_by_id(trial_id, session)
    rdb.check_trial_is_updatable(trial_id, row.state)
    raise RuntimeError(f"trial {trial_id} refused a write in state {row.state.name}")  # not reached


def _end_time() -> dict[str, Any]:
    """The ``end`` parameter of ``_guarded(...).finish``: now, stored as Optuna stores a trial's end."""
    (_, stored), = trial_end_assignment(datetime.datetime.now()).items()
    return {"end": stored}


@functools.lru_cache(maxsize=None)
def _guarded(dialect: str) -> Any:
    """The statements that write only while the trial is not finished (one statement each; on
    PostgreSQL the update locks the row, as Optuna's ``SELECT ... FOR UPDATE``): ``finish`` sets
    the state and end (parameters ``id``, ``state``, ``end``), ``report`` upserts an intermediate
    value (a row of ``_intermediate_row``). Built once per database."""
    tables = rdb_models().BaseModel.metadata.tables
    trials, values = tables["trials"], tables["trial_intermediate_values"]
    updatable = list(UPDATABLE)
    finish = (sqlalchemy.update(trials)
              .where(trials.c.trial_id == sqlalchemy.bindparam("id"), trials.c.state.in_(updatable))
              .values(state=sqlalchemy.bindparam("state"), datetime_complete=sqlalchemy.bindparam("end")))
    columns = ("trial_id", "step", "intermediate_value", "intermediate_value_type")
    source = (sqlalchemy.select(*[sqlalchemy.bindparam(c, type_=values.c[c].type) for c in columns])
              .where(trials.c.trial_id == sqlalchemy.bindparam("trial_id"), trials.c.state.in_(updatable)))
    statement = dialect_insert(dialect)(values).from_select(columns, source)
    report = statement.on_conflict_do_update(index_elements=[values.c.trial_id, values.c.step], set_={
        "intermediate_value": statement.excluded.intermediate_value,
        "intermediate_value_type": statement.excluded.intermediate_value_type})
    return types.SimpleNamespace(finish=finish, report=report)


def _insert_params(session: Any, models: Any, dialect: str, study_id: int, trial_id: int,
                   params: dict[str, tuple[float, BaseDistribution]],
                   known: dict[str, Optional[BaseDistribution]]) -> None:
    """The parameters in one statement, each checked against the distribution the study stores
    under its name (Optuna's check; one read for the names this process does not know yet). A
    parameter the trial has already is left as it is (Optuna ignores that write too)."""
    if not params:
        return
    unknown = [name for name in params if known.get(name) is None]
    if unknown:
        param, trial = models.TrialParamModel, models.TrialModel
        rows = (session.query(param.param_name, param.distribution_json).join(trial)
                .filter(trial.study_id == study_id, param.param_name.in_(unknown)).distinct().all())
        for name, text in rows:
            check_distribution_compatibility(optuna.distributions.json_to_distribution(text), params[name][1])
    for name, dist in known.items():
        if dist is not None:
            check_distribution_compatibility(dist, params[name][1])
    rows = [{"trial_id": trial_id, "param_name": name, "param_value": internal,
             "distribution_json": distribution_to_json(dist)} for name, (internal, dist) in params.items()]
    upsert_rows(session, dialect, "trial_params", ("trial_id", "param_name"), (), rows)


def _intermediate_row(models: Any, trial_id: int, step: int, value: float) -> dict[str, Any]:
    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind}


def _value_row(models: Any, trial_id: int, objective: int, value: float) -> dict[str, Any]:
    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
    return {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
