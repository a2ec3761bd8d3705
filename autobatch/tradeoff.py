"""The trade-off models: validation accuracy, throughput and peak memory of a setting.

Each is fitted to a study's trials and predicts with an interval (``COVERAGE``, two-sided):

- ``AccuracyModel``: validation accuracy over (log2 effective batch, log lr multiplier,
  log2 accumulation steps), a Gaussian process by default.
- ``ThroughputModel``: training samples/s of a micro-batch size and accumulation, a
  three-parameter physical law fitted with non-negative least squares.
- ``MemoryFit``: peak bytes of a micro-batch, the probe's stored line checked against the
  measured peaks, or a line fitted to them.

``fit_tradeoff`` fits all three to a ``recommend.trials_frame`` table. No Optuna, no storage.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.utils.validation import check_is_fitted, validate_data

from . import records as R
from .errors import AutobatchError
from .spec import StudySpec

COVERAGE = 0.8              # two-sided coverage of every predicted interval
DEFAULT_LOG_SD = 0.10       # throughput spread assumed when the fit leaves no residual dof
ACCURACY_KINDS = ("gp", "quantile_gbm")


def accuracy_features(batch_size: Any, lr_multiplier: Any, accumulation_steps: Any) -> np.ndarray:
    """Model inputs: ``[log2(batch * accumulation), ln(lr multiplier), log2(accumulation)]``.

    The effective batch, not the micro-batch, is the first axis: accumulating ``a`` micro-batches
    of ``b`` computes the gradient of one batch of ``a*b`` (only batch-norm statistics see
    ``b``), so with this basis accumulation is a near-irrelevant axis the GP learns a long
    length scale for, and untried (micro-batch, accumulation) pairs borrow from trials with
    the same effective batch. The micro-batch stays recoverable (first minus last column).
    The multiplier, not the absolute lr, is used because the scaling rule already moves the
    lr with the batch; its optimum then moves little (an axis-aligned surface).
    """
    b = np.asarray(batch_size, dtype=float)
    a = np.asarray(accumulation_steps, dtype=float)
    m = np.asarray(lr_multiplier, dtype=float)
    return np.column_stack([np.log2(b * a), np.log(m), np.log2(a)])


def _z(coverage: float) -> float:
    return float(stats.norm.ppf(0.5 + coverage / 2))


def _t(coverage: float, dof: int) -> float:
    return float(stats.t.ppf(0.5 + coverage / 2, max(dof, 1)))


class AccuracyModel(RegressorMixin, BaseEstimator):
    """Validation accuracy with uncertainty; a scikit-learn regressor.

    ``kind="gp"`` (default): ``GaussianProcessRegressor`` on min-max scaled inputs with
    ``C * Matern(nu=2.5, one length scale per input) + WhiteKernel`` and ``normalize_y``.
    The interval is ``mean ± z * std`` where ``std`` includes the fitted white noise, so it is
    a prediction interval for a new run, not a band for the mean (80%: ``z = 1.2816``).

    ``kind="quantile_gbm"``: three ``GradientBoostingRegressor(loss="quantile")`` models (the
    interval's two ends and the median).

    The GP's std is widened by ``std_scale_`` (>= 1), the split-conformal quantile of its
    closed-form leave-one-out residuals, because maximum-likelihood hyperparameters fitted to a
    dozen trials under-state the noise.

    Why the GP, measured by ``scripts/bench_recommend.py`` (held-out settings, 80% nominal):
    on synthetic known-law studies of 12 / 25 / 50 trials its RMSE was 0.051 / 0.023 / 0.010
    against 0.068 / 0.061 / 0.027 for quantile boosting, with coverage 64 / 75 / 81% against
    74 / 61 / 67%. On a real SGD sweep (an MLP on scikit-learn's digits, batch x lr) boosting
    had a slightly lower point error (median absolute error 0.0047 against 0.0058 at 50 trials)
    but its intervals covered 67-69% at every size, the GP's 68 / 80 / 83%. Intervals are half
    of what the recommender promises, and boosted quantiles learnt from a few dozen points
    do not hold; a smooth surface with one ridge in lr is what a GP prior describes, and
    trees' steps move the recommended setting between grid cells. The GP also fits in ~50 ms
    against ~250 ms.
    """

    def __init__(self, kind: str = "gp", coverage: float = COVERAGE,
                 n_restarts_optimizer: int = 2, random_state: Optional[int] = 0) -> None:
        self.kind = kind
        self.coverage = coverage
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "AccuracyModel":
        if self.kind not in ACCURACY_KINDS:
            raise ValueError(f"kind must be one of {ACCURACY_KINDS}, got {self.kind!r}")
        if not 0 < self.coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {self.coverage!r}")
        X, y = validate_data(self, X, y, y_numeric=True)
        y = y.astype(float)
        self.x_min_ = X.min(axis=0)
        span = X.max(axis=0) - self.x_min_
        self.x_scale_ = np.where(span > 0, span, 1.0)
        Z = self._scaled(X)
        if self.kind == "gp":
            kernel = (ConstantKernel(1.0, (1e-2, 1e2))
                      * Matern(length_scale=np.full(X.shape[1], 0.5),
                               length_scale_bounds=(5e-2, 1e2), nu=2.5)
                      + WhiteKernel(0.1, (1e-5, 1.0)))
            gp = GaussianProcessRegressor(kernel, normalize_y=True,
                                          n_restarts_optimizer=self.n_restarts_optimizer,
                                          random_state=self.random_state)
            with warnings.catch_warnings():  # bound hits are expected on small studies
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.gp_ = gp.fit(Z, y)
            self.std_scale_ = _loo_std_scale(self.gp_, self.coverage)
        else:
            low = (1 - self.coverage) / 2
            self.quantile_models_ = tuple(
                GradientBoostingRegressor(loss="quantile", alpha=q, n_estimators=150,
                                          max_depth=2, learning_rate=0.05, min_samples_leaf=2,
                                          random_state=self.random_state).fit(Z, y)
                for q in (low, 0.5, 1 - low)
            )
        return self

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return (X - self.x_min_) / self.x_scale_

    def _mean_low_high(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        check_is_fitted(self, "x_min_")
        Z = self._scaled(validate_data(self, X, reset=False))
        if self.kind == "gp":
            mean, std = self.gp_.predict(Z, return_std=True)
            half = _z(self.coverage) * std * self.std_scale_
            return mean, mean - half, mean + half
        low, mid, high = (m.predict(Z) for m in self.quantile_models_)
        return mid, np.minimum(low, mid), np.maximum(high, mid)  # no crossing quantiles

    def predict(self, X: Any, return_std: bool = False) -> Any:
        """Predicted accuracy; with ``return_std`` also its predictive standard deviation."""
        mean, low, high = self._mean_low_high(X)
        if return_std:
            return mean, (high - low) / (2 * _z(self.coverage))
        return mean

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ends of the ``coverage`` prediction interval."""
        _, low, high = self._mean_low_high(X)
        return low, high


def _loo_std_scale(gp: GaussianProcessRegressor, coverage: float) -> float:
    """Factor (>= 1) on the GP's predictive std so that its leave-one-out intervals cover.

    Closed-form leave-one-out for a GP (Rasmussen & Williams, eq. 5.12): with ``K`` the
    training covariance, the standardised LOO residual of point i is
    ``alpha_i / sqrt([K^-1]_ii)``. The factor is the split-conformal quantile (rank
    ``ceil((n + 1) * coverage)``) of their absolute values over ``z``. Maximum-likelihood
    hyperparameters on a dozen points tend to over-fit and under-state the noise; this puts the
    width back where held-out points say it should be.
    """
    n = len(gp.alpha_)
    rank = math.ceil((n + 1) * coverage)
    if n < 3 or rank > n:
        return 1.0
    k_inv = linalg.cho_solve((gp.L_, True), np.eye(n))
    z = np.abs(gp.alpha_.ravel()) / np.sqrt(np.diag(k_inv))
    return max(1.0, float(np.sort(z)[rank - 1]) / _z(coverage))


class ThroughputModel(RegressorMixin, BaseEstimator):
    """Training samples/s of micro-batch ``b`` with ``a`` accumulation steps.

    ``X`` columns: ``[b, a]``; ``y``: measured samples/s. The law, per sample::

        seconds / sample = beta + alpha / b + gamma / (a * b)

    i.e. a micro-batch step costs ``alpha + beta * b`` (``alpha``: launch and Python overhead
    per step, ``beta``: the saturated per-sample cost, so the per-sample cost falls with ``b``
    and saturates at ``beta``) and every optimizer step adds ``gamma`` once per ``a``
    micro-batches. Linear in the non-negative parameters, it is fitted by non-negative least
    squares on relative errors (rows weighted by the measured time). A parameter the trials
    cannot identify is fixed at 0 (``gamma`` when accumulation never varied, ``alpha`` when the
    micro-batch never did): no gain is promised from what was never measured.

    The interval is multiplicative: ``exp(± t * s * sqrt(1 + p/n))`` with ``s`` the residual
    standard deviation of log throughput (``DEFAULT_LOG_SD`` when no dof remains).
    """

    def __init__(self, coverage: float = COVERAGE) -> None:
        self.coverage = coverage

    def fit(self, X: Any, y: Any) -> "ThroughputModel":
        X, y = validate_data(self, X, y, y_numeric=True)
        if X.shape[1] != 2:
            raise ValueError("X must have two columns: micro-batch size, accumulation steps")
        if np.any(X < 1) or np.any(y <= 0):
            raise ValueError("batch sizes and accumulation steps must be >= 1, throughput > 0")
        b, a = X[:, 0].astype(float), X[:, 1].astype(float)
        seconds = 1.0 / y
        design = np.column_stack([1 / b, np.ones_like(b), 1 / (a * b)])
        active = np.array([len(np.unique(b)) > 1, True, len(np.unique(a)) > 1])
        coef = np.zeros(3)
        coef[active], _ = optimize.nnls(design[:, active] / seconds[:, None], np.ones_like(b))
        self.alpha_, self.beta_, self.gamma_ = (float(c) for c in coef)
        n, p = len(y), int(active.sum())
        residual = np.log(self.predict(X)) - np.log(y)
        self.dof_ = n - p
        self.log_sd_ = (float(np.sqrt(residual @ residual / self.dof_)) if self.dof_ > 0
                        else DEFAULT_LOG_SD)
        self.inflation_ = math.sqrt(1 + p / n)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "beta_")
        X = validate_data(self, X, reset=False).astype(float)
        b, a = X[:, 0], X[:, 1]
        return 1.0 / (self.beta_ + self.alpha_ / b + self.gamma_ / (a * b))

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        mean = self.predict(X)
        factor = math.exp(_t(self.coverage, self.dof_) * self.log_sd_ * self.inflation_)
        return mean / factor, mean * factor


@dataclass(frozen=True, kw_only=True)
class MemoryFit:
    """``peak(b) = fixed + per_sample * b`` with an interval from residuals.

    ``source == "stored"``: the probe's model, kept as the prediction (it set the cap the
    search used); the interval is the prediction shifted by the mean residual of the measured
    peaks ± ``t * sd * sqrt(1 + 1/n)``, widened to contain the prediction. With fewer than two
    measured peaks it only spans the prediction and the observed residual.
    ``source == "fitted"``: non-negative least squares through the measured peaks, with the
    ordinary least-squares prediction interval (empty width when no dof remains).
    """

    source: str
    fixed_bytes: float
    per_sample_bytes: float
    n: int                      # measured peaks compared or fitted
    residual_mean: float = 0.0  # measured - model, bytes
    residual_sd: float = 0.0
    residual_min: float = 0.0
    residual_max: float = 0.0
    max_abs_relative_error: float = 0.0
    batch_mean: float = 0.0     # for the fitted line's leverage
    batch_sxx: float = 0.0
    max_batch_size: Optional[int] = None  # from the stored model, when a cap was stored
    cap_bytes: Optional[int] = None
    coverage: float = COVERAGE

    def predict(self, batch_size: Any) -> np.ndarray:
        return self.fixed_bytes + self.per_sample_bytes * np.asarray(batch_size, dtype=float)

    def interval(self, batch_size: Any) -> tuple[np.ndarray, np.ndarray]:
        b = np.asarray(batch_size, dtype=float)
        pred = self.predict(b)
        if self.source == "stored":
            if self.n < 2:
                return pred + min(0.0, self.residual_mean), pred + max(0.0, self.residual_mean)
            half = _t(self.coverage, self.n - 1) * self.residual_sd * math.sqrt(1 + 1 / self.n)
            centre = pred + self.residual_mean
            # The residual is not pure noise: the probe keeps gradients allocated between steps
            # (a bound for accumulation), so trials without accumulation measure a fixed amount
            # less. The observed residual range is therefore always inside the interval.
            low = np.minimum(np.minimum(centre - half, pred), pred + self.residual_min)
            high = np.maximum(np.maximum(centre + half, pred), pred + self.residual_max)
            return low, high
        if self.n <= 2:
            return pred, pred
        leverage = 1 + 1 / self.n + (b - self.batch_mean) ** 2 / self.batch_sxx
        half = _t(self.coverage, self.n - 2) * self.residual_sd * np.sqrt(leverage)
        return pred - half, pred + half

    def diagnostics(self) -> dict[str, Any]:
        return {"source": self.source, "fixed_bytes": self.fixed_bytes,
                "per_sample_bytes": self.per_sample_bytes, "measured_peaks": self.n,
                "residual_mean_bytes": self.residual_mean, "residual_sd_bytes": self.residual_sd,
                "max_abs_relative_error": self.max_abs_relative_error}


def fit_memory(batch_sizes: Any, peaks: Any, stored: Optional[dict[str, Any]] = None,
               coverage: float = COVERAGE) -> Optional[MemoryFit]:
    """The stored model checked against ``(batch_sizes, peaks)``, or a line through them.

    None when there is neither a stored model nor two distinct measured micro-batch sizes.
    """
    b = np.asarray(batch_sizes, dtype=float)
    peaks = np.asarray(peaks, dtype=float)
    if stored:
        fixed, per_sample = float(stored["fixed_bytes"]), float(stored["per_sample_bytes"])
        capped = stored.get("cap_bytes") is not None and stored.get("max_batch_size") is not None
        common = dict(source="stored", fixed_bytes=fixed, per_sample_bytes=per_sample, n=len(b),
                      max_batch_size=int(stored["max_batch_size"]) if capped else None,
                      cap_bytes=int(stored["cap_bytes"]) if capped else None, coverage=coverage)
        if len(b) == 0:
            return MemoryFit(**common)
        residual = peaks - (fixed + per_sample * b)
        return MemoryFit(**common, residual_mean=float(residual.mean()),
                         residual_sd=float(residual.std(ddof=1)) if len(b) > 1 else 0.0,
                         residual_min=float(residual.min()), residual_max=float(residual.max()),
                         max_abs_relative_error=float(np.max(np.abs(residual) / peaks)))
    if len(np.unique(b)) < 2:
        return None
    (fixed, per_sample), _ = optimize.nnls(np.column_stack([np.ones_like(b), b]), peaks)
    residual = peaks - (fixed + per_sample * b)
    dof = len(b) - 2
    return MemoryFit(source="fitted", fixed_bytes=float(fixed), per_sample_bytes=float(per_sample),
                     n=len(b), residual_mean=float(residual.mean()),
                     residual_sd=float(np.sqrt(residual @ residual / dof)) if dof > 0 else 0.0,
                     max_abs_relative_error=float(np.max(np.abs(residual) / peaks)),
                     batch_mean=float(b.mean()), batch_sxx=float(((b - b.mean()) ** 2).sum()),
                     coverage=coverage)


# --- which trials feed which model -------------------------------------------------------

def accuracy_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Completed trials: their final accuracy is a result at the study's samples seen.
    Pruned trials stopped early (not comparable); diverged ones feed ``diverged_rows``."""
    completed = (df["state"] == "COMPLETE") & (df["stop_reason"] == R.STOP_COMPLETED)
    return df[completed & df["val_accuracy"].notna() & df["batch_size"].notna()
              & (df["lr_multiplier"] > 0)]


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


# --- all three models together -----------------------------------------------------------

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

    def predict(self, batch_size: Any, accumulation_steps: Any, lr_multiplier: Any) -> pd.DataFrame:
        """Predictions (with ``_lo``/``_hi`` interval ends) for each given setting."""
        b, a, m = np.broadcast_arrays(np.asarray(batch_size, dtype=float),
                                      np.asarray(accumulation_steps, dtype=float),
                                      np.asarray(lr_multiplier, dtype=float))
        b, a, m = b.ravel(), a.ravel(), m.ravel()
        features = accuracy_features(b, m, a)
        accuracy = self.accuracy.predict(features)
        acc_lo, acc_hi = self.accuracy.predict_interval(features)
        ba = np.column_stack([b, a])
        throughput = self.throughput.predict(ba)
        thr_lo, thr_hi = self.throughput.predict_interval(ba)
        out = pd.DataFrame({
            "batch_size": b.astype(int), "accumulation_steps": a.astype(int),
            "effective_batch_size": (b * a).astype(int), "lr_multiplier": m,
            "accuracy": np.clip(accuracy, 0, 1), "accuracy_lo": np.clip(acc_lo, 0, 1),
            "accuracy_hi": np.clip(acc_hi, 0, 1), "throughput": throughput,
            "epoch_time_s": self.train_size / throughput,
            "epoch_time_lo": self.train_size / thr_hi, "epoch_time_hi": self.train_size / thr_lo,
            "diverges": divergence_blocked(b * a, m, self.diverged, self.completed)})
        if self.memory is None:
            out["peak_bytes"] = out["peak_lo"] = out["peak_hi"] = np.nan
        else:
            out["peak_bytes"] = self.memory.predict(b)
            out["peak_lo"], out["peak_hi"] = self.memory.interval(b)
        return out

    def diagnostics(self) -> dict[str, Any]:
        acc = self.accuracy
        described = (f"{acc.gp_.kernel_}, interval std x {acc.std_scale_:.2f}" if acc.kind == "gp"
                     else "quantile gradient boosting")
        return {"coverage": acc.coverage, "train_size": self.train_size,
                "accuracy": {"model": acc.kind, "fitted": described, "trials": self.accuracy_trials,
                             "diverged_trials": len(self.diverged)},
                "throughput": {"law": "s/sample = beta + alpha/b + gamma/(a*b)",
                               "alpha_s": self.throughput.alpha_, "beta_s": self.throughput.beta_,
                               "gamma_s": self.throughput.gamma_,
                               "log_residual_sd": self.throughput.log_sd_,
                               "dof": self.throughput.dof_, "trials": self.throughput_trials},
                "memory": self.memory.diagnostics() if self.memory else None}


def fit_tradeoff(df: pd.DataFrame, spec: StudySpec, memory_model: Optional[dict[str, Any]], *,
                 kind: str = "gp", coverage: float = COVERAGE,
                 random_state: int = 0) -> TradeoffFit:
    """Fit the three models to a ``trials_frame`` table (at least one timed trial)."""
    acc_df, div_df = accuracy_rows(df), diverged_rows(df)
    thr_df, mem_df = throughput_rows(df), memory_rows(df)
    if thr_df.empty:
        raise AutobatchError("no trial of this study recorded a throughput")
    as_float = lambda col: col.to_numpy(dtype=float, na_value=np.nan)  # noqa: E731
    accuracy = AccuracyModel(kind=kind, coverage=coverage, random_state=random_state).fit(
        accuracy_features(as_float(acc_df["batch_size"]), as_float(acc_df["lr_multiplier"]),
                          as_float(acc_df["accumulation_steps"])),
        as_float(acc_df["val_accuracy"]))
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
                       accuracy_trials=len(acc_df), throughput_trials=len(thr_df))
