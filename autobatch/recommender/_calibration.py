"""Calibrating the interval at the chosen setting: seed-to-seed noise from repeated settings, the
selection-aware conformal width, and physical bounds. Pure numpy functions.

Why the accuracy model's own interval is too narrow where it matters:

- **seed noise**: two runs of one setting with different seeds differ; a GP fitted by maximum
  likelihood to a dozen trials may put that spread into its mean instead of its noise term.
  Repeats of one setting (the baselines, a deliberate early repeat, the verification runs)
  measure it directly: ``seed_noise`` pools their within-setting variance and the GP's white
  noise is kept at or above it (``AccuracyModel(noise_floor=...)``).
- **the selection effect (winner's curse)**: the chosen setting is the one whose prediction
  came out highest, so its prediction is the luckiest of many; a band that covers 80% at a
  random setting covers less at the argmax (Tibshirani & Efron; the "optimizer's curse",
  Smith & Winkler 2006, Management Science 52(3)).
- **one split selects and scores**: the trials' validation metric chose the setting.

The correction (``selective_half_width``) is split conformal prediction (Vovk, Gammerman &
Shafer 2005, "Algorithmic Learning in a Random World"; Lei, G'Sell, Rinaldo, Tibshirani &
Wasserman 2018, "Distribution-free predictive inference for regression", JASA 113(523),
Algorithm 2): the half-width is the ``ceil((k + 1) * coverage)``-th smallest absolute held-out
residual of ``k`` calibration points. The held-out residuals are the GP's closed-form
leave-one-out ones (Rasmussen & Williams 2006, eq. 5.12, ``loo_residuals``), and the calibration
points are chosen the way the answer is: the trials whose *leave-one-out prediction* ranks in
the top ``TOP_FRACTION``, so the residuals carry the optimism of a setting picked for a high
prediction (a selective, "top-k" calibration set), far extrapolations left out. The final interval is the wider of the
model's and this one, clipped to what the quantity can physically be (``clip_interval``).
The epoch-time and peak-memory intervals are calibrated the same way, by their own models'
leave-one-out refits (``_jackknife``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Optional, Sequence

import numpy as np
from scipy import linalg

TOP_FRACTION = 1 / 2    # calibration points: trials whose LOO prediction is in this top half
MIN_CALIBRATION = 5     # ... and at least this many (all trials when fewer)
FAR_SD_FACTOR = 3.0     # a trial whose leave-one-out sd exceeds this many times the median is left out


@dataclass(frozen=True)
class SeedNoise:
    """Pooled within-setting spread of repeated runs: ``variance`` (metric units squared),
    ``dof`` (sum over repeated settings of runs - 1), ``settings`` (settings run more than once)."""

    variance: float
    dof: int
    settings: int

    @property
    def sd(self) -> float:
        return math.sqrt(self.variance)


def seed_noise(values: Sequence[float], settings: Sequence[Hashable]) -> Optional[SeedNoise]:
    """Pooled variance of ``values`` within equal ``settings`` (the one-way ANOVA within-group
    mean square: ``sum_g sum_i (y_gi - mean_g)^2 / sum_g (n_g - 1)``). None when no setting
    was run twice. Raises ``ValueError`` when the two sequences differ in length."""
    if len(values) != len(settings):
        raise ValueError(f"{len(values)} values for {len(settings)} settings")
    groups: dict[Hashable, list[float]] = {}
    for y, key in zip(values, settings):
        if y is not None and math.isfinite(float(y)):
            groups.setdefault(key, []).append(float(y))
    repeated = [np.asarray(g) for g in groups.values() if len(g) > 1]
    dof = sum(len(g) - 1 for g in repeated)
    if dof == 0:
        return None
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in repeated)
    return SeedNoise(variance=ss / dof, dof=dof, settings=len(repeated))


def setting_key(batch_size: float, accumulation_steps: float, lr_multiplier: float) -> tuple:
    """A hashable key under which two runs are the same setting (lr to 6 significant digits)."""
    return int(batch_size), int(accumulation_steps), float(f"{float(lr_multiplier):.6g}")


def loo_residuals(L: np.ndarray, alpha: np.ndarray, y_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form leave-one-out residuals ``y_i - mu_{-i}`` and predictive sds of a GP
    (Rasmussen & Williams 2006, eq. 5.12): with ``K = L L^T`` the training covariance (noise
    included) and ``alpha = K^-1 y``, ``y_i - mu_{-i} = alpha_i / [K^-1]_ii`` and
    ``sigma_{-i}^2 = 1 / [K^-1]_ii``. ``y_scale``: the std by which y was normalised (both
    outputs are multiplied by it). Shapes: ``L (n, n)``, ``alpha (n,)``; outputs ``(n,)``."""
    n = L.shape[0]
    k_inv_diag = np.diag(linalg.cho_solve((L, True), np.eye(n)))
    a = np.asarray(alpha, dtype=float).ravel()
    return y_scale * a / k_inv_diag, y_scale / np.sqrt(k_inv_diag)


