"""The RDB storage autobatch opens: heartbeats on, user errors as one line, and a database
restart ridden out by retrying (``open_storage``)."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import warnings
from typing import Optional

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url
from tenacity import (RetryError, Retrying, retry, retry_if_exception, stop_after_attempt, stop_after_delay,
                      wait_exponential, wait_random)

from .._optuna_internals import install_quick_schema_check
from ..errors import AutobatchError, NoStudiesError
from ..records import finish_in_rdb, write_in_rdb
from ._claim import Claim, StudyState, claim_in_rdb, study_state_in_rdb
from ._sqlite import (BUSY_TIMEOUT_S, check_file, configure_engine, enable_wal, read_only_engine_kwargs, read_only_url,
                      sqlite_path)
from ._reads import read_trials_in_rdb
from ._stale import requeue
from ._writes import write_trial_in_rdb
from ._urls import _encode_password, _first_line, _where, check_target, driver_url, mask_url, resolve_url

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


def open_storage(url: Optional[str], *, create_tables: bool = True,
                 read_only: bool = False) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``, with user errors raised as ``AutobatchError``.

    Three ways in: ``create_tables=True`` (``tune``) may create the SQLite file, its folder and
    the schema; ``create_tables=False`` (workers, the dashboard) needs them to exist and
    creates nothing; ``read_only=True`` (``recommend``, ``report``) also never writes: SQLite
    is opened ``mode=ro``, PostgreSQL sessions are ``default_transaction_read_only``. A missing
    file or schema is ``NoStudiesError`` naming where it looked.

    Connections are not pinged before use (a round trip per checkout): a call whose connection
    turns out dead, or made while the database is down, is retried for up to ``$AUTOBATCH_DB_RETRY_S`` (60 s), so a database restart costs
    a pause, not a crash. Heartbeats are on (``$AUTOBATCH_HEARTBEAT_S``, 10 s). Processes that
    start together and race to create the schema retry until one has made it."""
    shown = mask_url(resolve_url(url))
    url = driver_url(resolve_url(url))
    try:
        parsed = make_url(url)
    except Exception:
        raise AutobatchError(f"malformed storage URL {shown!r}: use sqlite:///PATH (three slashes, then the "
                             "path) or postgresql://USER@HOST/DB") from None
    check_target(parsed, shown)
    create = create_tables and not read_only
    path = sqlite_path(parsed)
    target = url
    # Optuna pings every checkout on MySQL only; a dead connection fails its first statement
    # instead, and the retry (_retrying) runs the whole call again on a fresh one.
    engine_kwargs: dict = {"pool_pre_ping": False}
    if path is not None:
        check_file(path, shown, create=create)
        if not read_only and not os.access(path if path.exists() else path.parent, os.W_OK):
            raise AutobatchError(f"SQLite storage {path} is not writable; pass --storage")
        if read_only:
            target = read_only_url(path)
            engine_kwargs.update(read_only_engine_kwargs(path, BUSY_TIMEOUT_S))
        else:
            engine_kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_recycle"] = 300
        if parsed.drivername.startswith("postgresql"):
            connect_args = {}
            if "connect_timeout" not in parsed.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
            if read_only:
                connect_args["options"] = "-c default_transaction_read_only=on"
            engine_kwargs["connect_args"] = connect_args
    beat = _positive_env(ENV_HEARTBEAT, HEARTBEAT_S)
    install_quick_schema_check()  # the schema's version read in one query, not through alembic
    try:
        if path is not None and create:
            enable_wal(path)
        return _create(_encode_password(target), engine_kwargs=engine_kwargs,
                       heartbeat_interval=int(beat), grace_period=int(GRACE_FACTOR * beat),
                       heartbeat_stale_trial_callback=requeue, skip_table_creation=not create,
                       where=_where(parsed, url), retry_s=_positive_env(ENV_RETRY, RETRY_S),
                       password=parsed.password, read_only=read_only, shown=shown)
    except optuna.exceptions.StorageInternalError as exc:
        cause = exc.__cause__ or exc
        if _no_schema(cause):
            # Only tune creates the schema: nothing was ever created here.
            raise NoStudiesError(f"no autobatch studies in {shown} yet; create one with "
                                 "autobatch tune (or tune --create-only)") from None
        raise _unreachable(parsed, url, cause) from None
    except ImportError as exc:
        raise AutobatchError(_missing_driver(parsed, exc)) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise AutobatchError(f"unknown storage URL scheme {parsed.drivername!r} in {shown}; use "
                             "postgresql://USER@HOST/DB or sqlite:///PATH") from None
    except (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.ArgumentError, sqlite3.Error) as exc:
        if _no_schema(exc):
            raise NoStudiesError(f"no autobatch studies in {shown} yet; create one with "
                                 "autobatch tune (or tune --create-only)") from None
        raise _unreachable(parsed, url, exc) from None


