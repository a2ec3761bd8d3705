"""Recommend one setting from a study's stored trials: no training, a few seconds at most.

Trials become a table (``trials_frame``), the table fits the trade-off models (``tradeoff``),
every setting of the search grid is predicted, the constraints drop some, and the priority
picks one:

- ``accuracy``: the highest predicted accuracy (ties within ``TIE`` to the faster);
- ``speed``: the shortest predicted epoch among settings within ``SPEED_TOLERANCE`` (one
  accuracy point) of the best predicted accuracy;
- ``balanced``: the knee of the accuracy/epoch-time Pareto front between those two picks:
  both axes normalised to [0, 1] over that stretch of the front, the point farthest above
  the chord from the speed pick to the accuracy pick (ties to the faster; the speed pick when
  no point lies above the chord).

So the predicted epoch time of speed <= balanced <= accuracy on any data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import optuna
import pandas as pd

from . import records as R
from .budget import format_bytes, parse_bytes, parse_duration
from .errors import AutobatchError
from .spec import StudySpec
from .storage import load_existing_study
from .tradeoff import COVERAGE, TradeoffFit, accuracy_rows, fit_tradeoff

MIN_TRIALS = 4            # completed trials needed: three inputs and one to spare
PRIORITIES = ("balanced", "accuracy", "speed")
SPEED_TOLERANCE = 0.01    # accuracy the speed pick may give up, absolute
TIE = 1e-9
N_LR_MULTIPLIERS = 25
RANDOM_STATE = 0

COLUMNS = ("number", "state", "value", "batch_size", "accumulation_steps", "effective_batch_size",
           "learning_rate", "lr_multiplier", "throughput", "epoch_time_s", "measured_peak_bytes",
           "predicted_peak_bytes", "val_accuracy", "best_val_accuracy", "stop_reason", "baseline",
           "samples_seen", "curve")
_INTS = ("batch_size", "accumulation_steps", "effective_batch_size", "samples_seen")
_FLOATS = ("value", "learning_rate", "lr_multiplier", "throughput", "epoch_time_s",
           "measured_peak_bytes", "predicted_peak_bytes", "val_accuracy", "best_val_accuracy")


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per finished (COMPLETE or PRUNED) trial, the autobatch attributes as columns."""
    spec_data = study.user_attrs.get(R.STUDY_SPEC)
    space = StudySpec.from_dict(spec_data).space if spec_data else None
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    rows = [_row(t, space) for t in study.get_trials(deepcopy=False, states=states)]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in _INTS:
        df[name] = df[name].astype("Int64")
    for name in _FLOATS:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    return df.sort_values("number", ignore_index=True)


