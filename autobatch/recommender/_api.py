"""``recommend``: the recommended setting of a stored study, from its trials alone (no
training, a few seconds at most); ``publish`` stores it with the study, keyed so that
``recommend`` can return it unfitted while the study is unchanged (``_stored``).

Light at import: the fit (``_answer``, with scikit-learn, SciPy and pandas) is imported when an
answer has to be fitted."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, Union

import optuna

from .. import records as R
from ..errors import AutobatchError
from ..records import read_trials
from ..search import StudySpec, resume_command
from ..storage import StudyLike, open_study
from ..storage import describe as describe_storage
from ._recommendation import Recommendation
from ._question import asked, check_priority, question
from ._stored import key_of, keyed, stored_answer

if TYPE_CHECKING:
    import pandas as pd


def trials_frame(study: optuna.Study) -> "pd.DataFrame":
    """The study's finished trials as a table (``records.read_trials``), lr multipliers derived
    with the study's own scaling rule where a trial did not record one."""
    spec_data = study.user_attrs.get(R.STUDY_SPEC)
    space = StudySpec.from_dict(spec_data).space if spec_data else None
    return read_trials(study, space.multiplier_for if space else None)


def recommend(study_name: Optional[str] = None, storage: StudyLike = None, *,
              max_memory: Union[int, str, None] = None,
              max_epoch_time: Union[float, str, None] = None,
              min_accuracy: Optional[float] = None, priority: str = "balanced") -> Recommendation:
    """The recommended setting of a stored study. Reads trials only; never trains.

    ``storage`` is a URL (None: ``$AUTOBATCH_STORAGE``, else the embedded SQLite file), an open
    Optuna storage, or the ``optuna.Study`` itself (then ``study_name`` may be omitted). The
    answer ``tune`` stored is returned as it is when it answers the same priority and
    constraints of the study as it is now, with this code (``_stored``: the same as a fit, without
    it); otherwise it is fitted (``recommend_study``). Raises ``AutobatchError`` when there is no
    such study, too few completed trials, or no setting meets the constraints."""
    check_priority(priority)
    study = open_study(storage, study_name, read_only=True)
    try:
        reused = stored_answer(study, question(max_memory=max_memory, max_epoch_time=max_epoch_time,
                                               min_accuracy=min_accuracy, priority=priority))
    except (AutobatchError, TypeError, ValueError):  # a constraint that does not parse: the fit says so
        reused = None
    if reused is not None:
        return reused
    return recommend_study(study, max_memory=max_memory, max_epoch_time=max_epoch_time,
                           min_accuracy=min_accuracy, priority=priority)


def recommend_study(study: optuna.Study, *, max_memory: Union[int, str, None] = None,
                    max_epoch_time: Union[float, str, None] = None,
                    min_accuracy: Optional[float] = None, priority: str = "balanced",
                    storage: Optional[str] = None) -> Recommendation:
    """``recommend`` for an open study. ``storage``: its URL as the user gave it, for the
    command an error names (default: where the study is, password left to the environment)."""
    from ._answer import MIN_TRIALS, recommend_from_frame
    from ._critical import critical_batch
    from ._fit import verification_observations, verification_repeats

    check_priority(priority)
    attrs = study.user_attrs  # one read: each ``study.user_attrs`` is a storage call
    spec_data = attrs.get(R.STUDY_SPEC)
    if not spec_data:
        raise AutobatchError(f"study {study.study_name!r} has no {R.STUDY_SPEC!r} attribute; "
                             "was it created by autobatch tune?")
    spec = StudySpec.from_dict(spec_data)
    df = read_trials(study, spec.space.multiplier_for)
    more = resume_command(study.study_name, storage or describe_storage(study), "--n-trials",
                          str(len(df) + 2 * MIN_TRIALS))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    noise = critical_batch(attrs.get(R.STUDY_NOISE_SCALE),
                           [t.user_attrs.get(R.NOISE_SCALE) for t in study.get_trials(deepcopy=False, states=states)])
    stored = attrs.get(R.STUDY_VERIFICATION)
    rec = recommend_from_frame(
        df, spec, attrs.get(R.STUDY_MEMORY_MODEL), study_name=study.study_name,
        max_memory=max_memory, max_epoch_time=max_epoch_time, min_accuracy=min_accuracy,
        priority=priority, more_trials=more, critical=noise, extra_repeats=verification_repeats(stored),
        observations=verification_observations(stored))
    return with_stored_verification(rec, stored)


