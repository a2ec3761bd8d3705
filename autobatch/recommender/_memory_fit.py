"""Peak memory of a micro-batch in the recommender: the probe's stored line checked against the
trials' measured peaks, or a line fitted to them, with an interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy import optimize

from ._intervals import COVERAGE, t_quantile


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
            half = t_quantile(self.coverage, self.n - 1) * self.residual_sd * math.sqrt(1 + 1 / self.n)
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
        half = t_quantile(self.coverage, self.n - 2) * self.residual_sd * np.sqrt(leverage)
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