def _row(trial: optuna.trial.FrozenTrial, space: Any) -> dict[str, Any]:
    attrs, params = trial.user_attrs, trial.params
    batch = attrs.get(R.BATCH_SIZE)
    if batch is None and R.PARAM_BATCH_LOG2 in params:
        batch = 2 ** int(params[R.PARAM_BATCH_LOG2])
    accumulation = attrs.get(R.ACCUMULATION_STEPS)
    if accumulation is None:
        accumulation = 2 ** int(params.get(R.PARAM_ACCUM_LOG2, 0))
    effective = attrs.get(R.EFFECTIVE_BATCH_SIZE)
    if effective is None and batch is not None:
        effective = batch * accumulation
    lr, multiplier = attrs.get(R.LEARNING_RATE), params.get(R.PARAM_LR_MULTIPLIER)
    if multiplier is None and lr is not None and space is not None and effective:
        multiplier = space.multiplier_for(lr, effective)
    curve = attrs.get(R.CURVE) or []
    samples = attrs.get(R.SAMPLES_SEEN, curve[-1][0] if curve else None)
    state = trial.state.name
    value = trial.value if trial.values else None
    reason = attrs.get(R.STOP_REASON) or (R.STOP_COMPLETED if state == "COMPLETE" else R.STOP_PRUNED)
    return {"number": trial.number, "state": state, "value": value, "batch_size": batch,
            "accumulation_steps": accumulation, "effective_batch_size": effective,
            "learning_rate": lr, "lr_multiplier": multiplier,
            "throughput": attrs.get(R.THROUGHPUT), "epoch_time_s": attrs.get(R.EPOCH_TIME_S),
            "measured_peak_bytes": attrs.get(R.MEASURED_PEAK_BYTES),
            "predicted_peak_bytes": attrs.get(R.PREDICTED_PEAK_BYTES),
            "val_accuracy": attrs.get(R.VAL_ACCURACY, value),
            "best_val_accuracy": attrs.get(R.BEST_VAL_ACCURACY), "stop_reason": reason,
            "baseline": attrs.get(R.BASELINE), "samples_seen": samples, "curve": curve}


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """One recommended setting, its predicted metrics with intervals, and the evidence."""

    study_name: str
    batch_size: int
    learning_rate: float
    accumulation_steps: int
    effective_batch_size: int
    lr_multiplier: float
    priority: str
    predicted_accuracy: float
    accuracy_interval: tuple[float, float]
    predicted_epoch_time_s: float
    epoch_time_interval: tuple[float, float]
    predicted_peak_bytes: Optional[int]
    peak_bytes_interval: Optional[tuple[float, float]]
    pareto_front: tuple[dict, ...]
    trials: tuple[int, ...]
    best_trial: Optional[int]
    rationale: str
    constraints: dict
    time_to_target: Optional[dict] = None  # {"target", "samples", "seconds", "trial"}
    diagnostics: dict = field(default_factory=dict)  # fit quality of each model

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recommendation":
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise AutobatchError(f"unknown recommendation fields: {', '.join(sorted(unknown))}")
        for name in ("accuracy_interval", "epoch_time_interval", "peak_bytes_interval", "trials"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        data["pareto_front"] = tuple(dict(p) for p in data.get("pareto_front", ()))
        return cls(**data)

    def markdown(self) -> str:
        pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
        acc_lo, acc_hi = self.accuracy_interval
        t_lo, t_hi = self.epoch_time_interval
        rows = [("micro-batch size", str(self.batch_size), ""),
                ("accumulation steps", str(self.accumulation_steps), ""),
                ("effective batch size", str(self.effective_batch_size), ""),
                ("learning rate", f"{self.learning_rate:.4g}", f"multiplier {self.lr_multiplier:.3g}"),
                ("validation accuracy", pct(self.predicted_accuracy), f"{pct(acc_lo)} – {pct(acc_hi)}"),
                ("epoch time", f"{self.predicted_epoch_time_s:.3g} s", f"{t_lo:.3g} – {t_hi:.3g} s")]
        if self.predicted_peak_bytes is not None and self.peak_bytes_interval is not None:
            p_lo, p_hi = self.peak_bytes_interval
            rows.append(("peak memory", format_bytes(self.predicted_peak_bytes),
                         f"{format_bytes(p_lo)} – {format_bytes(p_hi)}"))
        coverage = self.diagnostics.get("coverage", COVERAGE)
        lines = [f"### autobatch recommendation ({self.priority})", "",
                 f"| | predicted | {coverage:.0%} interval |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        best = f"; best observed trial #{self.best_trial}" if self.best_trial is not None else ""
        lines += ["", self.rationale, "", f"Fitted to {len(self.trials)} trials{best}."]
        return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples to lists, numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def recommend(study_name: str, storage: Optional[str] = None, *,
              max_memory: Union[int, str, None] = None,
              max_epoch_time: Union[float, str, None] = None,
              min_accuracy: Optional[float] = None, priority: str = "balanced") -> Recommendation:
    """The recommended setting of a stored study. Reads trials only; never trains."""
    _check_priority(priority)
    return recommend_study(load_existing_study(storage, study_name), max_memory=max_memory,
                           max_epoch_time=max_epoch_time, min_accuracy=min_accuracy, priority=priority)


def recommend_study(study: optuna.Study, *, max_memory: Union[int, str, None] = None,
                    max_epoch_time: Union[float, str, None] = None,
                    min_accuracy: Optional[float] = None, priority: str = "balanced") -> Recommendation:
    """``recommend`` for an open study."""
    _check_priority(priority)
    spec_data = study.user_attrs.get(R.STUDY_SPEC)
    if not spec_data:
        raise AutobatchError(f"study {study.study_name!r} has no {R.STUDY_SPEC!r} attribute; "
                             "was it created by autobatch tune?")
    return recommend_from_frame(
        trials_frame(study), StudySpec.from_dict(spec_data),
        study.user_attrs.get(R.STUDY_MEMORY_MODEL), study_name=study.study_name,
        max_memory=max_memory, max_epoch_time=max_epoch_time, min_accuracy=min_accuracy,
        priority=priority)


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
                         priority: str = "balanced") -> Recommendation:
    """The recommendation for a ``trials_frame`` table: pure, deterministic."""
    _check_priority(priority)
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
            f"at least {MIN_TRIALS}: run more trials (autobatch worker --study-name {study_name})")
    fit = fit_tradeoff(df, spec, memory_model, random_state=RANDOM_STATE)
    # Candidates need local support: the accuracy model is not trusted to extrapolate into a
    # corner no completed trial has seen (there it once predicted 110%, and an untested lr
    # edge re-trained 22.8 points worse than predicted).
    grid = candidates(fit, spec)
    grid = grid[supported(grid, completed)].reset_index(drop=True)
    feasible, constraints = _apply_constraints(grid, fit, cap, max_epoch_time, min_accuracy)
    front = pareto_front(feasible)
    picks = _picks(feasible, front)
    chosen = feasible.loc[picks[priority]]
    best = completed.loc[completed["val_accuracy"].idxmax(), "number"]
    return Recommendation(
        study_name=study_name, batch_size=int(chosen["batch_size"]),
        learning_rate=float(chosen["learning_rate"]),
        accumulation_steps=int(chosen["accumulation_steps"]),
        effective_batch_size=int(chosen["effective_batch_size"]),
        lr_multiplier=float(chosen["lr_multiplier"]), priority=priority,
        predicted_accuracy=float(np.clip(chosen["accuracy"], 0, 1)),
        accuracy_interval=(float(chosen["accuracy_lo"]), float(chosen["accuracy_hi"])),
        predicted_epoch_time_s=float(chosen["epoch_time_s"]),
        epoch_time_interval=(float(chosen["epoch_time_lo"]), float(chosen["epoch_time_hi"])),
        predicted_peak_bytes=None if fit.memory is None else int(round(chosen["peak_bytes"])),
        peak_bytes_interval=None if fit.memory is None else (float(chosen["peak_lo"]),
                                                             float(chosen["peak_hi"])),
        pareto_front=tuple(_describe(feasible.loc[i]) for i in front),
        trials=fit.trials, best_trial=int(best),
        rationale=_rationale(priority, feasible, picks, constraints),
        constraints=constraints, time_to_target=_time_to_target(completed, chosen, min_accuracy),
        diagnostics=fit.diagnostics())


