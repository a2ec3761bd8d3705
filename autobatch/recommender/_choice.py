"""The choice: every setting of the search grid predicted, the unsupported and constrained ones
dropped, and the priority picking one.

- ``accuracy``: the highest predicted accuracy (ties within ``TIE`` to the faster);
- ``speed``: the shortest predicted epoch among settings within ``SPEED_TOLERANCE`` (one
  accuracy point) of the best predicted accuracy;
- ``balanced``: the knee of the accuracy/epoch-time Pareto front between those two picks:
  both axes normalised to [0, 1] over that stretch of the front, the point farthest above
  the chord from the speed pick to the accuracy pick (ties to the faster; the speed pick when
  no point lies above the chord).

So the predicted epoch time of speed <= balanced <= accuracy on any data.

"Accuracy" here is the study's metric oriented so that higher is better (``_fit``); for a metric
other than an accuracy the speed tolerance is ``SPEED_TOLERANCE`` of the best predicted value
(1%, relative) instead of one accuracy point.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..errors import AutobatchError
from ..search import StudySpec
from ..units import format_bytes
from ._fit import TradeoffFit
from ._recommendation import _plain

SPEED_TOLERANCE = 0.01    # accuracy the speed pick may give up, absolute
TIE = 1e-9
N_LR_MULTIPLIERS = 25


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


def candidates(fit: TradeoffFit, spec: StudySpec,
               tested: Optional[tuple[float, float]] = None) -> pd.DataFrame:
    """Predictions for the search grid: every micro-batch size and accumulation step of the
    space times ``N_LR_MULTIPLIERS`` log-spaced lr multipliers; never an effective batch larger
    than the training set (the trials refuse those too). ``tested``: the lowest and highest lr
    multiplier of the completed trials; the grid's multipliers are then those inside that
    range, and its two ends (the accuracy model is not trusted beyond the lrs trials tested)."""
    space = spec.space
    multipliers = np.geomspace(space.lr_multiplier_min, space.lr_multiplier_max, N_LR_MULTIPLIERS)
    if tested is not None:
        low, high = tested
        multipliers = np.concatenate([multipliers[(multipliers >= low) & (multipliers <= high)], [low, high]])
    b, a, m = (g.ravel() for g in np.meshgrid(space.batch_sizes, space.accumulation_steps,
                                               np.unique(multipliers), indexing="ij"))
    if spec.train_size > 0 and (b * a <= spec.train_size).any():
        keep = b * a <= spec.train_size
        b, a, m = b[keep], a[keep], m[keep]
    grid = fit.predict(b, a, m)
    grid["learning_rate"] = [space.learning_rate(mult, eff) for mult, eff in
                             zip(grid["lr_multiplier"], grid["effective_batch_size"])]
    return grid


def speed_tolerance(fit: TradeoffFit, cands: pd.DataFrame) -> float:
    """How much score the speed pick may give up: one accuracy point for an accuracy metric,
    else 1% of the best predicted metric's magnitude."""
    if fit.bounded:
        return SPEED_TOLERANCE
    return SPEED_TOLERANCE * max(float(np.abs(cands["accuracy"]).max()), 1e-12)


def metric_text(fit: TradeoffFit, score: float) -> str:
    """An oriented score as the metric, as people read it: 91.3% or 0.4213."""
    value = fit.to_metric(score)
    return f"{value:.1%}" if fit.bounded else f"{value:.4g}"


def apply_constraints(grid: pd.DataFrame, fit: TradeoffFit, cap: Optional[int],
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
            f"the {'highest' if fit.sign > 0 else 'lowest'} predicted {fit.metric_name} "
            f"{fit.to_metric(within['accuracy'].max()):{'.3f' if fit.bounded else '.4g'}}")
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


def picks(cands: pd.DataFrame, front: list[int], tolerance: float = SPEED_TOLERANCE) -> dict[str, int]:
    """Index labels chosen by each priority; all three lie on the front, in time order.
    ``tolerance``: the score the speed pick may give up (``speed_tolerance``)."""
    acc = cands.loc[front, RANK_BY].to_numpy()
    time = cands.loc[front, "epoch_time_s"].to_numpy()
    last = len(front) - 1                                            # the most accurate
    first = int(np.flatnonzero(acc >= acc[last] - tolerance)[0])     # fastest near it
    knee = first
    if last - first >= 2:
        x = (time[first:last + 1] - time[first]) / (time[last] - time[first])
        y = (acc[first:last + 1] - acc[first]) / (acc[last] - acc[first])
        knee = first + int(np.argmax(y - x))                         # first maximum: faster
    return {"accuracy": front[last], "speed": front[first], "balanced": front[knee]}


