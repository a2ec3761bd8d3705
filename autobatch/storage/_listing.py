"""What a storage holds: each study's name, direction, trials by state, best value and its
stored answer, read without touching any trial's attributes (``autobatch studies``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import optuna

from .. import records as R
from ..errors import AutobatchError, NoStudiesError
from ._claim import study_state
from ._rdb import open_storage
from ._urls import mask_url, resolve_url


@dataclass(frozen=True, kw_only=True)
class StudySummary:
    """One study. ``counts``: trials by state name, lower case (``complete``, ``pruned``,
    ``fail``, ``running``, ``waiting``); ``answer``: the stored recommendation
    (``Recommendation.to_dict()``) or None; ``autobatch``: whether autobatch made it."""

    name: str
    direction: str                 # "maximize" | "minimize"
    counts: dict[str, int]
    best_value: Optional[float]
    best_number: Optional[int]
    answer: Optional[dict[str, Any]]
    autobatch: bool


def list_studies(storage: Optional[str]) -> list[StudySummary]:
    """The studies in ``storage`` (a URL; None: the default storage), by name. Opens it
    read-only; one aggregate read per study. Raises ``AutobatchError`` when the storage
    holds no studies or cannot be reached."""
    backend = _open_to_list(storage)
    rows = []
    for frozen in sorted(backend.get_all_studies(), key=lambda s: s.study_name):
        maximize = frozen.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        state = study_state(backend, backend.get_study_id_from_name(frozen.study_name), maximize=maximize, final_fail_key=R.USER_ERROR)
        rows.append(StudySummary(
            name=frozen.study_name, direction="maximize" if maximize else "minimize",
            counts={k: v for k, v in state.counts.items() if k != "fail_final"},
            best_value=state.best_value, best_number=state.best_number,
            answer=frozen.user_attrs.get(R.STUDY_RECOMMENDATION),
            autobatch=R.STUDY_SPEC in frozen.user_attrs))
    return rows


def only_study_name(storage: Optional[str], command: str) -> str:
    """The name of the one study in ``storage``, for a command given no ``--study-name``.
    Raises ``AutobatchError`` when the storage holds none, or several (naming them)."""
    names = sorted(optuna.get_all_study_names(_open_to_list(storage)))
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise AutobatchError(f"{command} needs --study-name: {mask_url(resolve_url(storage))} holds "
                         f"{len(names)} studies ({shown})" if names else
                         f"no studies in {mask_url(resolve_url(storage))} yet; create one with autobatch tune, "
                         "or pass --storage")


def _open_to_list(storage: Optional[str]) -> optuna.storages.RDBStorage:
    url = resolve_url(storage)
    try:
        return open_storage(url, create_tables=False, read_only=True)
    except NoStudiesError:
        raise AutobatchError(f"no studies in {mask_url(url)} yet; create one with autobatch tune, "
                             "or pass --storage") from None