SUPPORT_DOUBLINGS = 1.0    # a completed trial within one doubling of effective batch and accumulation
SUPPORT_LR_FACTOR = 2.0    # ... and within this factor of the lr multiplier


def supported(grid: pd.DataFrame, completed: pd.DataFrame) -> np.ndarray:
    """Which candidates have a completed trial nearby (see the two constants above)."""
    def logs(df: pd.DataFrame) -> np.ndarray:
        return np.column_stack([np.log2(df["effective_batch_size"].to_numpy(dtype=float)),
                                np.log2(df["accumulation_steps"].to_numpy(dtype=float)),
                                np.log(df["lr_multiplier"].to_numpy(dtype=float))])

    g, c = logs(grid), logs(completed)
    limit = np.array([SUPPORT_DOUBLINGS, SUPPORT_DOUBLINGS, math.log(SUPPORT_LR_FACTOR)]) + 1e-9
    near = np.abs(g[:, None, :] - c[None, :, :]) <= limit
    return near.all(axis=2).any(axis=1)


def candidates(fit: TradeoffFit, spec: StudySpec) -> pd.DataFrame:
    """Predictions for the search grid: every micro-batch size and accumulation step of the
    space times ``N_LR_MULTIPLIERS`` log-spaced lr multipliers."""
    space = spec.space
    multipliers = np.geomspace(space.lr_multiplier_min, space.lr_multiplier_max, N_LR_MULTIPLIERS)
    b, a, m = (g.ravel() for g in np.meshgrid(space.batch_sizes, space.accumulation_steps,
                                               np.unique(multipliers), indexing="ij"))
    grid = fit.predict(b, a, m)
    grid["learning_rate"] = [space.learning_rate(mult, eff) for mult, eff in
                             zip(grid["lr_multiplier"], grid["effective_batch_size"])]
    return grid


