"""Training throughput of a micro-batch size and accumulation: ``ThroughputModel``, a
three-parameter law fitted by non-negative least squares; a scikit-learn regressor."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._intervals import COVERAGE, t_quantile

DEFAULT_LOG_SD = 0.10       # throughput spread assumed when the fit leaves no residual dof


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
        self.alpha_, self.beta_, self.gamma_, p = fit_law(b, a, y)
        n = len(y)
        residual = np.log(self.predict(X)) - np.log(y)
        self.dof_ = n - p
        self.log_sd_ = (float(np.sqrt(residual @ residual / self.dof_)) if self.dof_ > 0
                        else DEFAULT_LOG_SD)
        self.inflation_ = math.sqrt(1 + p / n)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "beta_")
        X = validate_data(self, X, reset=False).astype(float)
        return law(self.alpha_, self.beta_, self.gamma_, X[:, 0], X[:, 1])

    def predict_interval(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        mean = self.predict(X)
        factor = math.exp(t_quantile(self.coverage, self.dof_) * self.log_sd_ * self.inflation_)
        return mean / factor, mean * factor


def fit_law(b: np.ndarray, a: np.ndarray, samples_per_s: np.ndarray) -> tuple[float, float, float, int]:
    """``ThroughputModel``'s law fitted to micro-batches ``b``, accumulation ``a`` and measured
    samples/s (``(n,)`` float arrays, validated by the caller): ``(alpha, beta, gamma, p)``, ``p``
    the parameters the trials identify (the others fixed at 0). The jackknife's refits call it
    without the estimator's input checks."""
    seconds = 1.0 / samples_per_s
    design = np.column_stack([1 / b, np.ones_like(b), 1 / (a * b)])
    active = np.array([len(np.unique(b)) > 1, True, len(np.unique(a)) > 1])
    coef = np.zeros(3)
    coef[active], _ = optimize.nnls(design[:, active] / seconds[:, None], np.ones_like(b))
    alpha, beta, gamma = (float(c) for c in coef)
    return alpha, beta, gamma, int(active.sum())


def law(alpha: float, beta: float, gamma: float, b: Any, a: Any) -> np.ndarray:
    """Samples/s of micro-batch ``b`` with ``a`` accumulation steps under the law's parameters."""
    return 1.0 / (beta + alpha / b + gamma / (a * b))

