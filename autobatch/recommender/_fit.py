"""The trade-off fit: which trials feed which model, and the three models of one study fitted
together (``fit_tradeoff`` -> ``TradeoffFit``). No Optuna, no storage: a trials table in.

The metric model (``AccuracyModel``, named for the default metric) fits the study's metric
*oriented so that higher is better*: the metric itself when the study maximizes it (accuracy),
its negative when it minimizes it (a loss, an error). Every prediction column called
``accuracy*`` below holds that oriented score; ``to_metric`` turns it back into the metric.
Scores of an accuracy metric are clipped to [0, 1], the built-in losses and errors (validation
loss, MAE, RMSE) to >= 0, a user's metric is not bounded; epoch times and peaks are never below
zero (``_calibration.clip_interval``; their intervals are widened by the jackknife factors of
``_jackknife``, multiplicatively, so they stay positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from .. import records as R
from ..errors import AutobatchError
from ..search import StudySpec
from ._accuracy import AccuracyModel, accuracy_features
from ._calibration import (SeedNoise, calibrated_interval, calibration_set, clip_interval, seed_noise,
                           selective_half_width, setting_key)
from ._intervals import COVERAGE
from ._jackknife import memory_factor, throughput_factor, widen_ratio
from ._memory_fit import MemoryFit, fit_memory
from ._throughput import ThroughputModel


def accuracy_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Completed trials: their final metric is a result at the study's samples seen.
    Pruned trials stopped early (not comparable); diverged ones feed ``diverged_rows``."""
    completed = (df["state"] == "COMPLETE") & (df["stop_reason"] == R.STOP_COMPLETED)
    return df[completed & df["val_metric"].notna() & df["batch_size"].notna()
              & (df["lr_multiplier"] > 0)]


def metric_sign(spec: StudySpec) -> float:
    """+1 when the study maximizes its metric, -1 when it minimizes it: score = sign * metric."""
    return 1.0 if spec.recipe.direction == "maximize" else -1.0


def diverged_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["stop_reason"] == R.STOP_DIVERGED) & df["batch_size"].notna()
              & (df["lr_multiplier"] > 0)]


def divergence_blocked(effective_batch: Any, lr_multiplier: Any, diverged: np.ndarray,
                       completed: np.ndarray) -> np.ndarray:
    """True where a setting is at least as aggressive as a diverged trial and no completed
    trial was at least as aggressive as the setting.

    "Aggressive" is the partial order on (effective batch, lr multiplier): under the scaling
    rule a larger effective batch at the same multiplier is a larger lr, and instability grows
    with both. Diverged runs are kept out of the accuracy GP (a cliff to chance accuracy would
    shrink its length scales and spoil the smooth surface everywhere); this monotone staircase
    keeps the recommendation out of the region they mark instead. ``diverged`` and
    ``completed`` are ``(n, 2)`` arrays of (effective batch, multiplier).
    """
    e = np.asarray(effective_batch, dtype=float)[:, None]
    m = np.asarray(lr_multiplier, dtype=float)[:, None]
    if len(diverged) == 0:
        return np.zeros(e.shape[0], dtype=bool)
    beyond_diverged = ((e >= diverged[None, :, 0]) & (m >= diverged[None, :, 1] * (1 - 1e-9))).any(axis=1)
    if len(completed) == 0:
        return beyond_diverged
    covered = ((completed[None, :, 0] >= e) & (completed[None, :, 1] >= m * (1 - 1e-9))).any(axis=1)
    return beyond_diverged & ~covered


def throughput_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that trained and timed: any stop reason but never-trained or out-of-memory."""
    trained = ~df["stop_reason"].isin([R.STOP_OVER_MEMORY, R.STOP_OUT_OF_MEMORY])
    return df[trained & df["batch_size"].notna() & (df["throughput"] > 0)]


def memory_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["batch_size"].notna() & (df["measured_peak_bytes"] > 0)]


def train_size_of(df: pd.DataFrame, spec: StudySpec) -> int:
    """Training-split size: the spec's, else what ``epoch_time_s * throughput`` implies."""
    if spec.train_size > 0:
        return spec.train_size
    implied = (df["epoch_time_s"] * df["throughput"]).dropna()
    if implied.empty:
        raise AutobatchError("the study records no train_size and no epoch times; "
                             "cannot predict epoch time")
    return int(round(float(implied.median())))