def _no_schema(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc)
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def _schema_race(exc: BaseException) -> bool:
    """Two processes creating the schema at once: one of them loses with a duplicate."""
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    if isinstance(cause, sqlalchemy.exc.IntegrityError):
        return True
    text = str(getattr(cause, "orig", None) or cause)
    return isinstance(cause, sqlalchemy.exc.DBAPIError) and (
        "already exists" in text or "database is locked" in text or "duplicate key" in text)


@retry(retry=retry_if_exception(_schema_race), stop=stop_after_attempt(8),
       wait=wait_random(0.05, 0.5), reraise=True)
def _create(url: str, **kwargs) -> "_RetryingRDBStorage":
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _RetryingRDBStorage(url, **kwargs)


# Python package names of the drivers SQLAlchemy looks for, by the module that is missing.
_DRIVERS = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "psycopg": "'psycopg[binary]'",
            "psycopg2": "psycopg2-binary", "pg8000": "pg8000", "asyncpg": "asyncpg",
            "cx_Oracle": "cx_Oracle", "oracledb": "oracledb", "pyodbc": "pyodbc"}


def _missing_driver(parsed, exc: ImportError) -> str:
    missing = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    module = (getattr(missing, "name", None) or "").split(".")[0] or "its driver"
    package = _DRIVERS.get(module, module)
    return (f"storage URL {parsed.drivername}://... needs the Python driver {module!r}, which is not "
            f"installed: pip install {package}, or use postgresql://USER@HOST/DB or sqlite:///PATH")


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
            text = str(exc.orig)  # SQLite's "no such table" or a read-only file is no outage
            return "no such " not in text and "readonly" not in text and "read-only" not in text
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
    or refused is retried (the pool, invalidated by the failure, hands it a fresh connection) for up to
    ``retry_s`` seconds, then raises ``StorageLostError`` naming host and port.

    ``shown`` is the masked URL messages use; ``read_only`` says how it was opened."""

    def __init__(self, url: str, *, where: str, retry_s: float, password: Optional[str],
                 read_only: bool = False, shown: str = "", **kwargs) -> None:
        self.where, self.retry_s, self._password = where, retry_s, password
        self.read_only, self.shown = read_only, shown or mask_url(url)
        super().__init__(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            configure_engine(self.engine, read_only=read_only)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.engine.dialect.name == "sqlite":
            configure_engine(self.engine, read_only=self.read_only)

    # autobatch's own one-transaction steps, retried like Optuna's entry points (below).
    def claim_trial(self, study_id: int, **kwargs) -> Claim:
        return claim_in_rdb(self, study_id, **kwargs)

    def study_state(self, study_id: int, **kwargs) -> StudyState:
        return study_state_in_rdb(self, study_id, **kwargs)

    def finish_trial(self, trial_id: int, **kwargs) -> bool:
        return finish_in_rdb(self, trial_id, **kwargs)

    def write_trial_attrs(self, trial_id: int, **kwargs) -> None:
        return write_in_rdb(self, trial_id, **kwargs)

    def write_trial(self, study_id: int, trial_id: int, **kwargs) -> None:
        return write_trial_in_rdb(self, study_id, trial_id, **kwargs)

    # Optuna's reads of many trials (``get_all_trials`` and its ``_CachedStorage``'s refreshes)
    # go through this one method: the same trials from the same rows, without its ORM objects.
    def _get_trials(self, study_id: int, states, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[optuna.trial.FrozenTrial]:
        return read_trials_in_rdb(self, study_id, states, included_trial_ids, trial_id_greater_than)

    _local = threading.local()  # retry only at the outermost call (entry points nest)
    _warned_at = 0.0


_OWN = ("claim_trial", "study_state", "finish_trial", "write_trial_attrs", "write_trial")


def _retrying(name: str):
    method = _RetryingRDBStorage.__dict__.get(name) or getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: _RetryingRDBStorage, *args, **kwargs):
        if getattr(self._local, "busy", False):
            return method(self, *args, **kwargs)
        self._local.busy = True
        try:
            for attempt in Retrying(retry=retry_if_exception(_connection_lost),
                                    stop=stop_after_delay(self.retry_s),
                                    wait=wait_exponential(multiplier=0.25, max=2.0),
                                    before_sleep=lambda state: _warn(self, state.outcome.exception())):
                with attempt:
                    return method(self, *args, **kwargs)
        except RetryError as exc:
            lost = exc.last_attempt.exception()
            raise StorageLostError(
                f"lost the storage at {self.where} for {self.retry_s:.0f}s: "
                f"{_first_line(lost, self._password)}; finished trials are kept: "
                "start the worker again once the database is back") from None
        finally:
            self._local.busy = False

    return call


def _warn(storage: _RetryingRDBStorage, exc: BaseException) -> None:
    """One warning line every 10 s while the database is away."""
    now = time.monotonic()
    if now - _RetryingRDBStorage._warned_at > 10:
        _RetryingRDBStorage._warned_at = now
        _log.warning("autobatch: storage at %s unreachable (%s); retrying for up to %.0fs",
                     storage.where, _first_line(exc, storage._password), storage.retry_s)


for _name in _RETRIED + _OWN:
    setattr(_RetryingRDBStorage, _name, _retrying(_name))
