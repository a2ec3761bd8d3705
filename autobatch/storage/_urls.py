"""Storage URLs: which storage a command means, and how a URL is shown (never a password).

``None`` means ``$AUTOBATCH_STORAGE`` if set, else an embedded SQLite file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import optuna
from sqlalchemy.engine import URL, make_url

from ..errors import AutobatchError

ENV_STORAGE = "AUTOBATCH_STORAGE"
DEFAULT_SQLITE = Path("autobatch-studies") / "autobatch.db"


def resolve_url(url: Optional[str]) -> str:
    """``--storage`` (``url``) or ``$AUTOBATCH_STORAGE`` or the embedded SQLite default, as
    given: messages show it so (``driver_url`` is what is connected to). An unset or empty
    ``$AUTOBATCH_STORAGE`` means the default; an empty ``url`` (``--storage ''``) is an
    ``AutobatchError``: it names no storage, and falling back to the default would write a
    study where the user did not ask."""
    if url is not None and not url.strip():
        raise AutobatchError("--storage is empty: give sqlite:///PATH or postgresql://USER@HOST/DB, or leave "
                             f"--storage out for the embedded default ./{DEFAULT_SQLITE.as_posix()}")
    url = url or os.environ.get(ENV_STORAGE, "").strip()
    if not url:
        return f"sqlite:///{DEFAULT_SQLITE.resolve()}"
    return url


def driver_url(url: str) -> str:
    """The URL connected to: ``postgresql://`` (and ``postgres://``) means psycopg2, the driver
    autobatch's writes are tuned for; SQLAlchemy 2.1 would otherwise pick psycopg 3 (which
    vanilla Optuna uses, and which reads the same tables)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``; text that is not a URL is shown as
    typed, with whatever stands where a password would (``scheme://user:PASSWORD@``) masked."""
    try:
        parsed = make_url(url)
    except Exception:  # not a URL sqlalchemy understands
        return _masked_text(url)
    if parsed.password is not None and "@" in f"{parsed.host}{parsed.database}":
        # An unencoded "@" in a password: SQLAlchemy ends the password at the first one, and
        # the rest of it would be shown as the host.
        return _masked_text(url)
    return parsed.render_as_string(hide_password=True)


def _masked_text(text: str) -> str:
    """``text`` with what lies between the first ``:`` of its user part and its last ``@``
    replaced by ``***`` (a password may itself hold ``:``, ``/`` or ``@``: over-masking is
    the safe side)."""
    at = text.rfind("@")
    if at < 0:
        return text
    start = text.find("://") + 3 if "://" in text[:at] else 0
    colon = text.find(":", start, at)
    return text if colon < 0 else f"{text[:colon + 1]}***{text[at:]}"


def check_target(parsed: URL, shown: str) -> None:
    """Refuse URLs that would lose what is stored or write where nobody asked: an in-memory
    SQLite database (gone when the command ends; workers and later commands could never see
    it) and a PostgreSQL URL that names no database (libpq would pick one after the user's
    login name). Raises ``AutobatchError``."""
    if parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise AutobatchError(f"{shown} is an in-memory database: nothing stored there outlives the command; "
                             "use sqlite:///PATH for a file")
    if parsed.drivername.startswith("postgres") and not parsed.database:
        raise AutobatchError(f"storage URL {shown} names no database: use postgresql://USER@HOST/DB")


def _where(parsed, url: str) -> str:
    """host:port (or the masked URL): what messages name, never the password."""
    return f"{parsed.host}:{parsed.port or 5432}" if parsed.host else mask_url(url)


def _encode_password(url: str) -> str:
    """The URL as Optuna needs it: Optuna formats the URL as a template (``str.format``), so
    a ``{`` or ``}`` would break it. SQLAlchemy's rendering percent-encodes them in the user
    name and password (the driver decodes them back); any left elsewhere are doubled, which
    ``format`` turns back into one."""
    if not any(c in url for c in "{}"):
        return url
    rendered = make_url(url).render_as_string(hide_password=False)
    return rendered.replace("{", "{{").replace("}", "}}")


def _first_line(exc: BaseException, password: Optional[str] = None) -> str:
    while isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Optuna's wrapper says only "an exception is raised during the commit"
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line.replace(password, "***") if password else line  # drivers may echo connection info
