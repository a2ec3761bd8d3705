"""A trial's key measurements in units, as text: what optuna-dashboard's attribute table shows
beside the numbers (``records.READABLE_*``)."""

from __future__ import annotations

from typing import Any, Optional

from .. import records as R
from ..units import format_bytes


def readable_attrs(attrs: dict[str, Any], multiplier: Optional[float] = None) -> dict[str, str]:
    """Readable copies of a trial's throughput, epoch time, peak memory (measured and predicted),
    learning rate and stop reason, from its user attributes ``attrs``; those it lacks are left
    out. ``multiplier``: the trial's lr multiplier parameter, shown beside the lr."""
    shown: dict[str, str] = {}
    if attrs.get(R.THROUGHPUT):
        shown[R.READABLE_THROUGHPUT] = f"{attrs[R.THROUGHPUT]:.0f} samples/s"
    if attrs.get(R.EPOCH_TIME_S) is not None:
        shown[R.READABLE_EPOCH_TIME] = f"{attrs[R.EPOCH_TIME_S]:.3g} s"
    measured, predicted = attrs.get(R.MEASURED_PEAK_BYTES), attrs.get(R.PREDICTED_PEAK_BYTES)
    parts = [f"{format_bytes(v)} {what}" for v, what in ((measured, "measured"), (predicted, "predicted"))
             if v is not None]
    if parts:
        shown[R.READABLE_PEAK] = ", ".join(parts)
    if attrs.get(R.LEARNING_RATE) is not None:
        rule = f" (multiplier {multiplier:.3g} of the scaling rule)" if multiplier is not None else ""
        shown[R.READABLE_LR] = f"{attrs[R.LEARNING_RATE]:.4g}{rule}"
    if attrs.get(R.STOP_REASON):
        detail = attrs.get(R.STOP_DETAIL)
        shown[R.READABLE_STOP] = attrs[R.STOP_REASON] + (f": {detail}" if detail else "")
    return shown
