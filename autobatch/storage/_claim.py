"""Taking the next trial of a study, under its limits, in one transaction; and a study's state
in one read.

``claim_trial`` is how every worker gets work. In one transaction it locks the study's row,
reads the study-wide limits (trial count, deadline) and the trials by state, and then takes the
oldest queued trial (a baseline, or the configuration of a trial whose worker died) or creates a
new one, RUNNING with its first heartbeat. So ``--n-trials N`` holds exactly across any number of
workers and resumes: a trial is taken only while results (COMPLETE, PRUNED) plus RUNNING trials
are fewer than N, and no queue of empty slots is ever written. On SQLite the transaction holds
the write lock from its start (``BEGIN IMMEDIATE``); on PostgreSQL the study row is locked
``FOR UPDATE``, as Optuna does when it numbers a new trial.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import optuna
import sqlalchemy
from optuna.trial import TrialState

from .._optuna_internals import dialect_insert, rdb_backend, rdb_models, rdb_session

RESULT_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Claim:
    """What ``claim_trial`` found. ``trial_id``/``number``: the trial now RUNNING for the caller,
    or None when none may start (``why`` says which limit). ``counts``: trials by state (lower
    case) before the claim. ``attrs``: the study user attributes asked for."""

    trial_id: Optional[int]
    number: Optional[int]
    why: str
    counts: dict[str, int]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def results(self) -> int:
        return self.counts.get("complete", 0) + self.counts.get("pruned", 0)


def claim_trial(storage: optuna.storages.BaseStorage, study_id: int, *, limit_key: str,
                deadline_key: str, seconds_needed: float = 0.0, refresh: bool = True,
                final_fail_key: Optional[str] = None, keys: tuple[str, ...] = ()) -> Claim:
    """Take the next trial of the study if its limits allow, as one transaction.

    ``limit_key``/``deadline_key``: the study user attributes holding the trial count (int or
    None) and the deadline (unix time or None). No trial is taken when results plus RUNNING
    trials reach the count, or when fewer than ``seconds_needed`` are left before the deadline.
    ``keys``: more study user attributes to read in the same query (``Claim.attrs``).
    Storages other than Optuna's RDB storage (in-memory: one process) take the same steps
    through Optuna's public calls. ``final_fail_key``: a FAIL trial with this user attribute is
    a final outcome (the user's code raised; never re-queued) and counts like a result.
    ``refresh=False``: the caller reads the study's trials right
    after (which Optuna's cache needs before the first write to the new trial)."""
    rdb = rdb_backend(storage)
    if rdb is None:
        return _claim_plain(storage, study_id, limit_key, deadline_key, seconds_needed, final_fail_key)
    claim = getattr(rdb, "claim_trial", None) or (lambda *a, **k: claim_in_rdb(rdb, *a, **k))
    taken = claim(study_id, limit_key=limit_key, deadline_key=deadline_key, seconds_needed=seconds_needed,
                  final_fail_key=final_fail_key, keys=keys)
    if taken.trial_id is not None and storage is not rdb and refresh:
        # Optuna's cache in front of the RDB storage learns of the trial by reading what is new
        # (it refuses writes to a trial it has not seen).
        storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    return taken


@functools.lru_cache(maxsize=None)
def _claim_statements() -> dict[str, Any]:
    """The claim's statements on Optuna's tables, built once (SQLAlchemy Core, no ORM objects:
    building them and the ORM's objects cost more than running them). Bound parameters:
    ``study_id``, ``keys`` (expanding), ``queued_id``, the row's values (an UPDATE reserves its
    columns' names)."""
    models = rdb_models()
    studies, trials = models.StudyModel.__table__, models.TrialModel.__table__
    attrs = models.StudyUserAttributeModel.__table__
    study_id = sqlalchemy.bindparam("study_id")
    return {
        "lock": sqlalchemy.select(studies.c.study_id).where(studies.c.study_id == study_id).with_for_update(),
        "attrs": sqlalchemy.select(attrs.c.key, attrs.c.value_json).where(
            attrs.c.study_id == study_id, attrs.c.key.in_(sqlalchemy.bindparam("keys", expanding=True))),
        "queued": sqlalchemy.select(trials.c.trial_id, trials.c.number).where(
            trials.c.study_id == study_id, trials.c.state == TrialState.WAITING).order_by(trials.c.trial_id).limit(1),
        "create": trials.insert(),
        "start": trials.update().where(trials.c.trial_id == sqlalchemy.bindparam("queued_id")).values(
            state=sqlalchemy.bindparam("running"), datetime_start=sqlalchemy.bindparam("now")),
        "counts": sqlalchemy.select(trials.c.state, sqlalchemy.func.count(trials.c.trial_id))
                  .where(trials.c.study_id == study_id).group_by(trials.c.state),
    }


def claim_in_rdb(rdb: optuna.storages.RDBStorage, study_id: int, *, limit_key: str, deadline_key: str,
                 seconds_needed: float = 0.0, final_fail_key: Optional[str] = None,
                 keys: tuple[str, ...] = ()) -> Claim:
    models, statements = rdb_models(), _claim_statements()
    with rdb_session(rdb) as session:
        if session.execute(statements["lock"], {"study_id": study_id}).first() is None:
            raise KeyError(models.NOT_FOUND_MSG)  # as Optuna's ``find_or_raise_by_id``
        rows = session.execute(statements["attrs"], {"study_id": study_id,
                                                     "keys": [limit_key, deadline_key, *keys]}).all()
        attrs = {key: json.loads(value) for key, value in rows}
        counts = _counts_in(session, models, study_id, final_fail_key)
        why = _refusal(counts, attrs.get(limit_key), attrs.get(deadline_key), seconds_needed)
        if why:
            return Claim(None, None, why, counts, attrs)
        queued = session.execute(statements["queued"], {"study_id": study_id}).first()
        now = datetime.datetime.now()
        if queued is None:  # numbered as Optuna numbers it: the study's trials before it (the study is locked)
            number = sum(counts[s.name.lower()] for s in TrialState)
            trial_id = session.execute(statements["create"], {
                "study_id": study_id, "number": number, "state": TrialState.RUNNING,
                "datetime_start": now}).inserted_primary_key[0]
        else:
            trial_id, number = queued
            session.execute(statements["start"], {"queued_id": trial_id, "running": TrialState.RUNNING, "now": now})
        if rdb.get_heartbeat_interval():
            # The first heartbeat with the state: Optuna never fails a RUNNING trial that has no
            # heartbeat at all, so a worker killed right after taking it would block the study.
            _first_beat(rdb, session, models, trial_id)
        return Claim(int(trial_id), int(number), "", counts, attrs)


def _first_beat(rdb: optuna.storages.RDBStorage, session: Any, models: Any, trial_id: int) -> None:
    """The trial's heartbeat, now (one upsert on SQLite and PostgreSQL; a re-queued trial's
    slot may have one from before)."""
    insert = dialect_insert(rdb.engine.name)
    model = models.TrialHeartbeatModel
    if insert is not None:
        statement = insert(model).values(trial_id=trial_id, heartbeat=sqlalchemy.func.now())
        session.execute(statement.on_conflict_do_update(index_elements=[model.trial_id],
                                                        set_={"heartbeat": statement.excluded.heartbeat}))
        return
    beat = model.where_trial_id(trial_id, session, True)
    if beat is None:
        session.add(model(trial_id=trial_id))
    else:
        beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar()


def _refusal(counts: dict[str, int], limit: Optional[int], deadline: Optional[float],
             seconds_needed: float) -> str:
    if limit:
        taken = sum(counts.get(k, 0) for k in ("complete", "pruned", "running", "fail_final"))
        if taken >= limit:
            return "count"
    if deadline is not None and deadline - time.time() < max(seconds_needed, 0.0):
        return "deadline"
    return ""


def _counts_in(session: Any, models: Any, study_id: int, final_fail_key: Optional[str] = None) -> dict[str, int]:
    rows = session.execute(_claim_statements()["counts"], {"study_id": study_id}).all()
    found = {TrialState(state) if not isinstance(state, TrialState) else state: n for state, n in rows}
    counts = {state.name.lower(): found.get(state, 0) for state in TrialState}
    if final_fail_key and counts["fail"]:
        attr = models.TrialUserAttributeModel
        counts["fail_final"] = (session.query(sqlalchemy.func.count(models.TrialModel.trial_id))
                                .join(attr, attr.trial_id == models.TrialModel.trial_id)
                                .filter(models.TrialModel.study_id == study_id,
                                        models.TrialModel.state == TrialState.FAIL, attr.key == final_fail_key)
                                .scalar())
    return counts


def _claim_plain(storage: optuna.storages.BaseStorage, study_id: int, limit_key: str,
                 deadline_key: str, seconds_needed: float, final_fail_key: Optional[str],
                 keys: tuple[str, ...] = ()) -> Claim:
    attrs = storage.get_study_user_attrs(study_id)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    counts["fail_final"] = sum(t.state == TrialState.FAIL and final_fail_key in t.user_attrs for t in trials)
    why = _refusal(counts, attrs.get(limit_key), attrs.get(deadline_key), seconds_needed)
    if why:
        return Claim(None, None, why, counts, attrs)
    for trial in trials:
        if trial.state == TrialState.WAITING and storage.set_trial_state_values(trial._trial_id,
                                                                                TrialState.RUNNING):
            return Claim(trial._trial_id, trial.number, "", counts, attrs)
    trial_id = storage.create_new_trial(study_id)
    return Claim(trial_id, storage.get_trial(trial_id).number, "", counts, attrs)


@dataclass(frozen=True)
class StudyState:
    """Trials by state (lower case) and the best result: what a progress line shows."""

    counts: dict[str, int]
    best_value: Optional[float]
    best_number: Optional[int]


def study_state(storage: optuna.storages.BaseStorage, study_id: int, *, maximize: bool = True,
                final_fail_key: Optional[str] = None) -> StudyState:
    """Counts by state (and ``fail_final``, see ``claim_trial``) and the best COMPLETE trial, in
    one read (not a read of every trial)."""
    rdb = rdb_backend(storage)
    if rdb is None:
        trials = storage.get_all_trials(study_id, deepcopy=False)
        counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
        counts["fail_final"] = sum(t.state == TrialState.FAIL and final_fail_key in t.user_attrs for t in trials)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        best = (max if maximize else min)(done, key=lambda t: t.value) if done else None
        return StudyState(counts, best.value if best else None, best.number if best else None)
    state = getattr(rdb, "study_state", None) or (lambda *a, **k: study_state_in_rdb(rdb, *a, **k))
    return state(study_id, maximize=maximize, final_fail_key=final_fail_key)


def study_state_in_rdb(rdb: optuna.storages.RDBStorage, study_id: int, *, maximize: bool = True,
                       final_fail_key: Optional[str] = None) -> StudyState:
    models = rdb_models()
    with rdb_session(rdb) as session:
        counts = _counts_in(session, models, study_id, final_fail_key)
        value = models.TrialValueModel.value
        best = (session.query(models.TrialModel.number, value)
                .join(models.TrialValueModel, models.TrialValueModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id,
                        models.TrialModel.state == TrialState.COMPLETE,
                        models.TrialValueModel.objective == 0)
                .order_by(value.desc() if maximize else value.asc(), models.TrialModel.number)
                .first())
    if best is None:
        return StudyState(counts, None, None)
    return StudyState(counts, float(best[1]), int(best[0]))


def trial_marks(storage: optuna.storages.BaseStorage, study_id: int,
                states: tuple[TrialState, ...] = RESULT_STATES) -> dict[str, list]:
    """``{state name (lower case): [trials in it, their largest number]}`` for ``states``, in
    one aggregate query on an RDB storage (no trial is read). A state with no trial is left
    out. Finished trials never change, so for COMPLETE and PRUNED these name the set of them."""
    rdb = rdb_backend(storage)
    if rdb is None:
        marks: dict[str, list] = {}
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=states):
            count, last = marks.get(trial.state.name.lower(), [0, trial.number])
            marks[trial.state.name.lower()] = [count + 1, max(last, trial.number)]
        return marks
    models = rdb_models()
    trial = models.TrialModel
    with rdb_session(rdb) as session:
        rows = (session.query(trial.state, sqlalchemy.func.count(trial.trial_id), sqlalchemy.func.max(trial.number))
                .filter(trial.study_id == study_id, trial.state.in_(states)).group_by(trial.state).all())
    return {(TrialState(state) if not isinstance(state, TrialState) else state).name.lower(): [int(n), int(last)]
            for state, n, last in rows}

