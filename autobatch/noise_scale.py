"""The gradient noise scale and the critical batch: pure math on gradient norms (numpy only).

McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch Training"
(arXiv:1812.06162):

- §2.2: the simple noise scale ``B_simple = tr(Σ) / |G|²``, with ``G`` the true gradient and
  ``Σ`` the per-sample gradient covariance; it estimates ``B_noise``, and the critical batch
  ``B_crit = E_min / S_min`` is about ``B_noise`` (§2.3).
- §2.3: the steps and samples a target needs at batch ``B``: ``S = S_min (1 + B_noise / B)``
  and ``E = E_min (1 + B / B_noise)``.
- Appendix A.1: since ``E|G_B|² = |G|² + tr(Σ) / B`` for a batch of ``B`` samples, norms at two
  batch sizes give unbiased estimates
  ``|G|² ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)`` and
  ``tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)``; each estimate is noisy, so the
  paper averages both over steps with exponential moving averages and takes the ratio of the
  averages (never the average of ratios, which the noise in ``|G|²`` near 0 biases).

Qiao et al. (2021, OSDI), "Pollux", §3.1: statistical efficiency relative to a base batch
``M0``, ``EFFICIENCY(M) = (B_noise + M0) / (B_noise + M)`` (the ``E`` model above), and
``GOODPUT(M) = THROUGHPUT(M) × EFFICIENCY(M)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

EMA_DECAY = 0.95         # per optimizer step: averages about the last 20 steps
BOOTSTRAP_RESAMPLES = 200
INTERVAL = 0.8           # central coverage of the bootstrap interval


def gradient_estimates(small_sq: np.ndarray | float, big_sq: np.ndarray | float, *, b_small: float,
                       b_big: float) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased estimates ``(|G|², tr(Σ))`` from squared gradient norms measured at two batch
    sizes (McCandlish et al. 2018, Appendix A.1). ``small_sq``/``big_sq``: ``|G_B|²`` of mean
    gradients over ``b_small``/``b_big`` samples (scalars or arrays of equal shape, one entry per
    measurement). Raises ``ValueError`` unless ``0 < b_small < b_big``."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    small, big = np.asarray(small_sq, dtype=float), np.asarray(big_sq, dtype=float)
    grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace


def simple_noise_scale(grad_sq: float, trace: float) -> float:
    """``B_simple = tr(Σ) / |G|²`` (McCandlish et al. 2018, §2.2), in samples; ``inf`` when the
    estimate of ``|G|²`` is not positive (the gradient is lost in its noise)."""
    return float(trace / grad_sq) if grad_sq > 0 else math.inf


def ema(values: Sequence[float], decay: float = EMA_DECAY) -> np.ndarray:
    """Bias-corrected exponential moving average after each value (Adam's correction: the
    average of the first ``n`` values divides by ``1 − decay**n``)."""
    out, acc = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        acc = decay * acc + (1 - decay) * float(v)
        out[i] = acc / (1 - decay ** (i + 1))
    return out


@dataclass(frozen=True, kw_only=True)
class NoiseScale:
    """A measured simple noise scale. ``b_simple``: ``tr(Σ)/|G|²`` in samples (the ratio of
    the averaged estimates); ``interval``: its bootstrap interval over the measurements
    (``INTERVAL`` coverage; None from fewer than 3; its upper end ``inf`` when some resamples
    do not resolve ``|G|²``); ``grad_sq``/``trace``: the averaged
    estimates; ``b_small``/``b_big``: the two batch sizes; ``measurements``: pairs of norms."""

    b_simple: float
    interval: Optional[tuple[float, float]]
    grad_sq: float
    trace: float
    b_small: int
    b_big: int
    measurements: int

    def to_dict(self) -> dict:
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 - JSON has no inf
        return {"b_simple": finite(self.b_simple), "grad_sq": self.grad_sq, "trace": self.trace,
                "interval": None if self.interval is None else [finite(v) for v in self.interval],
                "b_small": self.b_small, "b_big": self.b_big, "measurements": self.measurements}


def noise_scale(small_sq: Sequence[float], big_sq: Sequence[float], *, b_small: int, b_big: int,
                seed: int = 0) -> NoiseScale:
    """``B_simple`` from paired norms (one pair per optimizer step or probe draw): the ratio of
    the mean ``tr(Σ)`` and ``|G|²`` estimates, and its bootstrap interval (pairs resampled with
    replacement, ``BOOTSTRAP_RESAMPLES`` times, seeded). Raises ``ValueError`` with no pair."""
    grad_sq, trace = gradient_estimates(small_sq, big_sq, b_small=b_small, b_big=b_big)
    n = len(grad_sq)
    if n == 0:
        raise ValueError("no gradient norm measured")
    g, t = float(grad_sq.mean()), float(trace.mean())
    interval = None
    if n >= 3:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
        gs, ts = grad_sq[idx].mean(axis=1), trace[idx].mean(axis=1)
        ratios = np.where(gs > 0, ts / np.where(gs > 0, gs, 1.0), np.inf)
        tail = (1 - INTERVAL) / 2
        # order statistics, not interpolation: the upper end may be inf (|G|² not resolved)
        interval = (float(np.quantile(ratios, tail, method="lower")),
                    float(np.quantile(ratios, 1 - tail, method="higher")))
    return NoiseScale(b_simple=simple_noise_scale(g, t), interval=interval, grad_sq=g, trace=t,
                      b_small=int(b_small), b_big=int(b_big), measurements=n)


def noise_scale_series(small_sq: Sequence[float], big_sq: Sequence[float], *, b_small: int, b_big: int,
                       decay: float = EMA_DECAY) -> np.ndarray:
    """``B_simple`` after each measurement as the paper tracks it over training: the ratio of the
    EMAs of ``tr(Σ)`` and ``|G|²`` (McCandlish et al. 2018, Appendix A.1); ``inf`` where the
    averaged ``|G|²`` is not positive."""
    grad_sq, trace = gradient_estimates(small_sq, big_sq, b_small=b_small, b_big=b_big)
    g, t = ema(grad_sq, decay), ema(trace, decay)
    return np.where(g > 0, t / np.where(g > 0, g, 1.0), np.inf)


# --- the steps / samples model and its fit ---------------------------------------------------

def steps_needed(batch: np.ndarray | float, *, s_min: float, b_noise: float) -> np.ndarray:
    """Optimizer steps to a target at batch ``B``: ``S_min (1 + B_noise / B)`` (McCandlish et
    al. 2018, §2.3)."""
    return s_min * (1 + b_noise / np.asarray(batch, dtype=float))


def samples_needed(batch: np.ndarray | float, *, e_min: float, b_noise: float) -> np.ndarray:
    """Training samples to a target at batch ``B``: ``E_min (1 + B / B_noise)`` (§2.3)."""
    return e_min * (1 + np.asarray(batch, dtype=float) / b_noise)


@dataclass(frozen=True, kw_only=True)
class StepsFit:
    """``S = S_min (1 + B_noise / B)`` fitted to (batch, steps) points: ``s_min`` steps,
    ``b_noise`` samples, ``e_min = S_min B_noise`` samples, and the fit's relative RMS error."""

    s_min: float
    b_noise: float
    rms_relative_error: float
    points: int

    @property
    def e_min(self) -> float:
        return self.s_min * self.b_noise


