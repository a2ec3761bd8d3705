"""Peak memory of a micro-batch in the recommender: measured where trials measured it, predicted
by the study's memory estimate (or a form fitted to the trials' peaks) elsewhere, with an
interval that never goes below zero."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..memory import MemoryEstimate, MemoryModel, fit_memory_model
from ._intervals import COVERAGE

REL_FLOOR = 0.05  # the narrowest band: +-5% (the probe's target error at the boundary)


@dataclass(frozen=True, kw_only=True)
class MemoryFit:
    """Peak bytes of micro-batch ``b``.

    Prediction: at a micro-batch some trials measured, the largest peak they measured there;
    elsewhere the model's. ``source == "stored"``: the study's memory estimate (the probe's
    forms, refit from the trials' peaks by the workers; the larger of the training step and the
    evaluation at its batch). ``source == "fitted"``: no estimate was stored, so a form fitted
    to the trials' peaks (``autobatch.memory.fit_memory_model``).

    Interval: ``(p / f, p * f)``, ``f = 1 + (r - 1) * max(1, b / largest measured b)``, ``r``
    the largest of ``1 + REL_FLOOR``, ``max(model/measured, measured/model)`` over the measured
    peaks (the trials' against the estimate, the probe's against its training-step model) and
    the spread of the peaks measured at one micro-batch: it holds every measured peak, widens
    with extrapolation and, every form predicting
    ``>= 0``, never goes below zero. Not a calibrated ``coverage`` interval: a bound on what was
    seen.
    """

    source: str
    model: MemoryModel                 # the training-step form (stored) or the fitted form
    estimate: Optional[MemoryEstimate]  # the stored estimate, when there is one
    measured: dict[int, float]         # micro-batch -> largest measured peak there
    n: int                             # trial peaks compared or fitted
    ratio: float                       # r above
    reference_size: float              # largest measured micro-batch (1 when none)
    residual_mean: float = 0.0         # measured - model, bytes, over the trial peaks
    residual_sd: float = 0.0
    max_abs_relative_error: float = 0.0
    max_batch_size: Optional[int] = None  # from the stored estimate, when a cap was stored
    cap_bytes: Optional[int] = None
    coverage: float = COVERAGE

    def model_predict(self, batch_size: int) -> float:
        return self.estimate.predict(batch_size) if self.estimate is not None else self.model.predict(batch_size)

    def _one(self, batch_size: int) -> float:
        return self.measured.get(batch_size, self.model_predict(batch_size))

    def predict(self, batch_size: Any) -> np.ndarray:
        b = np.asarray(batch_size, dtype=float)
        return np.array([self._one(int(x)) for x in b.ravel()], dtype=float).reshape(b.shape)

    def interval(self, batch_size: Any) -> tuple[np.ndarray, np.ndarray]:
        b = np.asarray(batch_size, dtype=float)
        pred = self.predict(b)
        f = 1.0 + (self.ratio - 1.0) * np.maximum(1.0, b / self.reference_size)
        return pred / f, pred * f

    def diagnostics(self) -> dict[str, Any]:
        coefficients = {k: v for k, v in self.model.to_dict().items()
                        if k in ("fixed_bytes", "per_sample_bytes")}
        return {"source": self.source, "form": self.model.form, "model": self.model.describe(),
                **coefficients, "measured_peaks": self.n, "measured_sizes": len(self.measured),
                "residual_mean_bytes": self.residual_mean, "residual_sd_bytes": self.residual_sd,
                "max_abs_relative_error": self.max_abs_relative_error, "interval_ratio": self.ratio}


def _ratios(pairs: list[tuple[float, float]]) -> list[float]:
    return [max(p / m, m / p) for p, m in pairs if p > 0 and m > 0]


def fit_memory(batch_sizes: Any, peaks: Any, stored: Optional[dict[str, Any]] = None,
               coverage: float = COVERAGE) -> Optional[MemoryFit]:
    """Trials' measured ``peaks`` at ``batch_sizes`` (bytes; NaN-free arrays) with the stored
    estimate ``stored`` (the study attribute ``memory_model``; a legacy affine dict reads as
    ``Affine``), or a form fitted to the peaks. None when there is neither a stored estimate nor
    peaks at two distinct micro-batch sizes."""
    b = np.asarray(batch_sizes, dtype=float)
    y = np.asarray(peaks, dtype=float)
    measured: dict[int, float] = {}
    for size, peak in zip(b.astype(int), y):
        measured[int(size)] = max(float(peak), measured.get(int(size), 0.0))
    estimate = MemoryEstimate.from_dict(stored) if stored else None
    if estimate is not None:
        model = estimate.train
        probe = [(int(p["batch_size"]), float(p["peak_bytes"])) for p in stored.get("points") or ()
                 if p.get("peak_bytes")]
        pairs = [(estimate.predict(int(s)), v) for s, v in zip(b, y)]
        pairs_all = pairs + [(model.predict(s), v) for s, v in probe]
        capped = stored.get("cap_bytes") is not None and stored.get("max_batch_size") is not None
        limits = dict(max_batch_size=int(stored["max_batch_size"]) if capped else None,
                      cap_bytes=int(stored["cap_bytes"]) if capped else None)
        sizes = [*b, *(s for s, _ in probe)]
    else:
        if len(measured) < 2:
            return None
        model = fit_memory_model(list(zip(b.astype(int), y)))
        pairs = pairs_all = [(model.predict(int(s)), v) for s, v in zip(b, y)]
        limits, sizes = {}, list(b)
    residual = np.array([v - p for p, v in pairs])
    spread = [(measured[int(s)], v) for s, v in zip(b, y)]  # the band at b holds every peak there
    return MemoryFit(
        source="stored" if estimate is not None else "fitted", model=model, estimate=estimate,
        measured=measured, n=len(b), ratio=max([1.0 + REL_FLOOR, *_ratios(pairs_all), *_ratios(spread)]),
        reference_size=float(max(sizes, default=1.0)),
        residual_mean=float(residual.mean()) if len(residual) else 0.0,
        residual_sd=float(residual.std(ddof=1)) if len(residual) > 1 else 0.0,
        max_abs_relative_error=float(np.max(np.abs(residual) / y)) if len(residual) else 0.0,
        coverage=coverage, **limits)