def _apply_constraints(grid: pd.DataFrame, fit: TradeoffFit, cap: Optional[int],
                       max_epoch_time: Optional[float],
                       min_accuracy: Optional[float]) -> tuple[pd.DataFrame, dict]:
    """Feasible candidates. Memory is checked on the interval's upper end (an out-of-memory
    crash costs a run); time and accuracy on the predictions; settings in the region marked by
    diverged trials (``tradeoff.divergence_blocked``) are dropped."""
    keep = ~grid["diverges"].to_numpy()
    limit = fit.memory.max_batch_size if fit.memory is not None else None
    if limit is not None:
        keep &= grid["batch_size"].to_numpy() <= limit
    if cap is not None:
        if fit.memory is None:
            raise AutobatchError("max_memory needs a memory model or measured peaks at two batch "
                                 "sizes; this study has neither")
        keep &= grid["peak_hi"].to_numpy() <= cap
    if max_epoch_time is not None:
        keep &= grid["epoch_time_s"].to_numpy() <= max_epoch_time
    if min_accuracy is not None:
        keep &= grid["accuracy"].to_numpy() >= min_accuracy
    constraints = {"max_memory_bytes": cap, "max_epoch_time_s": max_epoch_time,
                   "min_accuracy": min_accuracy, "memory_model_max_batch_size": limit,
                   "dropped_as_diverging": int(grid["diverges"].sum()),
                   "candidates": len(grid), "feasible": int(keep.sum())}
    if not keep.any():
        within = grid if limit is None else grid[grid["batch_size"] <= limit]
        within = within if not within.empty else grid
        raise AutobatchError(
            "no setting meets the constraints "
            f"({', '.join(f'{k}={v}' for k, v in constraints.items() if k in _USER and v is not None)}): "
            f"the smallest predicted peak is {format_bytes(within['peak_hi'].min())} (upper end), "
            f"the fastest predicted epoch {within['epoch_time_s'].min():.3g} s, "
            f"the highest predicted accuracy {within['accuracy'].max():.3f}")
    return grid[keep].reset_index(drop=True), constraints


_USER = ("max_memory_bytes", "max_epoch_time_s", "min_accuracy")


# Settings are ranked by the lower end of their accuracy interval, not the mean: the mean of
# the best-looking candidate is its luckiest estimate (winner's curse), and a wide interval in a
# corner few trials saw must not win on optimism. The mean is still what is reported.
RANK_BY = "accuracy_lo"


def pareto_front(cands: pd.DataFrame) -> list[int]:
    """Index labels of the accuracy/epoch-time front, fastest first: a candidate is on it when
    every faster one ranks lower (by more than ``TIE``) on ``RANK_BY``."""
    order = np.lexsort((-cands[RANK_BY].to_numpy(), cands["epoch_time_s"].to_numpy()))
    front, best = [], -np.inf
    for i in order:
        accuracy = cands[RANK_BY].iat[i]
        if accuracy > best + TIE:
            front.append(cands.index[i])
            best = accuracy
    return front


