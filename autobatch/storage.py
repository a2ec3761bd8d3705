"""Storage URLs: where studies live, how they are opened, and how URLs are shown.

``None`` means ``$AUTOBATCH_STORAGE`` if set, else an embedded SQLite file. A password is
never shown: ``mask_url`` is what every message uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from .errors import AutobatchError, NoStudiesError

ENV_STORAGE = "AUTOBATCH_STORAGE"
DEFAULT_SQLITE = Path("autobatch-studies") / "autobatch.db"
ENV_HEARTBEAT = "AUTOBATCH_HEARTBEAT_S"
# A worker records a heartbeat every HEARTBEAT_S; a RUNNING trial without one for
# GRACE_FACTOR beats is failed and its configuration re-queued.
HEARTBEAT_S, GRACE_FACTOR = 10, 3


def resolve_url(url: Optional[str]) -> str:
    """``--storage`` or ``$AUTOBATCH_STORAGE`` or the embedded SQLite default.

    ``postgresql://`` means psycopg2 (the driver autobatch installs): SQLAlchemy 2.1 would
    otherwise pick psycopg 3."""
    url = url or os.environ.get(ENV_STORAGE)
    if not url:
        return f"sqlite:///{DEFAULT_SQLITE.resolve()}"
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: show only its scheme
        return url.split("://", 1)[0] + "://***"


def open_storage(url: Optional[str], *, create_tables: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``, with user errors raised as ``AutobatchError``.

    Connections are checked before use (``pool_pre_ping``), so a database restart costs a
    reconnect, not a crash. Heartbeats are on. ``create_tables=False`` is for workers: only
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
    from .search import requeue

    engine_kwargs = {"pool_pre_ping": True}
    if not parsed.drivername.startswith("sqlite"):
        engine_kwargs["pool_recycle"] = 300
    beat = int(os.environ.get(ENV_HEARTBEAT, HEARTBEAT_S))
    try:
        return optuna.storages.RDBStorage(
            _encode_password(url), engine_kwargs=engine_kwargs,
            heartbeat_interval=beat, grace_period=GRACE_FACTOR * beat,
            heartbeat_stale_trial_callback=requeue, skip_table_creation=not create_tables)
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
    where = f"{parsed.host}:{parsed.port or 5432}" if parsed.host else mask_url(url)
    return AutobatchError(f"cannot reach the storage at {where}: {_first_line(exc)}")


def _encode_password(url: str) -> str:
    """Percent-encode the password: Optuna formats the URL as a template, so a ``{`` or
    ``}`` in a password would otherwise break it."""
    parsed = make_url(url)
    if parsed.password and any(c in parsed.password for c in "{}"):
        encoded = parsed.password.replace("{", "%7B").replace("}", "%7D")
        return parsed.set(password=encoded).render_as_string(hide_password=False)
    return url


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
