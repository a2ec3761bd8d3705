"""Storage URLs: which storage a command means, and how a URL is shown (never a password).

``None`` means ``$AUTOBATCH_STORAGE`` if set, else an embedded SQLite file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import optuna
from sqlalchemy.engine import make_url

ENV_STORAGE = "AUTOBATCH_STORAGE"
DEFAULT_SQLITE = Path("autobatch-studies") / "autobatch.db"


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
