"""``recommend_from_frame``: the recommendation fitted to a trials table (``trials_frame``), pure
and deterministic; ``recommend_study`` calls it when no stored answer can be reused. It loads
the fitting stack (scikit-learn, SciPy, pandas), which ``_api`` leaves for when it is needed."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import pandas as pd

from ..errors import AutobatchError
from ..search import StudySpec
from ..units import parse_bytes, parse_duration
from ._choice import (apply_constraints, candidates, describe, metric_interval, pareto_front, picks, rationale,
                      speed_tolerance, supported, time_to_target)
from ._confidence import confidence_note
from ._critical import goodput_pick
from ._fit import accuracy_rows, fit_tradeoff, metric_sign
from ._question import check_priority
from ._recommendation import Recommendation

MIN_TRIALS = 4            # completed trials needed: three inputs and one to spare
RANDOM_STATE = 0


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
    check_priority(priority)
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
    # Candidates need local support, and lrs inside the range trials tested: the accuracy
    # model is not trusted to extrapolate into a corner no completed trial has seen (there it
    # once predicted 110%, and an untested lr edge re-trained 22.8 points worse than predicted).
    tested = completed["lr_multiplier"].to_numpy(dtype=float)
    grid = candidates(fit, spec, (float(tested.min()), float(tested.max())))
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
            space_multiplier=(spec.space.lr_multiplier_min, spec.space.lr_multiplier_max),
            train_size=spec.train_size or None))


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
