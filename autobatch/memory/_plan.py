"""The adaptive probe plan: which micro-batch to measure next, from what was measured so far.
Pure: the probe (``_probe.py``) measures, this decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from ._fit import fit
from ._forms import MemoryModel, relative_error

Measured = Sequence[tuple[int, Optional[float]]]  # (b, peak bytes or None = out of memory), in order


@dataclass(frozen=True, kw_only=True)
class ProbeStep:
    """What to do next. ``next_size`` None means done; ``boundary`` is the largest micro-batch the
    study should try (0: none fits); ``model`` fits every measured point (None before 2 sizes);
    ``validation_error`` is the signed relative error of the newest point's prediction by the fit
    of the points before it (None until that can be computed)."""

    next_size: Optional[int]
    boundary: int
    model: Optional[MemoryModel]
    converged: bool
    reason: str
    validation_error: Optional[float] = None

    @property
    def done(self) -> bool:
        return self.next_size is None


def plan_probe(measured: Measured, *, cap_bytes: Optional[float], space_max: int,
               dataset_max: Optional[int] = None, start: int = 2, growth: int = 4,
               max_sizes: int = 5, tol: float = 0.05, floor: int = 0) -> ProbeStep:
    """Next micro-batch to measure, from ``measured`` = ``(b, peak_bytes or None)`` in the order
    measured (None: out of memory). ``cap_bytes`` None: no cap (boundary = the space's limit).
    ``floor``: sizes at or below it cannot run at all (the user's code refused them, too small
    for the model: not in ``measured``, not counted in ``max_sizes``); the plan starts at twice
    it when that is above ``start``, and never bisects down to it.

    Policy (issue 14): start at ``start`` and grow by ``growth`` (never past the current boundary)
    until 3 sizes are measured and either the peak has at least doubled over the smallest one
    (activations dominate) or the newest point was predicted within ``tol`` by the fit of the
    earlier ones (when the peak has doubled and the next growth step would land within 2x of
    the boundary, the boundary itself is the third size); then measure at the boundary
    ``min(space_max, dataset_max, fitted limit under the cap)``; refit with every point. A size
    that ran out of memory or measured over the cap bounds the answer from above; when the fit
    says such a size fits (an OOM it cannot see), the boundary is the largest size measured under
    the cap and the next size bisects between them.
    Done when the boundary was measured under the cap (and is the space's limit, or the next size
    failed, or the newest point was predicted within ``tol``; else bisect above it), or when the
    newest point was predicted within ``tol`` by the earlier points' fit and the boundary lies
    inside the measured range or within a factor ``1 + tol`` (size and predicted peak) of the
    largest size measured below it. Otherwise stop unconverged after ``max_sizes`` sizes (the last
    one spent at the boundary). ``ValueError`` from ``fit`` on bad values.
    """
    upper = max(1, min(space_max, dataset_max or space_max))
    fits = [(b, y) for b, y in measured if y is not None]
    tried = {b for b, _ in measured}
    hi = min([b for b, y in measured if y is None or (cap_bytes is not None and y > cap_bytes)],
             default=upper + 1)
    under = {b for b, y in fits if (cap_bytes is None or y <= cap_bytes) and b < hi}
    lo = min(max(under, default=0), upper)
    model = fit(fits) if len({b for b, _ in fits}) >= 2 else None
    b_fit = upper if model is None or cap_bytes is None else min(upper, model.max_batch_size(cap_bytes))
    bisecting = b_fit >= hi
    boundary = lo if bisecting else max(lo, min(b_fit, hi - 1))

    validation: Optional[float] = None
    if measured and measured[-1][1] is not None:
        last_b, last_y = measured[-1]
        prior = [(b, y) for b, y in fits if b != last_b]
        if len({b for b, _ in prior}) >= 2 and last_y > 0:
            validation = relative_error(fit(prior).predict(last_b), last_y)
    validated = validation is not None and abs(validation) <= tol

    def step(next_size: Optional[int], converged: bool, reason: str) -> ProbeStep:
        return ProbeStep(next_size=next_size, boundary=boundary, model=model, converged=converged,
                         reason=reason, validation_error=validation)

    base = max(lo, floor)  # the largest size known to fit or known too small: nothing below it is asked
    if floor >= upper:  # nothing the study searches can run
        return ProbeStep(next_size=None, boundary=0, model=model, converged=False, validation_error=validation,
                         reason=f"micro-batch {floor} is too small for the model and nothing larger is searched")
    if bisecting and hi - base <= 1:
        return step(None, True, f"{lo} fits, {hi} does not" if lo else
                    f"micro-batch {floor} is too small for the model, {hi} does not fit" if floor else
                    "micro-batch 1 does not fit")
    confirm = boundary in under and not bisecting  # measured; is boundary + 1 really over?
    if confirm and (validated or boundary == upper or hi - boundary <= 1):
        return step(None, True, f"measured at the boundary {boundary}")
    if model is not None and not bisecting and validated:
        b_below, y_below = max(((b, y) for b, y in fits if b <= boundary), default=(0, 0.0))
        if boundary <= max(b for b, _ in fits) or (boundary <= (1 + tol) * b_below
                                                   and model.predict(boundary) <= (1 + tol) * y_below):
            return step(None, True, f"prediction within {tol:.0%} near the boundary {boundary}")
    if len(tried) >= max_sizes:
        return step(None, False, f"probe budget of {max_sizes} sizes spent")
    if not measured:
        nxt = min(max(start, 2 * floor), upper)
    elif bisecting or confirm:
        nxt = (base + hi) // 2 if hi <= upper else boundary + 1 if lo else hi // 2
    else:
        ys = [y for _, y in fits]
        largest = max(b for b, _ in fits)
        doubled = max(ys) >= 2 * min(ys)  # the activations dominate
        near = largest * growth * 2 >= boundary  # the next growth step would be within 2x of the boundary
        growing = (largest < boundary and len(tried) < max_sizes - 1
                   and ((len(tried) < 3 and not (doubled and near)) or (not doubled and not validated)))
        nxt = min(largest * growth, boundary) if growing else boundary
    if nxt <= floor or nxt in tried:
        return step(None, False, f"nothing left to measure between {lo} and {hi}")
    return step(nxt, False, "bisect" if bisecting else "grow" if nxt != boundary else "measure")
