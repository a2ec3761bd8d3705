"""``recommend``: the recommended setting of a stored study, from its trials alone (no
training, a few seconds at most); ``publish`` stores it with the study."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import optuna
import pandas as pd

from .. import records as R
from ..errors import AutobatchError
from ..records import read_trials
from ..search import StudySpec, resume_command
from ..storage import StudyLike, open_study
from ..storage import describe as describe_storage
from ..units import parse_bytes, parse_duration
from ._choice import (apply_constraints, candidates, describe, metric_interval, pareto_front, picks, rationale,
                      speed_tolerance, supported, time_to_target)
from ._confidence import confidence_note
from ._critical import critical_batch, goodput_pick
from ._fit import accuracy_rows, fit_tradeoff, metric_sign, verification_observations, verification_repeats
from ._recommendation import Recommendation

MIN_TRIALS = 4            # completed trials needed: three inputs and one to spare
PRIORITIES = ("balanced", "accuracy", "speed")
RANDOM_STATE = 0


def trials_frame(study: optuna.Study) -> pd.DataFrame:
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
    Optuna storage, or the ``optuna.Study`` itself (then ``study_name`` may be omitted). Raises
    ``AutobatchError`` when there is no such study, too few completed trials, or no setting
    meets the constraints."""
    _check_priority(priority)
    return recommend_study(open_study(storage, study_name, read_only=True), max_memory=max_memory,
                           max_epoch_time=max_epoch_time, min_accuracy=min_accuracy, priority=priority)


