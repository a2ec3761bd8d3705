"""Reusing the stored answer: what it was fitted to, and whether that still holds.

``tune`` and the dashboard store the latest ``Recommendation`` with the study
(``records.STUDY_RECOMMENDATION``) and beside it its key (``records.STUDY_RECOMMENDATION_KEY``):

- ``question``: the priority and the constraints it answers (sizes in bytes, times in seconds);
- ``study``: the study's storage id and name;
- ``trials``: the count and the largest number of its COMPLETE and PRUNED trials, the only ones
  the fit reads (``records.read_trials``); a finished trial never changes and none is deleted, so
  these name the set;
- ``attrs``: a SHA-256 of the study's user attributes, all but those that are not inputs of the
  fit (``NOT_INPUTS``: the answer itself, its key, the budget's deadline and trial count);
- ``code``: autobatch's version, a SHA-256 of its source, and the versions of the numeric
  libraries the fit runs on (``LIBRARIES``);
- ``answer``: a SHA-256 of the stored answer, so an answer written without its key (an older
  autobatch, or a writer that stopped between the two writes) is never taken for the keyed one.

``stored_answer`` returns the stored answer when the key taken now is the same in every part:
one read of the study's attributes and one aggregate query of its trials (``storage.trial_marks``),
no fit and no scikit-learn. Anything missing, different or unreadable gives None: the caller fits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from typing import Any, Optional

import optuna

from .. import records as R
from .._optuna_internals import backend, study_id
from ..errors import AutobatchError
from ..storage import trial_marks
from ._recommendation import Recommendation

KEY_VERSION = 1     # the key's own layout
NOT_INPUTS = (R.STUDY_RECOMMENDATION, R.STUDY_RECOMMENDATION_KEY, R.STUDY_DEADLINE, R.STUDY_MAX_TRIALS)
LIBRARIES = ("numpy", "scipy", "scikit-learn", "pandas", "optuna")


def key_of(study: optuna.Study, asked_: dict[str, Any],
           attrs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The key of ``study``'s answer to the question ``asked_`` (``question``) as the study is
    now, without the answer's digest (``publish`` adds it). Take it before the fit whose answer
    it will key: a trial finishing in between then makes the key stale, never the answer.
    ``attrs``: the study's user attributes when already read."""
    attrs = study.user_attrs if attrs is None else attrs
    inputs = {k: v for k, v in attrs.items() if k not in NOT_INPUTS}
    return {"version": KEY_VERSION, "question": dict(asked_), "study": [study_id(study), study.study_name],
            "trials": trial_marks(backend(study), study_id(study)), "attrs": digest(inputs),
            "code": code_identity()}


def keyed(key: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """``key`` with the digest of the stored form of ``answer`` (``Recommendation.to_dict()``)."""
    return {**key, "answer": digest(answer)}


def stored_answer(study: optuna.Study, asked_: dict[str, Any]) -> Optional[Recommendation]:
    """The study's stored answer when its key says it answers ``asked_`` (``question``) of the
    study as it is now, with this code; None otherwise (then fit)."""
    attrs = study.user_attrs
    key, answer = attrs.get(R.STUDY_RECOMMENDATION_KEY), attrs.get(R.STUDY_RECOMMENDATION)
    if not isinstance(key, dict) or not isinstance(answer, dict) or key.get("question") != asked_:
        return None
    if key != keyed(key_of(study, asked_, attrs), answer):
        return None
    try:
        return Recommendation.from_dict(answer)
    except (AutobatchError, TypeError, ValueError, KeyError):  # a stored form this code cannot read
        return None


def digest(value: Any) -> str:
    """SHA-256 of ``value``'s JSON as a storage returns it (keys sorted; tuples are lists)."""
    text = json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=None)
@functools.lru_cache(maxsize=1)
def code_identity() -> str:
    """autobatch's version and a SHA-256 of its source files, then ``LIBRARIES``' versions
    (package metadata: nothing is imported). Once per process: the code running is the code
    that was loaded, whatever the files say later."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    root = pathlib.Path(__file__).resolve().parent.parent
    source = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        source.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} ?")
    return f"autobatch {__version__} {source.hexdigest()[:16]}; " + ", ".join(versions)
