"""Validation accuracy of a setting with uncertainty: ``AccuracyModel``, a scikit-learn regressor."""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import threading
import warnings
from typing import Any, Optional

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController

from ._calibration import loo_residuals
from ._likelihood import FusedLBFGS
from ._intervals import COVERAGE, z_quantile

ACCURACY_KINDS = ("gp", "quantile_gbm")
# The fitted states of the last few fits, by ``AccuracyModel._fit_key`` (``AccuracyModel.fit``).
_FITTED: "collections.OrderedDict[bytes, dict[str, Any]]" = collections.OrderedDict()
_FITTED_KEPT = 4
_FITTED_LOCK = threading.Lock()


def forget_fits() -> None:
    """Drop the fitted states ``AccuracyModel.fit`` keeps (a benchmark timing repeated fits)."""
    with _FITTED_LOCK:
        _FITTED.clear()


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


@functools.lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """The process's thread pools, looked up once (``threadpool_limits`` scans the loaded
    libraries on every call: ~1.3 ms a fit). The BLAS is NumPy's and SciPy's, loaded by now."""
    return ThreadpoolController()


class AccuracyModel(RegressorMixin, BaseEstimator):
    """Validation accuracy with uncertainty; a scikit-learn regressor.

    ``kind="gp"`` (default): ``GaussianProcessRegressor`` on min-max scaled inputs with
    ``C * Matern(nu=2.5, one length scale per input) + WhiteKernel`` and ``normalize_y``.
    The interval is ``mean ± z * std`` where ``std`` includes the fitted white noise, so it is
    a prediction interval for a new run, not a band for the mean (80%: ``z = 1.2816``).

    ``kind="quantile_gbm"``: three ``GradientBoostingRegressor(loss="quantile")`` models (the
    interval's two ends and the median).

    ``noise_floor`` (metric units squared, e.g. ``_calibration.seed_noise``'s pooled variance of
    repeated settings): the white noise is kept at or above it, so seed-to-seed spread measured
    by repeats is in every predictive interval even when maximum likelihood would explain it
    away with a wiggly mean.

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
    against ~250 ms (~15 ms since its likelihood is computed in one pass, ``_likelihood``: the
    same optimizer from the same starts, the same fitted model). On large studies the kernel's
    hyperparameters are fitted on ``max_fit_points`` trials (``_fit_subset``), so a 200-trial
    study fits in a tenth of the time.
    """

    def __init__(self, kind: str = "gp", coverage: float = COVERAGE,
                 n_restarts_optimizer: int = 2, random_state: Optional[int] = 0,
                 max_fit_points: Optional[int] = 48, noise_floor: float = 0.0) -> None:
        self.kind = kind
        self.noise_floor = noise_floor
        self.coverage = coverage
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state
        self.max_fit_points = max_fit_points

    def fit(self, X: Any, y: Any) -> "AccuracyModel":
        """Fit to ``X`` (n, 3) ``accuracy_features`` and ``y`` (n,) metric values. A fit of the
        same data with the same parameters and a fixed ``random_state`` as one of the last
        ``_FITTED_KEPT`` in this process takes that fit's fitted state (the fit is
        deterministic: ``tune`` fits the study again after verifying the answer, usually to
        the same data). Raises ``ValueError`` for an unknown ``kind`` or a ``coverage`` outside (0, 1)."""
        if self.kind not in ACCURACY_KINDS:
            raise ValueError(f"kind must be one of {ACCURACY_KINDS}, got {self.kind!r}")
        if not 0 < self.coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {self.coverage!r}")
        X, y = validate_data(self, X, y, y_numeric=True)
        y = y.astype(float)
        key = self._fit_key(X, y)
        with _FITTED_LOCK:
            state = _FITTED.get(key) if key is not None else None
            if state is not None:
                _FITTED.move_to_end(key)
        if state is not None:
            vars(self).update(state)
            return self
        self._fit(X, y)
        if key is not None:
            with _FITTED_LOCK:
                _FITTED[key] = {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}
                while len(_FITTED) > _FITTED_KEPT:
                    _FITTED.popitem(last=False)
        return self

    def _fit_key(self, X: np.ndarray, y: np.ndarray) -> Optional[bytes]:
        """What a fit's result depends on (parameters and data, exactly), None when it is not
        reproducible (no fixed ``random_state``)."""
        if self.random_state is None or not isinstance(self.random_state, (int, np.integer)):
            return None
        h = hashlib.blake2b(digest_size=20)
        h.update(repr((self.kind, float(self.coverage), self.n_restarts_optimizer, int(self.random_state),
                       self.max_fit_points, float(self.noise_floor), X.shape, X.dtype.str, y.dtype.str)).encode())
        h.update(np.ascontiguousarray(X).tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
        return h.digest()

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.x_min_ = X.min(axis=0)
        span = X.max(axis=0) - self.x_min_
        self.x_scale_ = np.where(span > 0, span, 1.0)
        Z = self._scaled(X)
        self.y_ = y
        if self.kind == "gp":
            # normalize_y divides y by its std: the floor in those units (it may exceed the
            # trials' whole spread when they barely differ; the bound's top then moves above it)
            y_var = float(np.var(y)) if len(y) > 1 and np.var(y) > 0 else 1.0
            floor = max(1e-5, float(self.noise_floor) / y_var)
            kernel = (ConstantKernel(1.0, (1e-2, 1e2))
                      * Matern(length_scale=np.full(X.shape[1], 0.5),
                               length_scale_bounds=(5e-2, 1e2), nu=2.5)
                      + WhiteKernel(max(0.1, floor), (floor, max(1.0, 2 * floor))))
            subset = self._fit_subset(len(y))
            restarts = self.n_restarts_optimizer if len(subset) == len(y) else min(1, self.n_restarts_optimizer)
            gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts,
                                          random_state=self.random_state,
                                          optimizer=FusedLBFGS(Z[subset], y[subset]))
            # One BLAS thread: the matrices are at most max_fit_points (48) wide, where a thread
            # pool's start-up and spinning cost more than the work (0.5 s against 0.07 s for a
            # 200-trial study on a busy 2-core machine, scripts/bench_speed.py).
            with warnings.catch_warnings(), _blas().limit(limits=1, user_api="blas"):
                warnings.simplefilter("ignore", ConvergenceWarning)  # bound hits are expected on small studies
                self.gp_ = gp.fit(Z[subset], y[subset])
                if len(subset) < len(y):  # hyperparameters from the subset, conditioned on all
                    self.gp_ = GaussianProcessRegressor(self.gp_.kernel_, normalize_y=True,
                                                        optimizer=None).fit(Z, y)
            self.std_scale_ = _loo_std_scale(self.gp_, self.coverage)
        else:
            from sklearn.ensemble import GradientBoostingRegressor  # here: sklearn.ensemble takes ~1 s to import

            low = (1 - self.coverage) / 2
            self.quantile_models_ = tuple(
                GradientBoostingRegressor(loss="quantile", alpha=q, n_estimators=150,
                                          max_depth=2, learning_rate=0.05, min_samples_leaf=2,
                                          random_state=self.random_state).fit(Z, y)
                for q in (low, 0.5, 1 - low)
            )

    def _fit_subset(self, n: int) -> np.ndarray:
        """Rows the kernel's hyperparameters are fitted on: all of them, or ``max_fit_points``
        drawn at random (seeded), searched from two starts instead of three. The
        maximum-likelihood search costs O(n^2 d) per step with a Cholesky of O(n^3); a smooth
        surface's length scales and noise are as well determined by 48 trials as by 200, and the
        GP is then conditioned on every trial, its interval widened by the leave-one-out factor of
        all of them. Measured on 6 synthetic known-law studies each (held-out 80% intervals,
        ``bench_recommend.synthetic_datasets``): at 100 trials coverage 0.787 against 0.776 for
        the full fit, RMSE 0.0132 against 0.0133; at 200 trials 0.799 against 0.804, RMSE 0.0112
        both; fit 0.32 s against 3.8 s at 200 trials (a busy 2-core machine)."""
        if self.max_fit_points is None or n <= self.max_fit_points:
            return np.arange(n)
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.choice(n, size=self.max_fit_points, replace=False))

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return (X - self.x_min_) / self.x_scale_

    def _mean_low_high(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        check_is_fitted(self, "x_min_")
        Z = self._scaled(validate_data(self, X, reset=False))
        if self.kind == "gp":
            mean, std = self.gp_.predict(Z, return_std=True)
            half = z_quantile(self.coverage) * std * self.std_scale_
            return mean, mean - half, mean + half
        low, mid, high = (m.predict(Z) for m in self.quantile_models_)
        return mid, np.minimum(low, mid), np.maximum(high, mid)  # no crossing quantiles

    def predict(self, X: Any, return_std: bool = False) -> Any:
        """Predicted accuracy; with ``return_std`` also its predictive standard deviation."""
        mean, low, high = self._mean_low_high(X)
        if return_std:
            return mean, (high - low) / (2 * z_quantile(self.coverage))
        return mean

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ends of the ``coverage`` prediction interval."""
        _, low, high = self._mean_low_high(X)
        return low, high

    def loo(self) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Leave-one-out ``(residuals y_i - mu_{-i}, predictions mu_{-i}, predictive sds)`` of
        the training trials, closed form (``_calibration.loo_residuals``); None for
        ``quantile_gbm``."""
        check_is_fitted(self, "x_min_")
        if self.kind != "gp":
            return None
        residual, sd = loo_residuals(self.gp_.L_, self.gp_.alpha_, float(np.ravel(self.gp_._y_train_std)[0]))
        return residual, self.y_ - residual, sd


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
    return max(1.0, float(np.sort(z)[rank - 1]) / z_quantile(coverage))