def same_setting(rec: Recommendation, stored: dict) -> bool:
    """True when ``stored`` (``records.STUDY_VERIFICATION``) re-trained ``rec``'s setting."""
    return (stored.get("batch_size") == rec.batch_size and stored.get("accumulation_steps") == rec.accumulation_steps
            and abs(float(stored.get("lr_multiplier") or 0) / rec.lr_multiplier - 1) < 1e-6)


def with_stored_verification(rec: Recommendation, stored: Optional[dict]) -> Recommendation:
    """``rec`` with the study's stored verification when it re-trained this very setting: the
    measurement beside the prediction it was checked against (the one made before it ran; the
    verification runs are repeats in today's fit), and the settings whose verification
    contradicted them before a re-rank chose this one (``reranked_from``). A re-ranked answer
    that could not be verified gets those and the stored reason (``stored["answer"]``)."""
    if not stored:
        return rec
    reranked = tuple(dict(r) for r in stored.get("reranked_from") or ())
    answer = stored.get("answer")
    if answer and same_setting(rec, answer) and not (stored.get("values") and same_setting(rec, stored)):
        return dataclasses.replace(rec, reranked_from=reranked, verification_note=answer.get("note"))
    if not stored.get("values") or not same_setting(rec, stored):
        return rec
    values, held = stored["values"], stored.get("holdout_values") or []
    interval = tuple(stored["metric_interval"]) if stored.get("metric_interval") else rec.metric_interval
    accuracy = ({"predicted_accuracy": stored["predicted_metric"], "accuracy_interval": interval}
                if rec.predicted_accuracy is not None else {})
    return dataclasses.replace(
        rec, predicted_metric=stored["predicted_metric"], metric_interval=interval, **accuracy,
        verified_metric=sum(values) / len(values), verified_values=tuple(values),
        verified_seeds=tuple(stored.get("seeds") or ()), verification_verdict=stored.get("verdict"),
        verification_note=stored.get("note"), verified_holdout_metric=sum(held) / len(held) if held else None,
        verified_holdout_samples=stored.get("holdout_samples") or None, reranked_from=reranked)


def publish(study: optuna.Study, rec: Recommendation, key: Optional[dict] = None) -> None:
    """Store ``rec`` as the study's ``recommendation`` attribute and its optuna-dashboard note.
    ``key``: ``answer_key`` of the question ``rec`` answers, taken before the fit that gave it,
    when ``rec`` is exactly what ``recommend_study`` answers to it (``confirmed_key``); then
    ``recommend`` returns ``rec`` unfitted while the key holds. None: the next one fits."""
    from optuna_dashboard import save_note  # only needed here

    answer = rec.to_dict()
    study.set_user_attr(R.STUDY_RECOMMENDATION, answer)
    study.set_user_attr(R.STUDY_RECOMMENDATION_KEY, None if key is None else keyed(key, answer))
    save_note(study, rec.markdown())


def answer_key(study: optuna.Study, *, max_memory: Union[int, str, None] = None,
               max_epoch_time: Union[float, str, None] = None, min_accuracy: Optional[float] = None,
               priority: str = "balanced") -> dict:
    """The key (``_stored``) of ``study``'s answer to this question as the study is now: take it
    before the fit whose answer ``publish`` will store with it (a trial finishing in between
    then makes the key stale, never the answer). Raises ``AutobatchError`` for a constraint
    that does not parse."""
    return key_of(study, question(max_memory=max_memory, max_epoch_time=max_epoch_time,
                                  min_accuracy=min_accuracy, priority=priority))


def confirmed_key(study: optuna.Study, rec: Recommendation, fitted: Recommendation, key: dict) -> Optional[dict]:
    """The key to ``publish`` ``rec`` with: ``rec`` is what ``tune`` made of ``fitted`` (the
    answer ``recommend_study`` gave to ``key``'s question, ``key`` taken before that fit), e.g. by
    verifying it. Returns the key of the study as it is now when ``rec`` is still exactly the
    fitted answer (nothing changed: no refit) or a fit now gives exactly ``rec`` (a verification
    the fit already reads back: one refit); None when neither."""
    now = key_of(study, key["question"])
    if now == key:  # the study as fitted: the fit is deterministic, a refit gives ``fitted`` again
        return now if rec.to_dict() == fitted.to_dict() else None
    return now if recommend_study(study, **asked(key["question"])).to_dict() == rec.to_dict() else None
