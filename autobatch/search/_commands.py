"""Commands printed for the user to run next: resume a study, run a worker on it, open its
dashboard. Each is runnable as printed, and none prints a storage password.

``storage`` is the URL as the user gave it (the driver spelled as they spelled it); ``None``
means ``$AUTOBATCH_STORAGE`` (then no ``--storage`` is needed) or the default SQLite file (then
named, so the command works from another directory). A URL with a password becomes
``"$AUTOBATCH_STORAGE"`` when that variable holds it; otherwise ``resume_command`` shows the
password as ``***`` for the user to put back, and the worker and dashboard commands leave it out
(libpq then reads it from ``$PGPASSWORD`` or ``~/.pgpass``: ``password_note`` says so).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Optional

from sqlalchemy.engine import URL, make_url

from ..storage import DEFAULT_SQLITE, ENV_STORAGE
from ._spec import StudySpec


def _secret_url(storage: str) -> Optional[URL]:
    """The parsed URL when it holds a password, else None (also for what sqlalchemy cannot read)."""
    try:
        url = make_url(storage)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy reads: quoted as given
        return None
    return url if url.password is not None else None


def _storage_args(storage: Optional[str], *, masked: bool) -> list[str]:
    """``["--storage", VALUE]`` (shell-quoted), or ``[]`` when ``$AUTOBATCH_STORAGE`` holds it;
    see the module docstring for passwords (``masked``: ``***``, else left out)."""
    if storage is None and not os.environ.get(ENV_STORAGE):
        storage = f"sqlite:///{DEFAULT_SQLITE.resolve()}"
    if storage is None:
        return []
    url = _secret_url(storage)
    if url is None:
        shown = shlex.quote(storage)
    elif os.environ.get(ENV_STORAGE) == storage:  # the environment holds it: name the variable
        shown = '"$AUTOBATCH_STORAGE"'
    elif masked:  # the password masked: the user puts theirs back (or sets $AUTOBATCH_STORAGE)
        shown = shlex.quote(url.render_as_string(hide_password=True))
    else:
        bare = URL.create(url.drivername, username=url.username, host=url.host, port=url.port,
                          database=url.database, query=url.query)  # url.set(password=None) keeps it
        shown = shlex.quote(bare.render_as_string(hide_password=False))
    return ["--storage", shown]


def password_note(storage: Optional[str]) -> Optional[str]:
    """What to say when ``worker_command`` and ``dashboard_command`` left the password out of
    ``storage``; None when they did not."""
    if storage is None or _secret_url(storage) is None or os.environ.get(ENV_STORAGE) == storage:
        return None
    return (f"the password is not printed: the database driver reads it from $PGPASSWORD or ~/.pgpass; or set "
            f"{ENV_STORAGE} to the whole URL and leave out --storage")


def resume_command(study_name: str, storage: Optional[str], *options: str) -> str:
    """The command that resumes the study (its model, dataset, space and recipe are the stored
    ones), with ``options`` such as ``--n-trials 20``; a password shows as ``***``."""
    parts = ["autobatch", "tune", "--study-name", shlex.quote(study_name), *_storage_args(storage, masked=True)]
    return " ".join([*parts, *options])


def worker_command(study_name: str, storage: Optional[str], spec: StudySpec,
                   data_dir: Optional[Path] = None) -> str:
    """The command that runs a worker on the study, on this machine or another: allowed the code
    and data paths the study names (``--allow-import``), given ``data_dir``; no password."""
    parts = ["autobatch", "worker", "--study-name", shlex.quote(study_name), *_storage_args(storage, masked=False)]
    for _, path in spec.code_paths():
        parts += ["--allow-import", shlex.quote(path)]
    if data_dir is not None:
        parts += ["--data-dir", shlex.quote(str(data_dir))]
    return " ".join(parts)


def dashboard_command(storage: Optional[str]) -> str:
    """The command that opens optuna-dashboard on the storage; no password."""
    return " ".join(["autobatch", "dashboard", *_storage_args(storage, masked=False)])
