"""The RDB storage autobatch opens: heartbeats on, user errors as one line, and a database
restart ridden out by retrying (``open_storage``)."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from ..errors import AutobatchError, NoStudiesError
from ._stale import requeue
from ._urls import _encode_password, _first_line, _where, mask_url, resolve_url

ENV_HEARTBEAT = "AUTOBATCH_HEARTBEAT_S"
# A worker records a heartbeat every HEARTBEAT_S; a RUNNING trial without one for
# GRACE_FACTOR beats is failed and its configuration re-queued.
HEARTBEAT_S, GRACE_FACTOR = 10, 3
ENV_RETRY = "AUTOBATCH_DB_RETRY_S"
# A storage call that fails because the database went away (a restart) is retried for up to
# RETRY_S, then the worker stops with StorageLostError (exit 2).
RETRY_S = 60.0
CONNECT_TIMEOUT_S = 10  # an unreachable host fails in seconds, not after the TCP timeout
_log = logging.getLogger("autobatch.storage")


class StorageLostError(AutobatchError):
    """The database went away during a run and did not come back within the retry time."""


def open_storage(url: Optional[str], *, create_tables: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``, with user errors raised as ``AutobatchError``.

    Connections are checked before use (``pool_pre_ping``) and a call made while the database
    is down is retried for up to ``$AUTOBATCH_DB_RETRY_S`` (60 s), so a database restart costs
    a pause, not a crash. Heartbeats are on (``$AUTOBATCH_HEARTBEAT_S``, 10 s). ``create_tables=False`` is for workers: only
    ``tune`` creates the schema, so workers starting together never race on it."""
    url = resolve_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise AutobatchError(f"malformed storage URL {mask_url(url)!r}") from None
    if parsed.drivername.startswith("sqlite") and parsed.database:
        path = Path(parsed.database)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AutobatchError(f"cannot create {path.parent}: {exc.strerror}") from None
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise AutobatchError(f"SQLite storage {path} is not writable; pass --storage")

    engine_kwargs: dict = {"pool_pre_ping": True}
    if not parsed.drivername.startswith("sqlite"):
        engine_kwargs["pool_recycle"] = 300
    if parsed.drivername.startswith("postgresql+psycopg2") and "connect_timeout" not in parsed.query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    elif parsed.drivername.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}  # workers queue for SQLite's one writer
    beat = _positive_env(ENV_HEARTBEAT, HEARTBEAT_S)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _RetryingRDBStorage(
                _encode_password(url), engine_kwargs=engine_kwargs,
                heartbeat_interval=int(beat), grace_period=int(GRACE_FACTOR * beat),
                heartbeat_stale_trial_callback=requeue, skip_table_creation=not create_tables,
                where=_where(parsed, url), retry_s=_positive_env(ENV_RETRY, RETRY_S),
                password=parsed.password)
    except optuna.exceptions.StorageInternalError as exc:
        cause = str(exc.__cause__ or "")
        if "no such table" in cause or ("relation" in cause and "does not exist" in cause):
            # Workers do not create the schema: nothing was ever created here.
            raise NoStudiesError(f"no autobatch studies in {mask_url(url)} yet; create one with "
                                 "autobatch tune (or tune --create-only)") from None
        raise _unreachable(parsed, url, exc.__cause__ or exc) from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError) as exc:
        raise _unreachable(parsed, url, exc) from None


def _unreachable(parsed, url: str, exc: BaseException) -> AutobatchError:
    return AutobatchError(f"cannot reach the storage at {_where(parsed, url)}: "
                          f"{_first_line(exc, parsed.password)}")


def _positive_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1
    if value <= 0 or (name == ENV_HEARTBEAT and value != int(value)):
        raise AutobatchError(f"${name} must be a positive {'whole ' if name == ENV_HEARTBEAT else ''}"
                             f"number of seconds, got {raw!r}")
    return value


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the database connection is gone or refused:
    worth retrying, unlike bad data or a missing row."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return "no such " not in str(exc.orig)  # SQLite's "no such table" is no outage
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


# RDBStorage entry points, including the private ones _CachedStorage calls. Not
# record_heartbeat: the heartbeat thread just beats again at its next interval.
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_all_trials", "_get_trials", "get_best_trial", "_get_best_trial_id",
    "_get_stale_trial_ids",
)


class _RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, riding out a database restart: a call whose connection is gone
    or refused is retried (``pool_pre_ping`` hands it a fresh connection) for up to
    ``retry_s`` seconds, then raises ``StorageLostError`` naming host and port."""

    def __init__(self, url: str, *, where: str, retry_s: float, password: Optional[str],
                 **kwargs) -> None:
        self.where, self.retry_s, self._password = where, retry_s, password
        super().__init__(url, **kwargs)
        _serialize_sqlite(self.engine)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _serialize_sqlite(self.engine)

    _local = threading.local()  # retry only at the outermost call (entry points nest)
    _warned_at = 0.0


def _serialize_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make a SQLite file safe for several worker processes. SQLite ignores the
    ``SELECT ... FOR UPDATE`` that Optuna's read-then-write steps rely on, so two workers
    could take the same queued trial, or both fail a stale one and queue it twice.
    ``BEGIN IMMEDIATE`` takes the write lock when a transaction starts: they run one at a
    time (the SQLAlchemy recipe for pysqlite transactions)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite would BEGIN lazily (deferred) itself

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the schema predate the hooks


def _retrying(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: _RetryingRDBStorage, *args, **kwargs):
        if getattr(self._local, "busy", False):
            return method(self, *args, **kwargs)
        self._local.busy = True
        try:
            give_up, pause = None, 0.25
            while True:
                try:
                    return method(self, *args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - sorted by _connection_lost
                    if not _connection_lost(exc):
                        raise
                    now = time.monotonic()
                    give_up = give_up or now + self.retry_s
                    if now >= give_up:
                        raise StorageLostError(
                            f"lost the storage at {self.where} for {self.retry_s:.0f}s: "
                            f"{_first_line(exc, self._password)}; finished trials are kept: "
                            "start the worker again once the database is back") from None
                    if now - _RetryingRDBStorage._warned_at > 10:
                        _RetryingRDBStorage._warned_at = now
                        _log.warning("autobatch: storage at %s unreachable (%s); retrying for up to %.0fs",
                                     self.where, _first_line(exc, self._password), self.retry_s)
                    time.sleep(min(pause, give_up - now))
                    pause = min(2 * pause, 2.0)
        finally:
            self._local.busy = False

    return call


for _name in _RETRIED:
    setattr(_RetryingRDBStorage, _name, _retrying(_name))
