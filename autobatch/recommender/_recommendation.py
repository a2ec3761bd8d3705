"""``Recommendation``: one recommended setting, its predicted metrics with intervals, and the
evidence. Immutable; ``to_dict``/``from_dict`` are its JSON form (the study attribute)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import AutobatchError
from ..units import format_bytes
from ._intervals import COVERAGE


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """One recommended setting, its predicted metrics with intervals, and the evidence."""

    study_name: str
    batch_size: int
    learning_rate: float
    accumulation_steps: int
    effective_batch_size: int
    lr_multiplier: float
    priority: str
    predicted_accuracy: float
    accuracy_interval: tuple[float, float]
    predicted_epoch_time_s: float
    epoch_time_interval: tuple[float, float]
    predicted_peak_bytes: Optional[int]
    peak_bytes_interval: Optional[tuple[float, float]]
    pareto_front: tuple[dict, ...]
    trials: tuple[int, ...]
    best_trial: Optional[int]
    rationale: str
    constraints: dict
    time_to_target: Optional[dict] = None  # {"target", "samples", "seconds", "trial"}
    diagnostics: dict = field(default_factory=dict)  # fit quality of each model

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recommendation":
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise AutobatchError(f"unknown recommendation fields: {', '.join(sorted(unknown))}")
        for name in ("accuracy_interval", "epoch_time_interval", "peak_bytes_interval", "trials"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        data["pareto_front"] = tuple(dict(p) for p in data.get("pareto_front", ()))
        return cls(**data)

    def markdown(self) -> str:
        pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
        acc_lo, acc_hi = self.accuracy_interval
        t_lo, t_hi = self.epoch_time_interval
        rows = [("micro-batch size", str(self.batch_size), ""),
                ("accumulation steps", str(self.accumulation_steps), ""),
                ("effective batch size", str(self.effective_batch_size), ""),
                ("learning rate", f"{self.learning_rate:.4g}", f"multiplier {self.lr_multiplier:.3g}"),
                ("validation accuracy", pct(self.predicted_accuracy), f"{pct(acc_lo)} – {pct(acc_hi)}"),
                ("epoch time", f"{self.predicted_epoch_time_s:.3g} s", f"{t_lo:.3g} – {t_hi:.3g} s")]
        if self.predicted_peak_bytes is not None and self.peak_bytes_interval is not None:
            p_lo, p_hi = self.peak_bytes_interval
            rows.append(("peak memory", format_bytes(self.predicted_peak_bytes),
                         f"{format_bytes(p_lo)} – {format_bytes(p_hi)}"))
        coverage = self.diagnostics.get("coverage", COVERAGE)
        lines = [f"### autobatch recommendation ({self.priority})", "",
                 f"| | predicted | {coverage:.0%} interval |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        best = f"; best observed trial #{self.best_trial}" if self.best_trial is not None else ""
        lines += ["", self.rationale, "", f"Fitted to {len(self.trials)} trials{best}."]
        return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples to lists, numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
