"""SQLite files: opened without being created, read-only when only read, and in WAL mode.

A study file is created only by ``tune``; every other command needs it to exist and says where
it looked. Writers use write-ahead logging with ``synchronous=NORMAL``: a commit is an append to
the log, not an fsync of the database (about 15 ms -> 0.01 ms a commit on this machine), and
readers never block the writer. Durability: a power cut can lose the last commits, never corrupt
the file (https://www.sqlite.org/wal.html). Readers open the file with ``mode=ro``; a WAL file
with no writer attached is opened ``immutable`` so that reading creates no ``-wal``/``-shm``
files beside it. Which of the two is decided afresh for every connection, and a reader keeps no
connection between calls: an ``immutable`` connection sees neither a writer's log nor its
locks, so one kept open after a writer attached would read stale pages, or pages a checkpoint
is rewriting under it.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path
from typing import Optional

import sqlalchemy
import sqlalchemy.event
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from ..errors import AutobatchError, NoStudiesError

BUSY_TIMEOUT_S = 30  # workers queue for SQLite's one writer
_HEADER = b"SQLite format 3\x00"


def sqlite_path(parsed: sqlalchemy.engine.URL) -> Optional[Path]:
    """The database file of a ``sqlite:///PATH`` URL; None for other URLs and in-memory ones."""
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    database = parsed.database
    if database.startswith("file:"):  # a URI filename (sqlite:///file:PATH?uri=true)
        database = urllib.parse.unquote(urllib.parse.urlsplit(database).path)
    return Path(database)


def check_file(path: Path, shown: str, *, create: bool) -> None:
    """Make sure ``path`` is there to be opened. ``create``: its folder is made (``tune``);
    otherwise a missing file is ``NoStudiesError`` naming where it was looked for, and nothing
    is created. A file that is not SQLite is an ``AutobatchError``."""
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AutobatchError(f"cannot create the folder {path.parent} for the study file: {exc.strerror}; "
                                 "choose a --storage path in a folder that can be made or written") from None
    elif not path.is_file():
        raise NoStudiesError(f"no autobatch studies in {shown} (no such file); create one with autobatch tune "
                             "(or tune --create-only)")
    if path.is_file() and path.stat().st_size > 0:
        try:
            with path.open("rb") as handle:
                header = handle.read(len(_HEADER))
        except OSError as exc:
            raise AutobatchError(f"cannot read {path}: {exc.strerror}") from None
        if header != _HEADER:
            raise AutobatchError(f"{path} is not an SQLite database (is it a study file?); "
                                 "pass --storage with the right file, or move it away to start afresh")


def is_wal(path: Path) -> bool:
    """Whether the file is in WAL mode (header bytes 18-19 are 2: https://www.sqlite.org/fileformat.html)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2


def read_only_url(path: Path) -> str:
    """A URL that opens ``path`` without writing to it or beside it. A WAL file whose writer is
    attached (its ``-wal`` exists) is read through the log (``mode=ro``); one with no writer
    is read as the immutable file it is for now (``mode=ro`` would leave ``-wal`` and ``-shm``
    files behind)."""
    quoted = urllib.parse.quote(str(path.resolve()))
    wal_attached = Path(f"{path}-wal").exists()
    flags = "immutable=1" if is_wal(path) and not wal_attached else "mode=ro"
    return f"sqlite:///file:{quoted}?{flags}&uri=true"


def read_only_engine_kwargs(path: Path, timeout_s: float) -> dict:
    """``sqlalchemy.create_engine`` arguments that read ``path`` through ``read_only_url``,
    chosen when each connection opens, with no connection pooled between calls
    (``NullPool``): each storage call sees the file as it is when the call starts, whether or
    not a writer attached since the study was opened."""
    import sqlalchemy.pool

    def connect() -> sqlite3.Connection:
        uri = read_only_url(path).removeprefix("sqlite:///")
        return sqlite3.connect(uri.removesuffix("&uri=true"), uri=True, timeout=timeout_s, check_same_thread=False)

    return {"creator": connect, "poolclass": sqlalchemy.pool.NullPool}


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


@retry(retry=retry_if_exception(_locked), stop=stop_after_delay(BUSY_TIMEOUT_S), wait=wait_random(0.02, 0.2),
       reraise=True)
def enable_wal(path: Path) -> None:
    """Put the file in WAL mode (persistent: stored in the file). A file another process holds
    locked is retried for up to ``BUSY_TIMEOUT_S``."""
    if is_wal(path):
        return
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def configure_engine(engine: sqlalchemy.engine.Engine, *, read_only: bool) -> None:
    """Connection settings for a SQLite engine, on every new connection.

    Writers: ``synchronous=NORMAL`` (WAL's safe setting) and ``BEGIN IMMEDIATE``: SQLite ignores
    the ``SELECT ... FOR UPDATE`` that Optuna's read-then-write steps rely on, so two workers
    could take the same queued trial, or both fail a stale one and queue it twice; taking the
    write lock when a transaction starts runs them one at a time (SQLAlchemy's recipe for
    pysqlite transactions). Readers need neither."""
    if read_only:
        return

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite would BEGIN lazily (deferred) itself
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the schema predate the hooks


def absent_parts(path: Path) -> list[Path]:
    """What creating ``path`` would make: the file and each missing folder above it, the
    file first and the outermost folder last (the order to remove them in)."""
    parts, current = [], path.resolve()
    while not current.exists():
        parts.append(current)
        if current.parent == current:
            break
        current = current.parent
    return parts


def remove_if_no_studies(parts: list[Path]) -> bool:
    """Remove the study file ``parts[0]`` (with its ``-wal``/``-shm``) and the folders after it
    that this process created, when the file holds no study: a ``tune`` stopped by a user
    error before creating its study leaves nothing behind. A file holding a study (another
    process's, or this one's) is kept, and so is a folder that is not empty. Returns whether
    the file was removed."""
    if not parts or not parts[0].is_file():
        return False
    try:
        connection = sqlite3.connect(f"file:{urllib.parse.quote(str(parts[0]))}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_S)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "studies" in tables and connection.execute("SELECT count(*) FROM studies").fetchone()[0]:
                return False
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    try:
        for suffix in ("-wal", "-shm", ""):
            Path(f"{parts[0]}{suffix}").unlink(missing_ok=True)
    except OSError:  # never raised over the error that stopped the run
        return False
    for folder in parts[1:]:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: keep what is there
            break
    return True