@dataclass(frozen=True, kw_only=True)
class TradeoffFit:
    """The fitted models of one study and the predictions they make together."""

    accuracy: AccuracyModel
    throughput: ThroughputModel
    memory: Optional[MemoryFit]
    diverged: np.ndarray          # (n, 2): effective batch, lr multiplier of diverged trials
    completed: np.ndarray         # the same for completed trials
    train_size: int
    trials: tuple[int, ...]       # every trial any model rests on
    accuracy_trials: int
    throughput_trials: int
    sign: float = 1.0             # metric_sign: score = sign * metric
    bounded: bool = True          # an accuracy metric: scores clipped to [0, 1]
    metric_name: str = "accuracy"  # for display: "accuracy", "validation loss", "RMSE", ...
    nonnegative: bool = False     # a built-in loss or error: the metric is >= 0
    noise: Optional[SeedNoise] = None  # seed-to-seed spread of repeated settings, when any
    # jackknife factors (``_jackknife``) widening the throughput and peak intervals (1: none)
    throughput_factor: float = 1.0
    memory_factor: float = 1.0
    observations: int = 0         # verification runs fitted as observations (not trials)

    def to_metric(self, score: Any) -> Any:
        """The metric for an oriented score (or an array of them)."""
        return self.sign * score

    def predict(self, batch_size: Any, accumulation_steps: Any, lr_multiplier: Any) -> pd.DataFrame:
        """Predictions (with ``_lo``/``_hi`` interval ends) for each given setting."""
        b, a, m = np.broadcast_arrays(np.asarray(batch_size, dtype=float),
                                      np.asarray(accumulation_steps, dtype=float),
                                      np.asarray(lr_multiplier, dtype=float))
        b, a, m = b.ravel(), a.ravel(), m.ravel()
        features = accuracy_features(b, m, a)
        accuracy = self.accuracy.predict(features)
        acc_lo, acc_hi = self.accuracy.predict_interval(features)
        bounds = self.score_bounds()
        if bounds != (None, None):
            accuracy = np.clip(accuracy, *bounds)
            acc_lo, acc_hi = clip_interval(acc_lo, acc_hi, *bounds)
        ba = np.column_stack([b, a])
        throughput = self.throughput.predict(ba)
        model_lo, model_hi = self.throughput.predict_interval(ba)
        thr_lo, thr_hi = widen_ratio(throughput, model_lo, model_hi, self.throughput_factor)
        out = pd.DataFrame({
            "batch_size": b.astype(int), "accumulation_steps": a.astype(int),
            "effective_batch_size": (b * a).astype(int), "lr_multiplier": m,
            "accuracy": accuracy, "accuracy_lo": acc_lo, "accuracy_hi": acc_hi, "throughput": throughput,
            "epoch_time_s": self.train_size / throughput,
            "epoch_time_lo": np.maximum(0.0, self.train_size / thr_hi), "epoch_time_hi": self.train_size / thr_lo,
            "epoch_time_model_lo": self.train_size / model_hi, "epoch_time_model_hi": self.train_size / model_lo,
            "diverges": divergence_blocked(b * a, m, self.diverged, self.completed)})
        if self.memory is None:
            out["peak_bytes"] = out["peak_lo"] = out["peak_hi"] = out["peak_model_lo"] = out["peak_model_hi"] = np.nan
        else:
            out["peak_bytes"] = self.memory.predict(b)
            out["peak_model_lo"], out["peak_model_hi"] = clip_interval(*self.memory.interval(b), lower=0.0)
            out["peak_lo"], out["peak_hi"] = widen_ratio(out["peak_bytes"], out["peak_model_lo"],
                                                         out["peak_model_hi"], self.memory_factor)
        return out

    def selective_interval(self, row: pd.Series) -> tuple[float, float, dict[str, Any]]:
        """The interval (oriented scores, low to high) at a setting chosen for its high
        prediction: the wider of the model's and the selective conformal one
        (``_calibration.selective_half_width`` over the GP's leave-one-out residuals), clipped
        to ``score_bounds``; with what it rests on, for the diagnostics."""
        lo, hi = float(row["accuracy_lo"]), float(row["accuracy_hi"])
        loo = self.accuracy.loo()
        if loo is None:
            return lo, hi, {"method": "model interval (no leave-one-out for this model)"}
        residual, predicted, loo_sd = loo
        half = selective_half_width(residual, predicted, self.accuracy.coverage, loo_sd=loo_sd)
        c_lo, c_hi = calibrated_interval(float(row["accuracy"]), lo, hi, half)
        bounds = self.score_bounds()
        if bounds != (None, None):
            c_lo, c_hi = clip_interval(c_lo, c_hi, *bounds)
        return c_lo, c_hi, {"method": "selective split conformal (leave-one-out, top half by prediction)",
                            "half_width": half, "calibration_trials": len(calibration_set(predicted, loo_sd=loo_sd)),
                            "model_interval": [lo, hi]}

    def score_bounds(self) -> tuple[Optional[float], Optional[float]]:
        """Where an oriented score can physically lie: [0, 1] for an accuracy, <= 0 for a
        minimized loss or error (the metric >= 0), unbounded for a user's metric."""
        if self.bounded:
            return 0.0, 1.0
        if self.nonnegative:
            return (0.0, None) if self.sign > 0 else (None, 0.0)
        return None, None

    def diagnostics(self) -> dict[str, Any]:
        acc = self.accuracy
        described = (f"{acc.gp_.kernel_}, interval std x {acc.std_scale_:.2f}" if acc.kind == "gp"
                     else "quantile gradient boosting")
        noise = (None if self.noise is None else
                 {"seed_sd": self.noise.sd, "dof": self.noise.dof, "repeated_settings": self.noise.settings})
        return {"coverage": acc.coverage, "train_size": self.train_size, "seed_noise": noise,
                "accuracy": {"model": acc.kind, "fitted": described, "trials": self.accuracy_trials,
                             "diverged_trials": len(self.diverged),
                             "verification_observations": self.observations},
                "jackknife": {"throughput_factor": self.throughput_factor, "memory_factor": self.memory_factor},
                "throughput": {"law": "s/sample = beta + alpha/b + gamma/(a*b)",
                               "alpha_s": self.throughput.alpha_, "beta_s": self.throughput.beta_,
                               "gamma_s": self.throughput.gamma_,
                               "log_residual_sd": self.throughput.log_sd_,
                               "dof": self.throughput.dof_, "trials": self.throughput_trials},
                "memory": self.memory.diagnostics() if self.memory else None}


