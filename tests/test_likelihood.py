"""The accuracy GP's fused log marginal likelihood: the same numbers as scikit-learn's, and the
same fitted model when its optimizer uses them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

from autobatch.recommender import AccuracyModel, accuracy_features
from autobatch.recommender._accuracy import forget_fits
from autobatch.recommender._likelihood import FusedLBFGS, matern52_ard_lml


def _kernel(d: int) -> object:
    return (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.full(d, 0.5), (5e-2, 1e2), nu=2.5)
            + WhiteKernel(0.1, (1e-5, 1.0)))


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch x lr surface with a ridge in lr, as the recommender sees it (scaled to [0, 1])."""
    rng = np.random.default_rng(seed)
    b = 2.0 ** rng.integers(3, 9, n)
    a = 2.0 ** rng.integers(0, 3, n)
    m = np.exp(rng.uniform(-2, 2, n))
    X = accuracy_features(b, m, a)
    y = 0.9 - 0.02 * np.log(m) ** 2 - 0.01 * np.log2(b * a) + rng.normal(0, 0.01, n)
    return X, y


@pytest.mark.parametrize("seed", range(4))
def test_value_and_gradient_are_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    X, y = rng.random((9, 3)), rng.standard_normal(9)
    gp = GaussianProcessRegressor(_kernel(3), optimizer=None).fit(X, y)  # alpha 1e-10, unnormalized y
    for _ in range(5):
        theta = rng.uniform(gp.kernel_.bounds[:, 0], gp.kernel_.bounds[:, 1])
        theirs, their_grad = gp.log_marginal_likelihood(theta, eval_gradient=True)
        mine, my_grad = matern52_ard_lml(theta, X, y)
        assert mine == pytest.approx(theirs, rel=1e-10)
        np.testing.assert_allclose(my_grad, their_grad, rtol=1e-8, atol=1e-10)


def test_gradient_is_the_derivative_of_the_value():
    X, y = _data(12, 3)
    theta = np.array([0.3, -0.7, 0.4, 1.1, -3.0])
    numeric = approx_fprime(theta, lambda t: matern52_ard_lml(t, X, y)[0], 1e-6)
    np.testing.assert_allclose(matern52_ard_lml(theta, X, y)[1], numeric, rtol=1e-4, atol=1e-4)


def test_a_covariance_that_is_not_positive_definite_has_no_likelihood():
    X = np.zeros((3, 2))  # one point three times, no noise and no jitter: a singular K
    lml, grad = matern52_ard_lml(np.array([0.0, 0.0, 0.0, -np.inf]), X, np.array([1.0, -1.0, 0.0]), jitter=0.0)
    assert lml == -np.inf and not grad.any()


@pytest.mark.parametrize("n,seed", [(8, 0), (12, 1), (15, 2), (40, 3), (120, 4)])
def test_the_accuracy_model_fits_what_scikit_learns_own_optimizer_fits(n, seed, monkeypatch):
    X, y = _data(n, seed)
    Xt, _ = _data(50, seed + 100)
    forget_fits()
    fused = AccuracyModel().fit(X, y)
    if n <= 48:  # above it, the kernel fitted on 48 trials is conditioned on all of them unoptimized
        assert fused.gp_.optimizer.fallbacks == 0  # every start ran on the fused objective

    class Default(FusedLBFGS):  # scikit-learn's objective, through the same optimizer
        def objective(self, theta):
            raise AssertionError("not used")

        def __call__(self, obj_func, initial_theta, bounds):
            from scipy import optimize
            result = optimize.minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds)
            return result.x, float(result.fun)

    monkeypatch.setattr("autobatch.recommender._accuracy.FusedLBFGS", Default)
    forget_fits()  # a fit of the same data would take the fused fit's state
    default = AccuracyModel().fit(X, y)
    if n <= 48:
        assert type(default.gp_.optimizer) is Default
    assert default.gp_ is not fused.gp_
    assert fused.gp_.log_marginal_likelihood_value_ == pytest.approx(
        default.gp_.log_marginal_likelihood_value_, abs=1e-6)
    np.testing.assert_allclose(fused.predict(Xt), default.predict(Xt), atol=1e-5)
    for mine, theirs in zip(fused.predict_interval(Xt), default.predict_interval(Xt)):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_another_kernel_falls_back_to_the_regressors_own_objective():
    X, y = _data(12, 5)
    optimizer = FusedLBFGS(X, y)
    gp = GaussianProcessRegressor(ConstantKernel() * RBF(np.ones(3)) + WhiteKernel(), normalize_y=True,
                                  optimizer=optimizer, random_state=0).fit(X, y)
    reference = GaussianProcessRegressor(ConstantKernel() * RBF(np.ones(3)) + WhiteKernel(), normalize_y=True,
                                         random_state=0).fit(X, y)
    assert optimizer.fallbacks == 1
    assert gp.log_marginal_likelihood_value_ == pytest.approx(reference.log_marginal_likelihood_value_, rel=1e-6)


def test_a_fit_of_the_same_data_takes_the_last_fits_state_and_nothing_else_does():
    X, y = _data(12, 7)
    Xt, _ = _data(30, 8)
    first = AccuracyModel().fit(X, y)
    again = AccuracyModel().fit(X.copy(), y.copy())
    assert again.gp_ is first.gp_  # not fitted again
    forget_fits()
    fresh = AccuracyModel().fit(X, y)  # the premise: a fit of the same data gives the same model
    assert fresh.gp_ is not first.gp_
    np.testing.assert_array_equal(fresh.predict_interval(Xt), first.predict_interval(Xt))
    assert fresh.std_scale_ == first.std_scale_
    # anything the fit depends on differing fits anew: the data, a parameter, no fixed seed
    y2 = y.copy()
    y2[3] += 1e-12
    assert AccuracyModel().fit(X, y2).gp_ is not first.gp_
    assert AccuracyModel(noise_floor=1e-4).fit(X, y).gp_ is not first.gp_
    assert AccuracyModel(n_restarts_optimizer=1).fit(X, y).gp_ is not first.gp_
    assert AccuracyModel(random_state=1).fit(X, y).gp_ is not first.gp_
    unseeded = AccuracyModel(random_state=None).fit(X, y)
    assert AccuracyModel(random_state=None).fit(X, y).gp_ is not unseeded.gp_
