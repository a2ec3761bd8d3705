"""The memory model ``peak(b) = fixed + per_sample * b`` of a micro-batch of ``b`` samples: its
fit, its inverse under a cap and its error. Pure: no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import AutobatchError

MiB = 2**20
# Answer of ``max_batch_size`` when memory does not grow with the batch (per_sample == 0).
UNBOUNDED_BATCH_SIZE = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class MemoryModel:
    """``peak(b) = fixed_bytes + per_sample_bytes * b`` for a micro-batch of ``b`` samples."""

    fixed_bytes: float
    per_sample_bytes: float

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    def max_batch_size(self, cap_bytes: float) -> int:
        """Largest integer ``b >= 0`` with ``predict(b) <= cap_bytes``; 0 if ``b = 1`` exceeds it."""
        if self.predict(1) > cap_bytes:
            return 0
        if self.per_sample_bytes <= 0:
            return UNBOUNDED_BATCH_SIZE
        b = int(min((cap_bytes - self.fixed_bytes) / self.per_sample_bytes, UNBOUNDED_BATCH_SIZE))
        # Guard against floating-point rounding on either side of the boundary.
        while b > 1 and self.predict(b) > cap_bytes:
            b -= 1
        while b < UNBOUNDED_BATCH_SIZE and self.predict(b + 1) <= cap_bytes:
            b += 1
        return max(b, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"fixed_bytes": self.fixed_bytes, "per_sample_bytes": self.per_sample_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryModel":
        """Reads the two coefficients; other keys (a ``ProbeResult.to_dict``) are ignored."""
        return cls(fixed_bytes=float(data["fixed_bytes"]),
                   per_sample_bytes=float(data["per_sample_bytes"]))


def fit_memory_model(points: Sequence[tuple[int, float]]) -> MemoryModel:
    """Least-squares line through ``(batch_size, peak_bytes)`` points (exact for two points).

    A negative slope (noise on a model whose activations are tiny) is clamped to 0 with
    ``fixed`` the largest peak, so the model never predicts less than it measured.
    """
    sizes = {b for b, _ in points}
    if len(sizes) < 2:
        raise AutobatchError(
            f"a memory model needs peaks at 2 or more distinct micro-batch sizes, got {sorted(sizes)}"
        )
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((b - mean_b) ** 2 for b, _ in points)
    sxy = sum((b - mean_b) * (y - mean_y) for b, y in points)
    slope = sxy / sxx
    if slope < 0:
        return MemoryModel(fixed_bytes=float(max(y for _, y in points)), per_sample_bytes=0.0)
    return MemoryModel(fixed_bytes=mean_y - slope * mean_b, per_sample_bytes=slope)


def relative_error(predicted: float, measured: float) -> float:
    """Signed ``(predicted - measured) / measured``: positive means over-predicted (safe side)."""
    if measured <= 0:
        raise ValueError(f"measured must be positive, got {measured}")
    return (predicted - measured) / measured


def largest_power_of_two_at_most(n: int) -> int:
    """Largest ``2**k <= n``; 0 when ``n < 1``."""
    n = int(n)
    return 1 << (n.bit_length() - 1) if n >= 1 else 0
