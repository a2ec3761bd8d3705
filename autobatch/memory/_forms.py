"""Peak memory as a function of the micro-batch size ``b``: the model forms and their inverse
under a cap. Pure: no torch.

Units: bytes (float) for peaks, samples (int >= 1) for ``b``. Every form is monotone
non-decreasing in ``b`` (the coefficients that grow memory are >= 0) and never negative, so the
inverse ``max_batch_size`` is an exact integer bisection: ``predict(m) <= cap < predict(m + 1)``.

Forms (``form`` is the stored name):
  affine      fixed + per_sample*b
  two_regime  max(step + step_per_sample*b, fixed + per_sample*b): the optimizer step
              (parameters + gradients + optimizer state + the batch) sets the peak at small b,
              the activations at large b
  quadratic   fixed + per_sample*b + per_sample2*b^2 (e.g. b x b similarity matrices)
  piecewise   linear through measured points (running maximum), constant below the first,
              extrapolated with the last slope

A stored dict without ``form`` (the affine model of studies made before the forms existed,
``{"fixed_bytes", "per_sample_bytes", ...}``) reads back as ``Affine``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..units import format_bytes

# Answer of ``max_batch_size`` when memory stops growing before the cap.
UNBOUNDED_BATCH_SIZE = 2**31 - 1


def _largest_fitting(predict: Callable[[int], float], cap_bytes: float) -> int:
    """Largest ``b`` in [1, UNBOUNDED] with ``predict(b) <= cap_bytes`` for monotone ``predict``."""
    if predict(1) > cap_bytes:
        return 0
    if predict(UNBOUNDED_BATCH_SIZE) <= cap_bytes:
        return UNBOUNDED_BATCH_SIZE
    lo, hi = 1, UNBOUNDED_BATCH_SIZE  # predict(lo) <= cap < predict(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if predict(mid) <= cap_bytes else (lo, mid)
    return lo


class MemoryModel:
    """Base of the forms: ``predict(b)`` bytes, ``max_batch_size(cap)``, ``to_dict`` /
    ``MemoryModel.from_dict`` (dispatching on ``form``; no ``form`` = a legacy affine dict).
    Subclasses are frozen keyword-only dataclasses."""

    form: ClassVar[str]
    _nonneg: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self._nonneg:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.form}: {name} must be finite and >= 0, got {value}")

    def predict(self, batch_size: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def shifted(self, nbytes: float) -> "MemoryModel":  # pragma: no cover - overridden
        """The same curve ``nbytes`` higher everywhere."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def max_batch_size(self, cap_bytes: float) -> int:
        """Largest integer ``b >= 1`` with ``predict(b) <= cap_bytes``; 0 if even 1 is over;
        ``UNBOUNDED_BATCH_SIZE`` when the peak never reaches the cap."""
        return _largest_fitting(self.predict, cap_bytes)

    def per_sample_at(self, batch_size: int) -> float:
        """Bytes one more sample adds at micro-batch ``batch_size`` (the local slope)."""
        return self.predict(batch_size + 1) - self.predict(batch_size)

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"form": self.form, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryModel":
        """The form named by ``data["form"]`` (``affine`` when absent); other keys are ignored.
        ``KeyError`` for an unknown form or a missing coefficient."""
        if cls is MemoryModel and "form" not in data and float(data["fixed_bytes"]) < 0:
            # A legacy least-squares line may cross zero: the same line, floored at 0.
            return TwoRegime(step_bytes=0.0, fixed_bytes=float(data["fixed_bytes"]),
                             per_sample_bytes=float(data["per_sample_bytes"]))
        target = FORMS[data.get("form", "affine")] if cls is MemoryModel else cls
        return target(**{f.name: data[f.name] for f in dataclasses.fields(target)
                         if f.name in data or f.default is dataclasses.MISSING})


@dataclass(frozen=True, kw_only=True)
class Affine(MemoryModel):
    form: ClassVar[str] = "affine"
    _nonneg: ClassVar[tuple[str, ...]] = ("fixed_bytes", "per_sample_bytes")
    fixed_bytes: float
    per_sample_bytes: float

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    def shifted(self, nbytes: float) -> "Affine":
        return dataclasses.replace(self, fixed_bytes=self.fixed_bytes + nbytes)

    def describe(self) -> str:
        return f"{format_bytes(self.fixed_bytes)} + {format_bytes(self.per_sample_bytes)}/sample"


