"""The accuracy model's Gaussian-process log marginal likelihood, in one pass.

scikit-learn's ``GaussianProcessRegressor`` evaluates the likelihood through its kernel objects:
on a dozen trials most of each evaluation is spent reading the composite kernel's
hyperparameters back (``Kernel.theta`` walks ``get_params``), ~0.35 ms a call, and a fit with
two restarts makes ~165 calls. ``matern52_ard_lml`` computes the same value and gradient for
the one kernel ``AccuracyModel`` uses, ``C * Matern(nu=2.5, one length scale per input) +
White``, with a few array operations (~0.05 ms), and ``FusedLBFGS`` hands it to the same
optimizer scikit-learn's default runs (SciPy's L-BFGS-B from the same starts), as the
regressor's ``optimizer``. The regressor keeps everything else: the restarts, the choice of the
best, the final Cholesky and the predictions.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import linalg, optimize

SQRT5 = math.sqrt(5.0)
LOG_2PI = math.log(2.0 * math.pi)


def matern52_ard_lml(theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                     jitter: float = 1e-10) -> tuple[float, np.ndarray]:
    """Log marginal likelihood of ``y`` under a zero-mean GP and its gradient in ``theta``.

    Kernel: ``k(x, x') = c * (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r) + w [x = x']`` with
    ``r^2 = sum_k (x_k - x'_k)^2 / l_k^2`` (Matern nu = 5/2, Rasmussen & Williams 2006, eq. 4.17,
    one length scale per input), plus ``jitter`` on the diagonal (the regressor's ``alpha``).

    ``theta``: shape ``(d + 2,)``, natural logs ``[ln c, ln l_1 .. ln l_d, ln w]`` (the order of
    scikit-learn's ``(C * Matern + White).theta``). ``X``: shape ``(n, d)``. ``y``: shape
    ``(n,)``, already normalized. Returns ``(log p(y | X, theta), d log p / d theta)``
    (R&W eq. 2.30 and 5.9: ``0.5 tr((a a^T - K^-1) dK/d theta_j)`` with ``a = K^-1 y``), or
    ``(-inf, zeros)`` where ``K`` is not positive definite, as scikit-learn returns.
    """
    theta = np.asarray(theta, dtype=float)
    n = X.shape[0]
    c, w = math.exp(theta[0]), math.exp(theta[-1])
    D = (X[:, None, :] - X[None, :, :]) ** 2 / np.exp(2.0 * theta[1:-1])  # (n, n, d)
    r = np.sqrt(5.0 * D.sum(axis=-1))  # sqrt(5) * distance
    e = np.exp(-r)
    M = c * (1.0 + r + r * r / 3.0) * e  # the scaled Matern part of K
    K = M.copy()
    K[np.diag_indices(n)] += w + jitter
    try:
        L = linalg.cholesky(K, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return -math.inf, np.zeros_like(theta)
    a = linalg.cho_solve((L, True), y, check_finite=False)
    lml = -0.5 * float(y @ a) - float(np.log(np.diag(L)).sum()) - 0.5 * n * LOG_2PI
    inner = np.outer(a, a) - linalg.cho_solve((L, True), np.eye(n), check_finite=False)
    grad = np.empty_like(theta)
    grad[0] = 0.5 * float(np.sum(inner * M))
    # d M / d ln l_k = c * 5/3 * D_k * (1 + sqrt(5) r) * exp(-sqrt(5) r)
    grad[1:-1] = 0.5 * np.einsum("ij,ijk->k", inner * (c * 5.0 / 3.0 * (1.0 + r) * e), D)
    grad[-1] = 0.5 * w * float(np.trace(inner))
    return lml, grad


class FusedLBFGS:
    """An ``optimizer`` for ``GaussianProcessRegressor`` (``optimizer(obj_func, initial_theta,
    bounds) -> (theta_opt, func_min)``): SciPy's L-BFGS-B, as scikit-learn's default
    ``"fmin_l_bfgs_b"``, minimizing ``-matern52_ard_lml`` on ``X`` and ``y`` (normalized here as
    the regressor does with ``normalize_y=True``).

    The regressor's own ``obj_func`` is evaluated once per start, at the start: when it does not
    agree with the fused value and gradient (relative 1e-6; a kernel or data that is not the one
    this was built for), that start is optimized on ``obj_func`` instead, as the default would.
    ``fallbacks`` counts such starts."""

    def __init__(self, X: np.ndarray, y: np.ndarray, jitter: float = 1e-10) -> None:
        self.X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        std = float(np.std(y))
        self.y = (y - np.mean(y)) / (std if std != 0.0 else 1.0)
        self.jitter = jitter
        self.fallbacks = 0

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(-log likelihood, -gradient)`` at ``theta``: what the regressor's ``obj_func`` returns."""
        lml, grad = matern52_ard_lml(theta, self.X, self.y, self.jitter)
        return -lml, -grad

    def __call__(self, obj_func: Callable, initial_theta: np.ndarray,
                 bounds: np.ndarray) -> tuple[np.ndarray, float]:
        theirs, their_grad = obj_func(initial_theta)
        mine, my_grad = self.objective(initial_theta)
        same = (np.isfinite(theirs) and np.isfinite(mine) and my_grad.shape == np.shape(their_grad)
                and np.allclose([mine, *my_grad], [theirs, *their_grad], rtol=1e-6, atol=1e-8))
        fun = self.objective if same else obj_func
        self.fallbacks += not same
        result = optimize.minimize(fun, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds)
        return result.x, float(result.fun)