def fit_steps(batches: Sequence[float], steps: Sequence[float]) -> StepsFit:
    """Least squares of ``S = S_min + (S_min B_noise) / B``, linear in ``1/B``, weighted by
    ``1/S`` (relative errors: small batches need many steps and would dominate otherwise).
    Raises ``ValueError`` with fewer than 2 distinct batches or a fit with ``S_min <= 0`` or
    ``B_noise <= 0`` (the points do not follow the model)."""
    b, s = np.asarray(batches, dtype=float), np.asarray(steps, dtype=float)
    if len(np.unique(b)) < 2 or len(b) != len(s):
        raise ValueError("need steps at 2 or more distinct batch sizes")
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1) / s[:, None]
    (s_min, slope), *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
    if not (s_min > 0 and slope > 0):
        raise ValueError(f"steps do not follow S = S_min (1 + B_noise / B): S_min {s_min:.3g}, "
                         f"S_min B_noise {slope:.3g}")
    b_noise = float(slope / s_min)
    predicted = steps_needed(b, s_min=float(s_min), b_noise=b_noise)
    rms = float(np.sqrt(np.mean(((predicted - s) / s) ** 2)))
    return StepsFit(s_min=float(s_min), b_noise=b_noise, rms_relative_error=rms, points=len(b))


# --- Pollux-style goodput -------------------------------------------------------------------

def statistical_efficiency(batch: np.ndarray | float, *, b_noise: float, base_batch: float = 0.0) -> np.ndarray:
    """Progress per sample at batch ``M`` relative to ``base_batch`` ``M0``:
    ``(B_noise + M0) / (B_noise + M)`` (Qiao et al. 2021, §3.1; ``E_min/E`` of McCandlish et al.
    when ``M0 = 0``). In (0, 1] for ``M >= M0``."""
    return (b_noise + base_batch) / (b_noise + np.asarray(batch, dtype=float))


def goodput(batch: np.ndarray | float, throughput: np.ndarray | float, *, b_noise: float,
            base_batch: float = 0.0) -> np.ndarray:
    """``throughput(M) × statistical_efficiency(M)`` (Qiao et al. 2021, §3.1): training samples
    per second, each worth what a sample at ``base_batch`` is worth."""
    return np.asarray(throughput, dtype=float) * statistical_efficiency(batch, b_noise=b_noise,
                                                                        base_batch=base_batch)