@dataclass(frozen=True, kw_only=True)
class TwoRegime(MemoryModel):
    """``max(step_bytes + step_per_sample_bytes*b, fixed_bytes + per_sample_bytes*b)``.

    The first line is the optimizer step's peak (parameters + gradients + state, plus the batch
    itself: on ``digits`` 264 B/sample = 64 float32 inputs + an int64 label), the second the
    activations'. ``fixed_bytes`` may be negative (the activation line's intercept); the peak is
    never below ``step_bytes >= 0``.
    """

    form: ClassVar[str] = "two_regime"
    _nonneg: ClassVar[tuple[str, ...]] = ("step_bytes", "step_per_sample_bytes", "per_sample_bytes")
    step_bytes: float
    step_per_sample_bytes: float = 0.0
    fixed_bytes: float
    per_sample_bytes: float

    def predict(self, batch_size: int) -> float:
        return max(self.step_bytes + self.step_per_sample_bytes * batch_size,
                   self.fixed_bytes + self.per_sample_bytes * batch_size)

    def shifted(self, nbytes: float) -> "TwoRegime":
        return dataclasses.replace(self, step_bytes=self.step_bytes + nbytes,
                                   fixed_bytes=self.fixed_bytes + nbytes)

    def describe(self) -> str:
        sign = "-" if self.fixed_bytes < 0 else "+"
        return (f"max(step {format_bytes(self.step_bytes)} + {format_bytes(self.step_per_sample_bytes)}"
                f"/sample, activations {sign}{format_bytes(abs(self.fixed_bytes))} + "
                f"{format_bytes(self.per_sample_bytes)}/sample)")


@dataclass(frozen=True, kw_only=True)
class Quadratic(MemoryModel):
    form: ClassVar[str] = "quadratic"
    _nonneg: ClassVar[tuple[str, ...]] = ("fixed_bytes", "per_sample_bytes", "per_sample2_bytes")
    fixed_bytes: float
    per_sample_bytes: float
    per_sample2_bytes: float

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size + self.per_sample2_bytes * batch_size ** 2

    def shifted(self, nbytes: float) -> "Quadratic":
        return dataclasses.replace(self, fixed_bytes=self.fixed_bytes + nbytes)

    def describe(self) -> str:
        return (f"{format_bytes(self.fixed_bytes)} + {format_bytes(self.per_sample_bytes)}/sample"
                f" + {format_bytes(self.per_sample2_bytes)}/sample²")


@dataclass(frozen=True, kw_only=True)
class Piecewise(MemoryModel):
    """Linear through ``(knot_sizes[i], knot_bytes[i])``; sizes strictly increasing (>= 2 of
    them, >= 1), bytes non-decreasing and >= 0; ``knot_bytes[0]`` below the first size; the last
    slope beyond the last size."""

    form: ClassVar[str] = "piecewise"
    knot_sizes: tuple[int, ...]
    knot_bytes: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "knot_sizes", tuple(int(s) for s in self.knot_sizes))
        object.__setattr__(self, "knot_bytes", tuple(float(p) for p in self.knot_bytes))
        s, p = self.knot_sizes, self.knot_bytes
        if (len(s) < 2 or len(s) != len(p) or s[0] < 1 or p[0] < 0 or not all(map(math.isfinite, p))
                or any(a >= c for a, c in zip(s, s[1:])) or any(a > c for a, c in zip(p, p[1:]))):
            raise ValueError(f"piecewise: need >= 2 increasing sizes >= 1 and non-decreasing "
                             f"bytes >= 0, got {s} and {p}")

    def predict(self, batch_size: int) -> float:
        s, p = self.knot_sizes, self.knot_bytes
        if batch_size <= s[0]:
            return p[0]
        i = min(max(bisect.bisect_right(s, batch_size), 1), len(s) - 1)  # segment [i-1, i]
        return p[i - 1] + (p[i] - p[i - 1]) * (batch_size - s[i - 1]) / (s[i] - s[i - 1])

    def shifted(self, nbytes: float) -> "Piecewise":
        return dataclasses.replace(self, knot_bytes=tuple(v + nbytes for v in self.knot_bytes))

    def describe(self) -> str:
        through = ", ".join(f"{s}: {format_bytes(p)}" for s, p in zip(self.knot_sizes, self.knot_bytes))
        return (f"piecewise linear through {through}; "
                f"{format_bytes(self.per_sample_at(self.knot_sizes[-1]))}/sample beyond")


FORMS: dict[str, type] = {cls.form: cls for cls in (Affine, TwoRegime, Quadratic, Piecewise)}


def relative_error(predicted: float, measured: float) -> float:
    """Signed ``(predicted - measured) / measured``: positive means over-predicted (safe side).
    ``ValueError`` when ``measured <= 0``."""
    if measured <= 0:
        raise ValueError(f"measured must be positive, got {measured}")
    return (predicted - measured) / measured


def largest_power_of_two_at_most(n: int) -> int:
    """Largest ``2**k <= n``; 0 when ``n < 1``."""
    n = int(n)
    return 1 << (n.bit_length() - 1) if n >= 1 else 0