def recommend_study(study: optuna.Study, *, max_memory: Union[int, str, None] = None,
                    max_epoch_time: Union[float, str, None] = None,
                    min_accuracy: Optional[float] = None, priority: str = "balanced",
                    storage: Optional[str] = None) -> Recommendation:
    """``recommend`` for an open study. ``storage``: its URL as the user gave it, for the
    command an error names (default: where the study is, password left to the environment)."""
    _check_priority(priority)
    spec_data = study.user_attrs.get(R.STUDY_SPEC)
    if not spec_data:
        raise AutobatchError(f"study {study.study_name!r} has no {R.STUDY_SPEC!r} attribute; "
                             "was it created by autobatch tune?")
    spec = StudySpec.from_dict(spec_data)
    df = read_trials(study, spec.space.multiplier_for)
    more = resume_command(study.study_name, storage or describe_storage(study), "--n-trials",
                          str(len(df) + 2 * MIN_TRIALS))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    noise = critical_batch(study.user_attrs.get(R.STUDY_NOISE_SCALE),
                           [t.user_attrs.get(R.NOISE_SCALE) for t in study.get_trials(deepcopy=False, states=states)])
    stored = study.user_attrs.get(R.STUDY_VERIFICATION)
    rec = recommend_from_frame(
        df, spec, study.user_attrs.get(R.STUDY_MEMORY_MODEL), study_name=study.study_name,
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


def publish(study: optuna.Study, rec: Recommendation) -> None:
    """Store ``rec`` as the study's ``recommendation`` attribute and its optuna-dashboard note."""
    from optuna_dashboard import save_note  # only needed here

    study.set_user_attr(R.STUDY_RECOMMENDATION, rec.to_dict())
    save_note(study, rec.markdown())


def _check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise AutobatchError(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}")


def recommend_from_frame(df: pd.DataFrame, spec: StudySpec, memory_model: Optional[dict], *,
                         study_name: str, max_memory: Union[int, str, None] = None,
                         max_epoch_time: Union[float, str, None] = None,
                         min_accuracy: Optional[float] = None,
                         priority: str = "balanced", more_trials: str = "",
                         critical: Optional[dict] = None, calibrate: bool = True,
                         extra_repeats: Sequence[tuple[tuple, float]] = (),
                         observations: Sequence[tuple[tuple, float]] = ()) -> Recommendation:
    """The recommendation for a ``trials_frame`` table: pure, deterministic. It carries the
    study's recipe and trial length (``spec``); ``min_accuracy`` applies to accuracy metrics.
    ``more_trials``: the command that runs more trials, for the error when there are too few.
    ``critical``: the study's critical batch (``recommender._critical.critical_batch``), stated
    with the answer beside the candidate of highest predicted goodput.
    ``calibrate``: the seed-noise floor in the accuracy model and the selective conformal
    interval at the chosen setting (``_calibration``), and the jackknife-widened epoch-time and
    peak intervals (``_jackknife``); False gives the models' own intervals (for benchmarks
    comparing the two; with True the models' own are in ``diagnostics["calibration"]``).
    ``extra_repeats``: runs that are not trials, for the seed-noise estimate;
    ``observations``: runs that are not trials, fitted by the metric model (``fit_tradeoff``)."""
    _check_priority(priority)
    if min_accuracy is not None and not spec.recipe.metric_is_fraction:
        raise AutobatchError(f"min_accuracy needs an accuracy metric; study {study_name!r} tunes "
                             f"{spec.recipe.metric}: drop --min-accuracy")
    cap = None if max_memory is None else parse_bytes(max_memory)
    if isinstance(max_epoch_time, str):
        max_epoch_time = parse_duration(max_epoch_time)
    if max_epoch_time is not None and not max_epoch_time > 0:
        raise AutobatchError(f"max_epoch_time must be a positive number of seconds, got {max_epoch_time}")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise AutobatchError(f"min_accuracy is a fraction in [0, 1], got {min_accuracy}")
    completed = accuracy_rows(df)
    if len(completed) < MIN_TRIALS:
        raise AutobatchError(
            f"study {study_name!r} has {len(completed)} completed trials; a recommendation needs "
            f"at least {MIN_TRIALS}: run more trials"
            + (f": {more_trials}" if more_trials else f" (autobatch tune --study-name {study_name})"))
    fit = fit_tradeoff(df, spec, memory_model, random_state=RANDOM_STATE, calibrate=calibrate,
                       extra_repeats=extra_repeats, observations=observations)
    # Candidates need local support: the accuracy model is not trusted to extrapolate into a
    # corner no completed trial has seen (there it once predicted 110%, and an untested lr
    # edge re-trained 22.8 points worse than predicted).
    grid = candidates(fit, spec)
    grid = grid[supported(grid, completed)].reset_index(drop=True)
    feasible, constraints = apply_constraints(grid, fit, cap, max_epoch_time, min_accuracy)
    front = pareto_front(feasible)
    chosen_by = picks(feasible, front, speed_tolerance(fit, feasible))
    chosen = feasible.loc[chosen_by[priority]].copy()
    diagnostics = fit.diagnostics()
    if calibrate:  # the chosen setting is the luckiest prediction: its interval is calibrated for that
        chosen["accuracy_lo"], chosen["accuracy_hi"], diagnostics["calibration"] = fit.selective_interval(chosen)
        diagnostics["calibration"].update(_model_intervals(chosen))
    best = completed.loc[(metric_sign(spec) * completed["val_metric"]).idxmax(), "number"]
    described = describe(chosen, fit)
    return Recommendation(
        study_name=study_name, batch_size=int(chosen["batch_size"]),
        learning_rate=float(chosen["learning_rate"]),
        accumulation_steps=int(chosen["accumulation_steps"]),
        effective_batch_size=int(chosen["effective_batch_size"]),
        lr_multiplier=float(chosen["lr_multiplier"]), priority=priority,
        predicted_metric=described["predicted_metric"], metric_interval=tuple(metric_interval(fit, chosen)),
        predicted_accuracy=described.get("predicted_accuracy"),
        accuracy_interval=tuple(described["accuracy_interval"]) if fit.bounded else None,
        predicted_epoch_time_s=float(chosen["epoch_time_s"]),
        epoch_time_interval=(float(chosen["epoch_time_lo"]), float(chosen["epoch_time_hi"])),
        predicted_peak_bytes=None if fit.memory is None else int(round(chosen["peak_bytes"])),
        peak_bytes_interval=None if fit.memory is None else (float(chosen["peak_lo"]),
                                                             float(chosen["peak_hi"])),
        pareto_front=tuple(describe(feasible.loc[i], fit) for i in front),
        trials=fit.trials, best_trial=int(best),
        rationale=rationale(priority, feasible, chosen_by, constraints, fit),
        constraints=constraints, time_to_target=time_to_target(completed, chosen, min_accuracy),
        diagnostics=diagnostics, recipe=spec.recipe,
        train_samples=spec.train_samples or None, train_size=spec.train_size or None,
        device=_device_type(df, fit.trials), **_critical_fields(critical, feasible, spec),
        confidence_note=confidence_note(
            completed=len(completed), effective_batches=completed["effective_batch_size"].to_numpy(dtype=float),
            multipliers=completed["lr_multiplier"].to_numpy(dtype=float), batch_size=int(chosen["batch_size"]),
            lr_multiplier=float(chosen["lr_multiplier"]),
            space_batch=(min(spec.space.batch_sizes), max(spec.space.batch_sizes)),
            space_multiplier=(spec.space.lr_multiplier_min, spec.space.lr_multiplier_max)))


def _model_intervals(chosen: pd.Series) -> dict:
    """The epoch-time and peak intervals at ``chosen`` as the models gave them, before the
    jackknife widened them (for the diagnostics and the coverage benchmark)."""
    peak = [float(chosen["peak_model_lo"]), float(chosen["peak_model_hi"])]
    return {"epoch_time_model_interval": [float(chosen["epoch_time_model_lo"]), float(chosen["epoch_time_model_hi"])],
            "peak_model_interval": None if pd.isna(chosen["peak_bytes"]) else peak}


def _critical_fields(critical: Optional[dict], feasible: pd.DataFrame, spec: StudySpec) -> dict:
    """The Recommendation's critical-batch fields (none without a critical batch)."""
    if not critical:
        return {}
    return {"critical_batch": critical["value"], "critical_batch_interval": critical["interval"],
            "critical_batch_source": critical["source"],
            "goodput_pick": goodput_pick(feasible, critical["value"], spec.train_size)}


def _device_type(df: pd.DataFrame, numbers: tuple[int, ...]) -> Optional[str]:
    """The device type (``cpu``, ``cuda``) most of the fitted trials ran on; None if unrecorded."""
    devices = df.loc[df["number"].isin(numbers), "device"].dropna().astype(str).str.split(":").str[0]
    return None if devices.empty else str(devices.mode().iloc[0])
