"""Fitting a memory form to measured peaks, and its prediction interval. Pure: numpy/scipy.

``points`` are ``(b, peak_bytes)`` pairs: micro-batch sizes >= 1 and finite peaks >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from ._forms import Affine, MemoryModel, Piecewise, Quadratic, TwoRegime

Point = tuple[int, float]  # (micro-batch size, peak bytes)


def clean_points(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct sizes and the largest peak at each. ``ValueError`` on fewer than 2
    distinct sizes or bad values."""
    best: dict[int, float] = {}
    for b, y in points:
        if int(b) < 1 or not math.isfinite(y) or y < 0:
            raise ValueError(f"points need sizes >= 1 and finite peaks >= 0, got ({b}, {y})")
        best[int(b)] = max(float(y), best.get(int(b), 0.0))
    if len(best) < 2:
        raise ValueError(f"a memory model needs peaks at 2 or more distinct micro-batch sizes, got {sorted(best)}")
    sizes = sorted(best)
    return np.array(sizes, dtype=float), np.array([best[s] for s in sizes])


def _nonneg_poly(b: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """Least squares ``y ~ sum c_k b^k`` with every ``c_k >= 0`` (scipy NNLS, b scaled to <= 1)."""
    scale = b.max()
    coef, _ = nnls(np.vander(b / scale, degree + 1, increasing=True), y)
    return coef / scale ** np.arange(degree + 1)


def _line(b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``, the slope clamped at 0 (then intercept = max y)."""
    slope, intercept = np.polyfit(b, y, 1)
    return (float(intercept), float(slope)) if slope >= 0 else (float(y.max()), 0.0)


def _max_residual(model: MemoryModel, b: np.ndarray, y: np.ndarray) -> float:
    return max(abs(model.predict(int(s)) - v) for s, v in zip(b, y))


def _two_regime(b: np.ndarray, y: np.ndarray) -> TwoRegime:
    """Best split: a non-negative line (flat for one point) through the first k points is the
    step regime, a least-squares line through the other (>= 2) points the activation regime."""
    fits = []
    for k in range(1, len(b) - 1):
        step, step_ps = _nonneg_poly(b[:k], y[:k], 1) if k > 1 else (y[0], 0.0)
        fixed, per = _line(b[k:], y[k:])
        model = TwoRegime(step_bytes=float(step), step_per_sample_bytes=float(step_ps),
                          fixed_bytes=fixed, per_sample_bytes=per)
        fits.append((_max_residual(model, b, y), k, model))
    return min(fits, key=lambda f: f[:2])[2]


def fit(points: Sequence[Point], *, tol: float = 0.01, noise: float = 1e-3) -> MemoryModel:
    """The simplest form that explains ``points`` (any order; a repeated size keeps its largest
    peak). ``ValueError`` with fewer than 2 distinct sizes or bad values.

    Candidates come in groups by number of parameters: affine (2) < {two_regime, quadratic}
    (3, need >= 3 sizes) < piecewise (n, exact). A candidate explains the points when at every
    point ``|residual| <= tol * (peak - smallest peak) + noise * largest peak + 1 B``: misfit is
    judged against the growth the batch causes at that point, not against the whole peak, so a
    large optimizer-step floor cannot hide a 5x change of slope, and the clustered small sizes
    cannot be sacrificed to a far one. The first group with a candidate that explains wins; in
    it the smallest largest-residual, and among candidates within ``noise * largest peak`` of
    that (points that cannot tell them apart) the one predicting more at twice the largest size:
    the safe side of the extrapolation. Affine/quadratic coefficients are non-negative (NNLS),
    the two-regime slopes too. Last, the curve is shifted up by its largest shortfall, so it
    never predicts less than was measured at a measured size.
    """
    b, y = clean_points(points)
    allowed = tol * (y - y.min()) + noise * float(y.max()) + 1.0  # per point, bytes
    fixed, per = _nonneg_poly(b, y, 1)
    affine = Affine(fixed_bytes=float(fixed), per_sample_bytes=float(per))
    groups: list[list[MemoryModel]] = [[affine]]
    if len(b) >= 3:
        f0, f1, f2 = (float(c) for c in _nonneg_poly(b, y, 2))
        groups.append([_two_regime(b, y), Quadratic(fixed_bytes=f0, per_sample_bytes=f1,
                                                    per_sample2_bytes=f2)])
        groups.append([Piecewise(knot_sizes=tuple(int(s) for s in b), knot_bytes=tuple(np.maximum.accumulate(y)))])
    chosen: MemoryModel = affine
    for group in groups:
        ok = [(_max_residual(m, b, y), m) for m in group
              if all(abs(m.predict(int(s)) - v) <= a for s, v, a in zip(b, y, allowed))]
        if ok:
            best = min(r for r, _ in ok)
            same = [m for r, m in ok if r <= best + noise * float(y.max())]
            chosen = max(same, key=lambda m: m.predict(int(2 * b[-1])))
            break
    shortfall = max(float(v) - chosen.predict(int(s)) for s, v in zip(b, y))
    return chosen.shifted(shortfall) if shortfall > 0 else chosen


def prediction_interval(model: MemoryModel, batch_size: int, points: Sequence[Point], *,
                        rel_floor: float = 0.05) -> tuple[float, float]:
    """``(predict/f, predict*f)`` bytes at ``batch_size``: never below zero (every form predicts
    >= 0).

    ``f = 1 + (r - 1) * max(1, b / largest measured size)``, ``r`` the largest of
    ``1 + rel_floor`` and ``max(pred/meas, meas/pred)`` over the measured points: a
    multiplicative (log-symmetric) band that holds every measured point and widens linearly with
    the extrapolation distance. Needs 2 distinct sizes in ``points`` (``ValueError``).
    """
    b, y = clean_points(points)
    ratios = [max(p / m, m / p) for p, m in ((model.predict(int(s)), v) for s, v in zip(b, y))
              if p > 0 and m > 0]
    r = max([1.0 + rel_floor, *ratios])
    f = 1.0 + (r - 1.0) * max(1.0, batch_size / float(b[-1]))
    p = model.predict(batch_size)
    return p / f, p * f
