"""The one door to a study: ``open_study`` turns ``None | URL | BaseStorage | Study`` and a name
into an open ``optuna.Study`` (as Optuna's ``get_storage`` does for storages). Open once, then
pass the open object down."""

from __future__ import annotations

from typing import Optional, Union

import optuna
import sqlalchemy.exc

from .._optuna_internals import backend
from ..errors import AutobatchError, NoStudiesError
from ._rdb import open_storage
from ._urls import mask_url, resolve_url

StudyLike = Union[None, str, optuna.storages.BaseStorage, optuna.Study]


def describe(storage: StudyLike) -> str:
    """Where ``storage`` (or the study) is, for messages: the masked URL (never a password)."""
    if isinstance(storage, optuna.Study):
        storage = backend(storage)
    if isinstance(storage, optuna.storages.BaseStorage):
        storage = getattr(storage, "_backend", storage)  # Optuna's cache around an RDB storage
        shown = getattr(storage, "shown", None)
        url = getattr(storage, "url", None)
        return shown or (mask_url(url) if url else type(storage).__name__)
    return mask_url(resolve_url(storage))


def open_study(storage: StudyLike, study_name: Optional[str] = None, *,
               read_only: bool = False) -> optuna.Study:
    """The study ``study_name`` in ``storage``; a ``Study`` is returned as it is.

    A URL is opened read-only with ``read_only=True`` (``recommend``, ``report``: SQLite
    ``mode=ro``, PostgreSQL read-only sessions); either way nothing is created: no file, no
    folder, no schema. Raises ``AutobatchError`` naming the
    storage it looked in when there is no such study (and the studies that do exist), and when
    the storage cannot be reached (see ``open_storage``)."""
    if isinstance(storage, optuna.Study):
        if study_name is not None and study_name != storage.study_name:
            raise AutobatchError(f"asked for study {study_name!r} but was given {storage.study_name!r}")
        return storage
    if not study_name:
        raise AutobatchError("a study name is needed (--study-name)")
    where = describe(storage)
    if isinstance(storage, optuna.storages.BaseStorage):
        backend_ = storage
    else:
        try:
            backend_ = open_storage(storage, create_tables=False, read_only=read_only)
        except NoStudiesError as exc:
            raise AutobatchError(f"no study named {study_name!r}: {exc}, or pass --storage (or set "
                                 "$AUTOBATCH_STORAGE) to look elsewhere") from None
    try:
        return optuna.load_study(study_name=study_name, storage=backend_)
    except KeyError:
        names = sorted(optuna.get_all_study_names(backend_))
        existing = ", ".join(names[:10]) if names else "none"
        raise AutobatchError(f"no study named {study_name!r} in {where}; "
                             f"existing studies: {existing}") from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
        raise AutobatchError(f"no study named {study_name!r} in {where}; "
                             "create it with autobatch tune") from None


def find_study(storage: optuna.storages.BaseStorage, study_name: str) -> Optional[optuna.Study]:
    """The study ``study_name`` in an open storage, or None when there is none."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