def fit_tradeoff(df: pd.DataFrame, spec: StudySpec, memory_model: Optional[dict[str, Any]], *,
                 kind: str = "gp", coverage: float = COVERAGE,
                 random_state: int = 0, calibrate: bool = True,
                 extra_repeats: Sequence[tuple[tuple, float]] = (),
                 observations: Sequence[tuple[tuple, float]] = ()) -> TradeoffFit:
    """Fit the three models to a ``trials_frame`` table (at least one timed trial); the metric
    model to the oriented score of ``spec.recipe``'s metric (see the module docstring).
    ``calibrate``: keep the GP's noise at or above the seed-to-seed variance of repeated
    settings (``_calibration.seed_noise``); False fits as before calibration (benchmarks).
    ``extra_repeats``: ``(setting_key, metric)`` runs that are not trials (the verification runs,
    ``verification_repeats``), pooled with the trials for the seed-noise estimate only.
    ``observations``: ``(setting_key, metric)`` runs that are not trials fitted by the metric
    model beside them (the verification runs that contradicted their prediction,
    ``verification_observations``: the re-rank after a failed verification); never counted as
    trials. ``calibrate`` also widens the epoch-time and peak intervals by their jackknife
    factors (``_jackknife``)."""
    sign = metric_sign(spec)
    acc_df, div_df = accuracy_rows(df), diverged_rows(df)
    thr_df, mem_df = throughput_rows(df), memory_rows(df)
    if thr_df.empty:
        raise AutobatchError("no trial of this study recorded a throughput")
    as_float = lambda col: col.to_numpy(dtype=float, na_value=np.nan)  # noqa: E731
    noise = repeat_noise(acc_df, extra_repeats) if calibrate else None
    seen = np.array([k for k, _ in observations], dtype=float).reshape(-1, 3)  # (batch, accumulation, multiplier)
    accuracy = AccuracyModel(kind=kind, coverage=coverage, random_state=random_state,
                             noise_floor=noise.variance if noise else 0.0).fit(
        accuracy_features(np.concatenate([as_float(acc_df["batch_size"]), seen[:, 0]]),
                          np.concatenate([as_float(acc_df["lr_multiplier"]), seen[:, 2]]),
                          np.concatenate([as_float(acc_df["accumulation_steps"]), seen[:, 1]])),
        sign * np.concatenate([as_float(acc_df["val_metric"]), [float(v) for _, v in observations]]))
    throughput = ThroughputModel(coverage=coverage).fit(
        np.column_stack([as_float(thr_df["batch_size"]), as_float(thr_df["accumulation_steps"])]),
        as_float(thr_df["throughput"]))
    memory = fit_memory(as_float(mem_df["batch_size"]), as_float(mem_df["measured_peak_bytes"]),
                        memory_model, coverage)
    used = set(acc_df["number"]) | set(div_df["number"]) | set(thr_df["number"])
    points = lambda rows: np.column_stack([as_float(rows["effective_batch_size"]),  # noqa: E731
                                           as_float(rows["lr_multiplier"])]).reshape(-1, 2)
    if memory is not None:
        used |= set(mem_df["number"])
    return TradeoffFit(accuracy=accuracy, throughput=throughput, memory=memory,
                       diverged=points(div_df), completed=points(acc_df),
                       train_size=train_size_of(df, spec), trials=tuple(sorted(int(n) for n in used)),
                       accuracy_trials=len(acc_df), throughput_trials=len(thr_df), sign=sign,
                       bounded=spec.recipe.metric_is_fraction, metric_name=spec.recipe.metric_name,
                       nonnegative=spec.recipe.metric in NONNEGATIVE_METRICS, noise=noise,
                       observations=len(observations),
                       throughput_factor=throughput_factor(as_float(thr_df["batch_size"]),
                                                           as_float(thr_df["accumulation_steps"]),
                                                           as_float(thr_df["throughput"]), coverage)
                       if calibrate else 1.0,
                       memory_factor=memory_factor(as_float(mem_df["batch_size"]), as_float(mem_df["measured_peak_bytes"]),
                                                   memory_model, coverage) if calibrate and memory is not None else 1.0)