def _picks(cands: pd.DataFrame, front: list[int]) -> dict[str, int]:
    """Index labels chosen by each priority; all three lie on the front, in time order."""
    acc = cands.loc[front, RANK_BY].to_numpy()
    time = cands.loc[front, "epoch_time_s"].to_numpy()
    last = len(front) - 1                                            # the most accurate
    first = int(np.flatnonzero(acc >= acc[last] - SPEED_TOLERANCE)[0])  # fastest near it
    knee = first
    if last - first >= 2:
        x = (time[first:last + 1] - time[first]) / (time[last] - time[first])
        y = (acc[first:last + 1] - acc[first]) / (acc[last] - acc[first])
        knee = first + int(np.argmax(y - x))                         # first maximum: faster
    return {"accuracy": front[last], "speed": front[first], "balanced": front[knee]}


def _setting(row: pd.Series) -> str:
    return f"batch {int(row['batch_size'])} x {int(row['accumulation_steps'])} accumulation"


def _rationale(priority: str, cands: pd.DataFrame, picks: dict[str, int], constraints: dict) -> str:
    fast, top = cands.loc[picks["speed"]], cands.loc[picks["accuracy"]]
    tolerance = f"{100 * SPEED_TOLERANCE:g} accuracy point"
    text = {
        "accuracy": f"highest predicted accuracy ({top['accuracy']:.1%}) of "
                    f"{constraints['feasible']} feasible settings",
        "speed": f"shortest predicted epoch ({fast['epoch_time_s']:.3g} s) within {tolerance} "
                 f"of the best predicted accuracy ({top['accuracy']:.1%})",
        "balanced": f"knee of the accuracy/epoch-time front between the fastest setting within "
                    f"{tolerance} of the best ({_setting(fast)}, {fast['epoch_time_s']:.3g} s) "
                    f"and the most accurate ({_setting(top)}, {top['accuracy']:.1%})",
    }[priority]
    applied = [f"{k}={v}" for k, v in constraints.items() if k in _USER and v is not None]
    return f"{priority.capitalize()}: {text}" + (f"; constraints {', '.join(applied)}." if applied else ".")


def _describe(row: pd.Series) -> dict[str, Any]:
    return {"batch_size": int(row["batch_size"]), "accumulation_steps": int(row["accumulation_steps"]),
            "effective_batch_size": int(row["effective_batch_size"]),
            "lr_multiplier": float(row["lr_multiplier"]), "learning_rate": float(row["learning_rate"]),
            "predicted_accuracy": float(row["accuracy"]),
            "accuracy_interval": [float(row["accuracy_lo"]), float(row["accuracy_hi"])],
            "predicted_epoch_time_s": float(row["epoch_time_s"]),
            "epoch_time_interval": [float(row["epoch_time_lo"]), float(row["epoch_time_hi"])],
            "predicted_peak_bytes": _plain(float(row["peak_bytes"]))}


def _time_to_target(completed: pd.DataFrame, chosen: pd.Series,
                    target: Optional[float]) -> Optional[dict[str, Any]]:
    """Samples and seconds the chosen setting needs to reach ``target``, read off the curve of
    the trial with the same effective batch and the nearest lr multiplier (within 2x), timed
    at the chosen setting's predicted throughput. None when no such curve reaches it."""
    if target is None:
        return None
    same = completed[(completed["effective_batch_size"] == chosen["effective_batch_size"])
                     & (np.abs(np.log(completed["lr_multiplier"] / chosen["lr_multiplier"]))
                        <= math.log(2))]
    if same.empty:
        return None
    nearest = same.loc[np.abs(np.log(same["lr_multiplier"] / chosen["lr_multiplier"])).idxmin()]
    for samples, accuracy, *_ in nearest["curve"]:
        if accuracy >= target:
            return {"target": target, "samples": int(samples), "trial": int(nearest["number"]),
                    "seconds": float(samples / chosen["throughput"])}
    return None
