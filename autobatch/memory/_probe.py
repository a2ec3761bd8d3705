"""The memory probe: peaks measured at a few micro-batch sizes, the model fitted to them, and
the largest micro-batch under a cap.

The probe measures a *step runner*: ``run_steps(b)`` runs complete training steps at micro-batch
``b`` on a copy of the model (``autobatch.train.step_runner`` makes one from the study's recipe),
so memory knows nothing of how training is done. The user's weights, optimizer, RNG state and the
allocator's peak statistics are left as they were.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import AutobatchError, UserCodeError
from ..units import format_bytes
from ._measure import _release_cuda, measure_cpu, measure_cuda
from ._model import MemoryModel, fit_memory_model, relative_error

MiB = 2**20
StepRunner = Callable[[int], None]  # runs complete training steps at a micro-batch size


@dataclass(frozen=True, kw_only=True)
class ProbePoint:
    """One measured micro-batch size. Bytes are the growth over what was live before."""

    batch_size: int
    peak_bytes: Optional[int]       # None when it did not fit
    reserved_bytes: Optional[int]   # CUDA allocator's reserved growth; None on CPU
    fits: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_step_peak(run_steps: StepRunner, *, batch_size: int, device: torch.device) -> ProbePoint:
    """Peak memory of ``run_steps(batch_size)``: the growth over what was live before.

    On CUDA an out-of-memory gives ``fits=False``; the allocator's cache and peak statistics
    are cleared afterwards so the next user starts clean.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    if is_cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    def run() -> None:
        run_steps(batch_size)

    start = time.perf_counter()
    peak = reserved = None
    # Dropout in the copy draws from the global RNG: restore it so the probe is invisible.
    with torch.random.fork_rng(devices=[device] if is_cuda else [],
                               device_type="cuda" if is_cuda else None):
        if not is_cuda:
            peak, reserved = measure_cpu(run)
        else:
            try:
                peak, reserved = measure_cuda(run, device)
            except torch.OutOfMemoryError:
                pass  # the frames holding the copy die with the exception, cleared below
            finally:
                _release_cuda(device)
                torch.cuda.reset_peak_memory_stats(device)
    return ProbePoint(batch_size=batch_size, peak_bytes=peak, reserved_bytes=reserved,
                      fits=peak is not None, seconds=time.perf_counter() - start)


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    """What ``probe`` measured and fitted. Immutable; ``to_dict`` is its JSON form."""

    model: MemoryModel
    points: tuple[ProbePoint, ...]      # the points the model was fitted to
    check: Optional[ProbePoint]         # a size not used in the fit
    check_error: Optional[float]        # signed relative error of the prediction at ``check``
    cap_bytes: Optional[int]
    max_batch_size: Optional[int]       # None when there is no cap
    seconds: float
    device: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; the study attribute ``memory_model`` (``MemoryModel.from_dict`` reads it)."""
        return {
            **self.model.to_dict(),
            "cap_bytes": self.cap_bytes,
            "max_batch_size": self.max_batch_size,
            "sizes": [p.batch_size for p in self.points],
            "points": [p.to_dict() for p in self.points],
            "check": self.check.to_dict() if self.check else None,
            "check_error": self.check_error,
            "seconds": self.seconds,
            "device": self.device,
        }


def _fit_points(measure: Callable[[int], ProbePoint], sizes: Sequence[int],
                device: torch.device) -> list[ProbePoint]:
    """Measure ``sizes``; if some do not fit, halve below the smallest failure until 2 fit."""
    fitting: dict[int, ProbePoint] = {}
    too_big: Optional[int] = None  # smallest size that did not fit
    for size in sorted(set(sizes)):
        if too_big is None or size < too_big:
            point = measure(size)
            if point.fits:
                fitting[size] = point
            else:
                too_big = size
    candidate = too_big
    while len(fitting) < 2 and candidate is not None and candidate > 1:
        candidate //= 2
        if candidate not in fitting:
            point = measure(candidate)
            if point.fits:
                fitting[candidate] = point
    if len(fitting) < 2:
        fits = ", ".join(str(b) for b in sorted(fitting)) or "none"
        raise AutobatchError(
            f"the model does not fit in {device} memory at 2 micro-batch sizes (fitting: {fits});"
            " use a smaller model or input size"
        )
    return [fitting[b] for b in sorted(fitting)]


def _confirm_below_minimum(measure: Callable[[int], ProbePoint], fitted: MemoryModel,
                           cap_bytes: int) -> int:
    """The line says micro-batch 1 is over the cap: measure it, then return 1 or refuse."""
    try:
        one: Optional[ProbePoint] = measure(1)
    except (ValueError, UserCodeError):  # e.g. BatchNorm cannot train on one sample: keep the line's word
        one = None
    if one is None:
        needs = f"predicted {format_bytes(fitted.predict(1))}"
    elif not one.fits:
        needs = "out of memory"
    elif one.peak_bytes <= cap_bytes:
        return 1
    else:
        needs = f"measured {format_bytes(one.peak_bytes)}"
    raise AutobatchError(
        f"memory cap {format_bytes(cap_bytes)} is below what micro-batch 1 needs ({needs});"
        " raise --max-memory or use a smaller model or input"
    )


def probe(run_steps: StepRunner, *, device: torch.device, cap_bytes: Optional[int] = None,
          sizes: Sequence[int] = (2, 8), check_size: Optional[int] = 32) -> ProbeResult:
    """Fit the memory model at ``sizes``, check it at ``check_size``, invert it under the cap.

    Sizes that run out of memory are replaced by halving below the smallest failure. A cap
    that even micro-batch 1 exceeds is an ``AutobatchError`` naming what 1 needs.
    """
    start = time.perf_counter()
    device = torch.device(device)

    def measure(size: int) -> ProbePoint:
        return measure_step_peak(run_steps, batch_size=size, device=device)

    points = _fit_points(measure, sizes, device)
    fitted = fit_memory_model([(p.batch_size, p.peak_bytes) for p in points])
    check = check_error = None
    if check_size and check_size not in {p.batch_size for p in points}:
        check = measure(check_size)
        if check.fits:
            check_error = relative_error(fitted.predict(check_size), check.peak_bytes)
    max_batch = None
    if cap_bytes is not None:
        max_batch = fitted.max_batch_size(cap_bytes)
        if max_batch == 0:
            max_batch = _confirm_below_minimum(measure, fitted, cap_bytes)
    return ProbeResult(model=fitted, points=tuple(points), check=check, check_error=check_error,
                       cap_bytes=cap_bytes, max_batch_size=max_batch,
                       seconds=time.perf_counter() - start, device=str(device))


def default_cap(device: torch.device) -> Optional[int]:
    """The cap when none is given: CUDA total memory less a margin; None (no cap) on CPU.

    The margin is ``max(10% of total, 512 MiB)``. The probe counts tensor bytes, but the
    process also holds the CUDA context (a few hundred MiB, invisible to the allocator), the
    caching allocator's rounding and fragmentation over a long run, and cuDNN/cuBLAS
    workspaces whose size depends on the algorithm picked. The fixed floor covers the context
    on small cards; the 10% covers what grows with the card. An OOM costs a whole trial, while
    a 10% lower cap moves the largest power-of-two micro-batch down one step at most.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    return int(total - max(total // 10, 512 * MiB))