NONNEGATIVE_METRICS = ("val_loss", "mae", "rmse")


def repeat_noise(completed: pd.DataFrame, extra: Sequence[tuple[tuple, float]] = ()) -> Optional[SeedNoise]:
    """Seed-to-seed spread of the completed trials' metric over settings run more than once
    (the baselines' planned repeat), with the ``extra`` (setting key, metric) runs (the
    verification runs); None without a repeat."""
    keys = [setting_key(b, a, m) for b, a, m in zip(completed["batch_size"], completed["accumulation_steps"],
                                                     completed["lr_multiplier"])]
    values = list(completed["val_metric"].to_numpy(dtype=float))
    return seed_noise(values + [v for _, v in extra], keys + [k for k, _ in extra])


def verification_repeats(stored: Optional[dict], contradicted_only: bool = False) -> list[tuple[tuple, float]]:
    """The verification runs of the study attribute ``records.STUDY_VERIFICATION`` as
    ``(setting_key, metric)`` pairs; ``contradicted_only``: only the runs of a verification
    that measured its setting worse than the predicted interval (``"contradicted"``), which the
    metric model then fits as observations (``verification_observations``)."""
    return [(setting_key(r["batch_size"], r["accumulation_steps"], r["lr_multiplier"]), float(r["value"]))
            for r in (stored or {}).get("runs") or ()
            if r.get("value") is not None and (r.get("contradicted") or not contradicted_only)]


def verification_observations(stored: Optional[dict]) -> list[tuple[tuple, float]]:
    """The verification runs the metric model fits as observations of their setting: those
    whose verification contradicted the prediction (a re-rank with the measurement)."""
    return verification_repeats(stored, contradicted_only=True)