def _setting(row: pd.Series) -> str:
    return (f"batch {int(row['batch_size'])} x {int(row['accumulation_steps'])} accumulation, "
            f"lr {row['learning_rate']:.3g}")


def rationale(priority: str, cands: pd.DataFrame, picks: dict[str, int], constraints: dict,
              fit: Optional[TradeoffFit] = None) -> str:
    """Why the pick: the priority's rule with the numbers it compared. Settings are compared
    at the pessimistic end of their interval (``RANK_BY``), so each is shown with that end beside
    its prediction: a faster pick may have the higher prediction and a wider interval. A balanced
    pick names the two ends of the front it lies between, or says there is one setting when the
    fastest near the best is the best itself (never one setting as both ends)."""
    fast, top = cands.loc[picks["speed"]], cands.loc[picks["accuracy"]]
    name = fit.metric_name if fit is not None else "accuracy"

    def text_of(value: float) -> str:
        return metric_text(fit, value) if fit is not None else f"{value:.1%}"

    def score(row: pd.Series) -> str:
        return f"{text_of(row['accuracy'])}, pessimistic {text_of(row[RANK_BY])}"

    best = score(top)
    tolerance = (f"{100 * SPEED_TOLERANCE:g} percentage point" if fit is None or fit.bounded
                 else f"{100 * SPEED_TOLERANCE:g}%")
    basis = "compared at their intervals' pessimistic ends"
    if picks["speed"] == picks["accuracy"]:
        balanced = (f"the best {name} ({_setting(top)}: {best}, {top['epoch_time_s']:.3g} s) is also "
                    f"the fastest setting within {tolerance} of it ({basis}), so there is no trade-off to balance")
    else:
        balanced = (f"knee of the {name}/epoch-time front between the fastest setting within {tolerance} "
                    f"of the best, {basis} ({_setting(fast)}: {score(fast)}, "
                    f"{fast['epoch_time_s']:.3g} s), and the best ({_setting(top)}: {best}, "
                    f"{top['epoch_time_s']:.3g} s)")
    text = {
        "accuracy": f"{'lowest' if fit is not None and fit.sign < 0 else 'highest'} {name} at the interval's "
                    f"pessimistic end ({best}) of {constraints['feasible']} feasible settings",
        "speed": f"shortest predicted epoch ({fast['epoch_time_s']:.3g} s; {score(fast)}) within {tolerance} "
                 f"of the best {name}, {basis} ({best})",
        "balanced": balanced,
    }[priority]
    applied = [f"{k}={v}" for k, v in constraints.items() if k in _USER and v is not None]
    return f"{priority.capitalize()}: {text}" + (f"; constraints {', '.join(applied)}." if applied else ".")


def metric_interval(fit: TradeoffFit, row: pd.Series) -> list[float]:
    """The interval's ends as the metric, low to high."""
    return sorted(float(fit.to_metric(row[k])) for k in ("accuracy_lo", "accuracy_hi"))


def describe(row: pd.Series, fit: Optional[TradeoffFit] = None) -> dict[str, Any]:
    """A candidate as plain numbers: the metric in its own units (``predicted_metric``,
    ``metric_interval``), and as ``predicted_accuracy``/``accuracy_interval`` too when it is
    an accuracy (``fit`` None: an accuracy study)."""
    bounded = fit is None or fit.bounded
    value = float(row["accuracy"]) if fit is None else float(fit.to_metric(row["accuracy"]))
    interval = ([float(row["accuracy_lo"]), float(row["accuracy_hi"])] if fit is None
                else metric_interval(fit, row))
    metric = {"predicted_metric": value, "metric_interval": interval}
    if bounded:
        metric.update(predicted_accuracy=value, accuracy_interval=interval)
    return {"batch_size": int(row["batch_size"]), "accumulation_steps": int(row["accumulation_steps"]),
            "effective_batch_size": int(row["effective_batch_size"]),
            "lr_multiplier": float(row["lr_multiplier"]), "learning_rate": float(row["learning_rate"]),
            **metric,
            "predicted_epoch_time_s": float(row["epoch_time_s"]),
            "epoch_time_interval": [float(row["epoch_time_lo"]), float(row["epoch_time_hi"])],
            "predicted_peak_bytes": _plain(float(row["peak_bytes"]))}


def time_to_target(completed: pd.DataFrame, chosen: pd.Series,
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
