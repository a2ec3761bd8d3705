"""The few private Optuna attributes autobatch relies on, in one place.

Optuna 5 has no public way to reach a study's storage backend and id, or a live trial's id,
which the worker loop needs to pop queued trials, record heartbeats and write system
attributes; and the RDB storage's session and table models, with which a trial is claimed and
its result written in one transaction each (Optuna writes each attribute in its own). Every
such use goes through these functions; ``tests/test_optuna_internals.py``
fails loudly when an Optuna upgrade moves them.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import pathlib
import re
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
    if dialect_insert(rdb.engine.name) is None:
        for key, value in attrs.items():
            rdb._set_trial_attr_without_commit(session, model, trial_id, key, value)
        return
    rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    upsert_rows(session, rdb.engine.name, model.__tablename__, ("trial_id", "key"), ("value_json",), rows)


def upsert_rows(session: Any, dialect: str, table: str, keys: tuple[str, ...], updated: tuple[str, ...],
                rows: list[dict[str, Any]]) -> None:
    """Upsert ``rows`` (distinct ``keys``) into one of Optuna's tables inside ``session`` on
    SQLite or PostgreSQL (``upsert_statement``). PostgreSQL gets them as one multi-row statement:
    one round trip, where an executemany of the upsert is a statement per row (psycopg2 sends
    each; SQLAlchemy's "insertmanyvalues" batching does not take ``ON CONFLICT``). SQLite gets
    the cached statement with the list of rows (sqlite3's executemany, in process)."""
    if not rows:
        return
    if dialect == "postgresql" and len(rows) > 1:
        session.execute(_upsert(dialect, table, keys, updated, rows))
    else:
        session.execute(upsert_statement(dialect, table, keys, updated), rows)


@functools.lru_cache(maxsize=None)
def upsert_statement(dialect: str, table: str, keys: tuple[str, ...], updated: tuple[str, ...]) -> Any:
    """``INSERT INTO table ... ON CONFLICT (keys) DO UPDATE SET updated`` (``DO NOTHING`` when
    ``updated`` is empty) for one of Optuna's tables on SQLite or PostgreSQL, None on another
    database. Built once and executed with a row or a list of rows (its compiled form is cached),
    instead of building and compiling a statement with the rows' values each time."""
    if dialect_insert(dialect) is None:
        return None
    return _upsert(dialect, table, keys, updated)


def _upsert(dialect: str, table: str, keys: tuple[str, ...], updated: tuple[str, ...],
            rows: "list[dict[str, Any]] | None" = None) -> Any:
    """The upsert of ``upsert_statement``, with ``rows`` as its multi-row ``VALUES`` when given."""
    target = rdb_models().BaseModel.metadata.tables[table]
    statement = dialect_insert(dialect)(target)
    if rows is not None:
        statement = statement.values(rows)
    index = [target.c[k] for k in keys]
    if not updated:
        return statement.on_conflict_do_nothing(index_elements=index)
    return statement.on_conflict_do_update(index_elements=index,
                                           set_={c: statement.excluded[c] for c in updated})


def dialect_insert(dialect: str) -> Any:
    """SQLAlchemy's ``insert`` with ``on_conflict_do_*`` for the database named ``dialect``
    (SQLite, PostgreSQL), or None for any other."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    return insert


def set_value_in_session(rdb: optuna.storages.RDBStorage, session: Any, trial_row: Any, value: float) -> None:
    """The trial's (single-objective) value inside ``session``, without committing."""
    rdb._set_trial_value_without_commit(session, trial_row, 0, value)


def trial_end_assignment(when: "datetime.datetime") -> dict:
    """The ``trials`` row assignment that stores ``when`` as a trial's end, converted as Optuna
    converts it (``TrialModel.datetime_complete``'s setter: naive UTC in Optuna 5)."""
    models = rdb_models()
    row = models.TrialModel()
    row.datetime_complete = when
    return {models.TrialModel.__table__.c.datetime_complete: row._datetime_complete_utc}


def cached_frozen(trial: "optuna.Trial") -> optuna.trial.FrozenTrial:
    """A live trial's own record of itself (``Trial._cached_frozen_trial``): parameters,
    reports and attributes set through the trial, kept by Optuna as they are written."""
    return trial._cached_frozen_trial


def fill_trial_cache(study: optuna.Study, trials: list) -> None:
    """Hand the samplers a list of all trials just read (``Study._get_trials(use_cache=True)``
    reads it instead of the storage), as ``Study.ask`` has them read once per trial."""
    study._thread_local.cached_all_trials = trials


def tell(study: optuna.Study, trial: "optuna.Trial", value: "float | None" = None,
         state: "optuna.trial.TrialState | None" = None) -> optuna.trial.FrozenTrial:
    """``study.tell(trial, value, state=state)`` without its two storage reads of the trial
    (``optuna.study._tell._get_frozen_trial``, before and after the write): Optuna's own checks
    and conversions (``_tell_with_warning``: a value that is not a finite float fails the trial,
    a pruned trial keeps its last reported value, the sampler's ``after_trial``) run on the live
    trial's own record (``Trial._cached_frozen_trial``, which ``set_user_attr``, ``report``,
    ``suggest_*``, ``set_constraint`` and ``records.write_attrs`` keep). The one write is Optuna's
    ``set_trial_state_values``. Returns that record, finished: the state and values as written,
    ``datetime_complete`` from this clock (the storage's differs by the write's latency); system
    attributes written straight to the storage, bypassing the trial, are not in it."""
    import datetime

    from optuna.study._tell import _tell_with_warning

    own = cached_frozen(trial)
    storage = study._storage
    shadowed = storage.__dict__.get("get_trial")
    read = storage.get_trial

    def get_trial(trial_id_: int) -> optuna.trial.FrozenTrial:
        return own if trial_id_ == trial._trial_id else read(trial_id_)
    storage.get_trial = get_trial  # this call's reads of this trial only
    try:
        told, values, _ = _tell_with_warning(study, trial, value, state)
    finally:
        if shadowed is None:
            del storage.get_trial
        else:
            storage.get_trial = shadowed
    frozen = copy.deepcopy(own)
    frozen.state, frozen.values, frozen.datetime_complete = told, values, datetime.datetime.now()
    return frozen


def trial_of(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """``optuna.Trial(study, trial_id)`` for a trial just read (``frozen``, from the
    ``get_trials`` the worker makes for the sampler anyway), without ``Trial.__init__``'s second
    read of it from the storage: the attributes that constructor sets, from a copy of
    ``frozen``, and the sampler's ``before_trial`` called as there."""
    from optuna import pruners

    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study, trial._trial_id, trial.storage = study, frozen._trial_id, study._storage
    trial._cached_frozen_trial = copy.deepcopy(frozen)
    study.sampler.before_trial(pruners._filter_study(study, trial._cached_frozen_trial), trial._cached_frozen_trial)
    trial.relative_search_space = None
    trial._relative_params = None
    trial._fixed_params = trial._cached_frozen_trial.system_attrs.get("fixed_params", {})
    return trial


def known_distribution(storage: optuna.storages.BaseStorage, study_id: int,
                       name: str) -> "optuna.distributions.BaseDistribution | None":
    """The distribution the study stores under parameter ``name`` as this process knows it (Optuna's
    cache in front of an RDB storage keeps it from its first write of the name,
    ``_CachedStorage._studies[study_id].param_distribution``), or None: then it is read."""
    from optuna.storages._cached_storage import _CachedStorage

    if not isinstance(storage, _CachedStorage) or study_id not in storage._studies:
        return None
    return storage._studies[study_id].param_distribution.get(name)


def remember_distribution(storage: optuna.storages.BaseStorage, study_id: int, name: str,
                          distribution: "optuna.distributions.BaseDistribution") -> None:
    """Tell Optuna's cache the study stores ``name`` with ``distribution`` now (what
    ``_CachedStorage.set_trial_param`` notes after its own write), when it has none yet."""
    from optuna.storages._cached_storage import _CachedStorage

    if isinstance(storage, _CachedStorage) and study_id in storage._studies:
        storage._studies[study_id].param_distribution.setdefault(name, distribution)


@contextmanager
def storage_routed(study: optuna.Study, trial: "optuna.Trial", storage: Any) -> Iterator[None]:
    """Route the study's and the trial's storage calls (``Study._storage``, which samplers,
    pruners and ``Study.tell`` use, and ``Trial.storage``) through ``storage`` for the block."""
    before = study._storage, trial.storage
    study._storage = trial.storage = storage
    try:
        yield
    finally:
        study._storage, trial.storage = before


@contextmanager
def trials_from_cache(study: optuna.Study) -> Iterator[None]:
    """In the block, the study's trials as ``fill_trial_cache`` handed them over answer the reads
    that samplers make afresh (``Study._get_trials(use_cache=False)``: TPE's ``constant_liar``
    reads the RUNNING trials again, a moment after the caller read them); nothing changes when
    no list was handed over."""
    cached = study._thread_local.cached_all_trials
    if cached is None:
        yield
        return
    read = study._get_trials

    def get_trials(deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        return read(deepcopy, states, use_cache=True)
    study._get_trials = get_trials
    try:
        yield
    finally:
        del study._get_trials


# --- the schema version check: the same decisions as Optuna's, without alembic on the way in ----

@functools.lru_cache(maxsize=None)
def schema_head_revision() -> "str | None":
    """The newest revision of Optuna's RDB schema: the migration script whose ``revision`` no
    other script names as its ``down_revision`` (what alembic's ``ScriptDirectory.get_current_head``
    returns), read from the scripts' text in ``optuna/storages/_rdb/alembic/versions``; None
    when that is not exactly one revision (then Optuna's own check runs)."""
    from optuna.storages._rdb import storage as rdb_storage

    versions = pathlib.Path(rdb_storage.__file__).parent / "alembic" / "versions"
    revisions, downs = set(), set()
    for path in versions.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision = re.search(r"""^revision\s*=\s*["']([^"']+)["']""", text, re.M)
        down = re.search(r"""^down_revision\s*=\s*["']([^"']+)["']""", text, re.M)
        if revision is None:
            return None
        revisions.add(revision.group(1))
        if down is not None:
            downs.add(down.group(1))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def install_quick_schema_check() -> None:
    """Make ``RDBStorage`` check and stamp its schema version with one query instead of through
    alembic (whose import and migration-script parsing cost about half a second per storage
    opened): the stored revision is read from ``alembic_version`` and compared with
    ``schema_head_revision``; a new schema is stamped with that revision in the table alembic
    itself uses, so vanilla Optuna, its ``optuna storage upgrade`` and optuna-dashboard read the
    database as they would have. Anything else (an old schema, an unknown revision, no clear
    head) takes Optuna's own path and its messages. Idempotent; affects every ``RDBStorage``
    made afterwards in this process (``_VersionManager`` is the class ``RDBStorage.__init__``
    looks up)."""
    from optuna.storages._rdb import storage as rdb_storage

    if not issubclass(rdb_storage._VersionManager, _QuickVersions):
        rdb_storage._VersionManager = _quick_versions(rdb_storage._VersionManager)


class _QuickVersions:
    """Marker base of the class ``install_quick_schema_check`` installs."""


def _quick_versions(base: type) -> type:
    import sqlalchemy

    def version_table() -> "sqlalchemy.Table":  # alembic's own definition (alembic.migration)
        return sqlalchemy.Table("alembic_version", sqlalchemy.MetaData(),
                                sqlalchemy.Column("version_num", sqlalchemy.String(32), nullable=False),
                                sqlalchemy.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))

    class QuickVersionManager(base, _QuickVersions):
        def _stored_revision(self) -> "str | None":
            with self.engine.connect() as connection:
                if not sqlalchemy.inspect(connection).has_table("alembic_version"):
                    return None
                rows = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).all()
            return rows[0][0] if len(rows) == 1 else None

        def _init_alembic(self) -> None:
            head = schema_head_revision()
            if head is None or not self._is_alembic_supported():  # e.g. a schema from before alembic
                return super()._init_alembic()
            if self._stored_revision() is not None:  # stamped already
                return
            table = version_table()
            with self.engine.connect() as connection, connection.begin():
                table.create(connection, checkfirst=True)
                connection.execute(table.insert().values(version_num=head))

        def get_current_version(self) -> str:
            stored = self._stored_revision()
            return stored if stored is not None else super().get_current_version()

        def get_head_version(self) -> str:
            return schema_head_revision() or super().get_head_version()

    return QuickVersionManager
