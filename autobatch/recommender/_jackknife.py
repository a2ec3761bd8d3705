"""Epoch-time and peak-memory intervals calibrated on the study's own trials: the jackknife.

The throughput law's interval (``ThroughputModel``: a t band on log residuals) and the memory
band (``MemoryFit``: a bound on the peaks seen) are each a model's statement about its own
fit. Neither is checked against a run the model did not see. The calibration here is the
jackknife (Barber, Candès, Ramdas & Tibshirani 2021, "Predictive inference with the
jackknife+", Annals of Statistics 49(1), Section 2: the interval ``mu(x) ± q``, ``q`` the
``ceil((n + 1) * coverage)``-th smallest absolute leave-one-out residual; its coverage holds
for a stable fit, which a three-parameter law on a few dozen runs is): each trial left out in
turn, the model refitted on the rest and asked for the left-out trial, on the log scale (the
errors of a throughput or a peak are relative). The interval at a setting is the wider of the
model's and ``prediction / f .. prediction * f`` with ``f = exp(q)``, so it is positive by
construction: an epoch time or a peak never has an end below zero.

Kept apart from the fits (``_throughput``, ``_memory_fit``): the refits only call them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ._calibration import conformal_quantile
from ._memory_fit import fit_memory
from ._throughput import fit_law, law

MIN_JACKKNIFE = 4   # fewer runs than this: no refit is trusted, the model's interval stands


def leave_one_out_log_residuals(y: Sequence[float],
                                predict_without: Callable[[int], Optional[float]]) -> np.ndarray:
    """``log(y_i) - log(predict_without(i))`` for every ``i`` where both are positive and
    finite (``predict_without(i)``: the model refitted without run ``i``, predicting it; None
    where it cannot be refitted). Shape ``(m,)``, ``m <= len(y)``."""
    out = []
    for i, value in enumerate(y):
        predicted = predict_without(i)
        if predicted is not None and value > 0 and predicted > 0 and math.isfinite(predicted) and math.isfinite(value):
            out.append(math.log(value) - math.log(predicted))
    return np.asarray(out, dtype=float)


def jackknife_factor(log_residuals: Sequence[float], coverage: float) -> float:
    """``exp(q)``, ``q`` the conformal quantile (``_calibration.conformal_quantile``) of the
    absolute leave-one-out log residuals: the multiplicative half-width of a ``coverage``
    interval (>= 1). 1.0 (no widening) for fewer than ``MIN_JACKKNIFE`` residuals."""
    r = np.asarray(log_residuals, dtype=float)
    if r.size < MIN_JACKKNIFE:
        return 1.0
    return float(math.exp(conformal_quantile(np.abs(r), coverage)))


def widen_ratio(mean: Any, low: Any, high: Any, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The wider of ``[low, high]`` and ``[mean / factor, mean * factor]`` (arrays or
    scalars, positive ``mean``), the low end never below zero. Raises ``ValueError`` for a
    factor below 1."""
    if not factor >= 1:
        raise ValueError(f"a multiplicative half-width is >= 1, got {factor}")
    m = np.asarray(mean, dtype=float)
    lo = np.maximum(0.0, np.minimum(np.asarray(low, dtype=float), m / factor))
    return lo, np.maximum(np.asarray(high, dtype=float), m * factor)


def throughput_factor(batch_sizes: Any, accumulation: Any, throughput: Any, coverage: float) -> float:
    """``jackknife_factor`` of the throughput law (``ThroughputModel``) over the timed trials:
    each refitted without one trial (``(n,)`` arrays; samples/s). The refits are the law's own
    fit (``fit_law``) without the estimator's input checks, done once on all trials."""
    b = np.asarray(batch_sizes, dtype=float)
    a = np.asarray(accumulation, dtype=float)
    y = np.asarray(throughput, dtype=float)
    if len(y) < MIN_JACKKNIFE:
        return 1.0

    def without(i: int) -> float:
        keep = np.arange(len(y)) != i
        alpha, beta, gamma, _ = fit_law(b[keep], a[keep], y[keep])
        return float(law(alpha, beta, gamma, b[i:i + 1], a[i:i + 1])[0])

    return jackknife_factor(leave_one_out_log_residuals(y, without), coverage)


def memory_factor(batch_sizes: Any, peaks: Any, stored: Optional[dict], coverage: float) -> float:
    """``jackknife_factor`` of the peak-memory fit (``fit_memory``, with the study's stored
    estimate ``stored``) over the trials' measured peaks: each refitted without one trial (at a
    micro-batch other trials measured, the prediction is then their largest peak; elsewhere the
    estimate's). ``(n,)`` arrays, bytes.

    Computed as that rule says rather than by refitting every time: the largest peak of the
    others at the same micro-batch where there is one, else the stored estimate's prediction
    (which no trial changes), else, without an estimate, ``fit_memory`` refitted on the others
    (only for a micro-batch no other trial measured)."""
    b = np.asarray(batch_sizes, dtype=float)
    y = np.asarray(peaks, dtype=float)
    if len(y) < MIN_JACKKNIFE:
        return 1.0
    sizes = b.astype(int)
    estimate = fit_memory(b, y, stored, coverage) if stored else None

    def without(i: int) -> Optional[float]:
        same = sizes == sizes[i]
        same[i] = False
        if same.any():  # MemoryFit.measured: the largest peak there (from 0.0 up)
            return max(0.0, float(y[same].max()))
        if estimate is not None:
            return float(estimate.model_predict(int(sizes[i])))
        keep = np.arange(len(y)) != i
        fit = fit_memory(b[keep], y[keep], None, coverage)
        return None if fit is None else float(fit.predict(b[i:i + 1])[0])

    return jackknife_factor(leave_one_out_log_residuals(y, without), coverage)
