"""A study file ``tune`` creates and then stores nothing in: removed again, with the folders it
made, so that a run stopped by a user error (an unknown model, a bad flag, a model that fails
its first step) leaves no empty database behind."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import optuna
from sqlalchemy.engine import make_url

from ._sqlite import absent_parts, remove_if_no_studies, sqlite_path
from ._urls import driver_url, resolve_url


def parts_to_create(url: Optional[str]) -> list[Path]:
    """The SQLite file (then each missing folder above it) that opening ``url`` for ``tune``
    would create; empty when the file exists, or the URL is not a SQLite file (PostgreSQL
    schemas are left alone: the database was there before)."""
    try:
        path = sqlite_path(make_url(driver_url(resolve_url(url))))
    except Exception:  # open_storage reports what is wrong with the URL
        return []
    return absent_parts(path) if path is not None else []


def discard_if_unused(storage: optuna.storages.BaseStorage, parts: list[Path]) -> bool:
    """Close ``storage`` and remove ``parts`` (``parts_to_create`` before it was opened) when
    no study was stored in the file. Returns whether it was removed."""
    if not parts:
        return False
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is not None:
        engine.dispose()  # no pooled connection keeps the file (or its -wal) open
    return remove_if_no_studies(parts)