def conformal_quantile(scores: Iterable[float], coverage: float) -> float:
    """The ``ceil((k + 1) * coverage)``-th smallest of ``k`` non-negative scores (split
    conformal, Lei et al. 2018); the largest when that rank exceeds ``k`` (too few points for the
    guarantee: the widest seen is the honest bound). NaN for no scores."""
    s = np.sort(np.abs(np.asarray(list(scores), dtype=float)))
    if s.size == 0:
        return math.nan
    rank = math.ceil((s.size + 1) * coverage)
    return float(s[min(rank, s.size) - 1])


def calibration_set(loo_predictions: np.ndarray, top_fraction: float = TOP_FRACTION,
                    minimum: int = MIN_CALIBRATION, loo_sd: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of the trials whose leave-one-out prediction ranks in the top ``top_fraction``
    (at least ``minimum``, at most all): selected the way the answer is selected. With
    ``loo_sd``, trials whose held-out prediction was a far extrapolation (sd over
    ``FAR_SD_FACTOR`` times the median) are left out first: the answer is never such a point
    (candidates need a completed trial nearby, ``_choice.supported``)."""
    p = np.asarray(loo_predictions, dtype=float)
    keep = np.arange(p.size)
    if loo_sd is not None and p.size:
        sd = np.asarray(loo_sd, dtype=float)
        keep = np.flatnonzero(sd <= FAR_SD_FACTOR * np.median(sd))
    k = min(keep.size, max(minimum, math.ceil(top_fraction * keep.size)))
    return keep[np.argsort(-p[keep], kind="stable")[:k]]


def selective_half_width(residuals: np.ndarray, loo_predictions: np.ndarray, coverage: float, *,
                         top_fraction: float = TOP_FRACTION, minimum: int = MIN_CALIBRATION,
                         loo_sd: Optional[np.ndarray] = None) -> float:
    """Half-width of a ``coverage`` interval at a setting chosen for its high prediction: the
    conformal quantile of the absolute leave-one-out ``residuals`` over ``calibration_set``
    (see the module docstring); ``loo_sd``: leave far extrapolations out (``calibration_set``).
    Not standardised by the sds (locally weighted conformal, Lei et al. 2018, Section 5.2): where
    the GP interpolates the trials its sd at the answer is near zero and the width with it, the
    very failure this corrects (measured: 33% coverage on the synthetic studies). Not over
    all trials: a study's worst settings (a diverging lr, a
    baseline far from the optimum) have residuals of tens of points that say nothing about the
    top; measured on a 12-trial small_cnn/digits study, the all-trials quantile gave a
    [54.8%, 100%] interval. Oriented scores: higher is better. NaN for no trials."""
    r = np.abs(np.asarray(residuals, dtype=float))
    return conformal_quantile(r[calibration_set(loo_predictions, top_fraction, minimum, loo_sd)], coverage)


def calibrated_interval(mean: float, low: float, high: float, half_width: float) -> tuple[float, float]:
    """The wider of ``[low, high]`` and ``mean ± half_width`` on each side (a NaN width leaves
    the interval as it is)."""
    if not math.isfinite(half_width):
        return float(low), float(high)
    return min(float(low), mean - half_width), max(float(high), mean + half_width)


def clip_interval(low: Any, high: Any, lower: Optional[float] = 0.0,
                  upper: Optional[float] = None) -> tuple[Any, Any]:
    """``[low, high]`` clipped into ``[lower, upper]`` (None: unbounded), ends kept in order:
    a memory or time interval never starts below zero, an accuracy never leaves [0, 1].
    Works on scalars and arrays alike."""
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    if lower is not None or upper is not None:
        lo, hi = np.clip(lo, lower, upper), np.clip(hi, lower, upper)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi
