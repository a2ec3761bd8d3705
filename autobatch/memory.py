"""Memory probes, the linear memory model ``peak(b) = fixed + per_sample * b`` and the cap.

The math (fit, inverse, errors) is pure and comes first; the measurement of one training
step's peak follows, then ``probe``, which puts both together. A probe trains a deep copy:
the user's weights, optimizer, RNG state and the allocator's peak statistics are left as
they were.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch._C._profiler import _EventType  # what torch.profiler._memory_profiler reads too
from torch.profiler import ProfilerActivity, profile

from .budget import format_bytes
from .errors import AutobatchError

MiB = 2**20
# Answer of ``max_batch_size`` when memory does not grow with the batch (per_sample == 0).
UNBOUNDED_BATCH_SIZE = 2**31 - 1

MakeOptimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


# --- Records and pure math ---------------------------------------------------------------

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


def running_peak(events: Iterable[tuple[int, int]]) -> int:
    """Peak of the bytes allocated inside a window, from ``(address, signed_bytes)`` events.

    Events are in time order: positive bytes allocate, negative free. A free is counted
    only if its address was allocated inside the window, so releasing a tensor that existed
    before the window can neither drive the total negative nor hide memory the window uses.
    """
    live: dict[int, int] = {}
    total = peak = 0
    for address, nbytes in events:
        if nbytes > 0:
            total += nbytes - live.pop(address, 0)  # a missed free of a reused address
            live[address] = nbytes
            peak = max(peak, total)
        elif nbytes < 0:
            total -= live.pop(address, 0)
    return peak


# --- Measurement -------------------------------------------------------------------------

def _train_steps(model: torch.nn.Module, *, batch_size: int, input_shape: tuple[int, ...],
                 num_classes: int, make_optimizer: MakeOptimizer, device: torch.device,
                 steps: int) -> None:
    """Complete training steps on a deep copy of ``model``; all it allocates dies on return.

    The copy and the optimizer are made here, inside the measuring window, so the peak
    counts parameters exactly once, plus gradients, optimizer state, activations and the
    batch. Gradients are zeroed, not freed, between steps, as under gradient accumulation:
    the peak of step 2 then bounds training with and without accumulation.
    """
    replica = copy.deepcopy(model).to(device)
    replica.train()
    optimizer = make_optimizer(replica.parameters())
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(steps):
        inputs = torch.randn((batch_size, *input_shape), generator=generator, device=device)
        labels = torch.randint(0, num_classes, (batch_size,), generator=generator, device=device)
        loss = F.cross_entropy(replica(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        del inputs, labels, loss  # the next batch must not coexist with this one


def _cpu_allocations(prof: profile) -> list[tuple[int, int]]:
    """``(address, signed_bytes)`` of the CPU allocator's events, in time order.

    The profiler reports each allocation and free of the CPU allocator (c10's
    ProfiledCPUMemoryReporter) as an Allocation event carrying the address, which the flat
    ``[memory]`` events lack. torch's own ``_memory_profiler`` reads the same event tree.
    """
    found: list[tuple[int, bool, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type in ("cpu", "mkldnn"):
            fields = node.extra_fields
            # At equal timestamps a free goes first: only a free can make an address reusable.
            found.append((node.start_time_ns, fields.alloc_size > 0, fields.ptr, fields.alloc_size))
    found.sort(key=lambda event: event[:2])
    return [(ptr, nbytes) for _, _, ptr, nbytes in found]


def _measure_cpu(run: Callable[[], None]) -> tuple[int, None]:
    # Exact accounting of tensor storage, not process RSS: RSS includes the interpreter,
    # libraries and memory the allocator has not returned to the system.
    with PeakWindow() as window:
        run()
    return window.peak_bytes, None


class PeakWindow:
    """Context manager: ``peak_bytes`` of CPU tensor storage allocated inside it (exact, from
    the profiler's allocation events). What existed before the window is not counted."""

    peak_bytes: Optional[int] = None

    def __enter__(self) -> "PeakWindow":
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._prof.__exit__(*exc_info)
        self.peak_bytes = running_peak(_cpu_allocations(self._prof))


def _release_cuda(device: torch.device) -> None:
    gc.collect()
    torch.cuda.synchronize(device)
    # cuBLAS keeps its workspace allocated after the first matmul: free it so that every
    # probe counts it (training needs it) instead of only the first (torch's tests do this).
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()  # so reserved growth is the step's, not earlier fragmentation


def _measure_cuda(run: Callable[[], None], device: torch.device) -> tuple[int, int]:
    _release_cuda(device)
    allocated_before = torch.cuda.memory_allocated(device)
    reserved_before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - allocated_before,
            torch.cuda.max_memory_reserved(device) - reserved_before)


def measure_step_peak(model: torch.nn.Module, *, batch_size: int, input_shape: tuple[int, ...],
                      num_classes: int, make_optimizer: MakeOptimizer, device: torch.device,
                      steps: int = 2) -> ProbePoint:
    """Peak memory of ``steps`` complete training steps at ``batch_size``, on a copy of ``model``.

    Step 1 allocates the optimizer state, step 2 runs with it; the peak is the growth over
    what was live before. On CUDA an out-of-memory gives ``fits=False``; the allocator's
    cache and peak statistics are cleared afterwards so the next user starts clean.
    """
    if batch_size < 1 or steps < 1:
        raise ValueError(f"batch_size and steps must be >= 1, got {batch_size} and {steps}")
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    if is_cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    def run() -> None:
        _train_steps(model, batch_size=batch_size, input_shape=tuple(input_shape),
                     num_classes=num_classes, make_optimizer=make_optimizer, device=device,
                     steps=steps)

    start = time.perf_counter()
    peak = reserved = None
    # Dropout in the copy draws from the global RNG: restore it so the probe is invisible.
    with torch.random.fork_rng(devices=[device] if is_cuda else [],
                               device_type="cuda" if is_cuda else None):
        if not is_cuda:
            peak, reserved = _measure_cpu(run)
        else:
            try:
                peak, reserved = _measure_cuda(run, device)
            except torch.OutOfMemoryError:
                pass  # the frames holding the copy die with the exception, cleared below
            finally:
                _release_cuda(device)
                torch.cuda.reset_peak_memory_stats(device)
    return ProbePoint(batch_size=batch_size, peak_bytes=peak, reserved_bytes=reserved,
                      fits=peak is not None, seconds=time.perf_counter() - start)


# --- The probe ---------------------------------------------------------------------------

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
    except ValueError:  # e.g. BatchNorm cannot train on one sample: keep the line's word
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


def probe(model: torch.nn.Module, *, input_shape: tuple[int, ...], num_classes: int,
          make_optimizer: MakeOptimizer, device: torch.device, cap_bytes: Optional[int] = None,
          sizes: Sequence[int] = (2, 8), check_size: Optional[int] = 32) -> ProbeResult:
    """Fit the memory model at ``sizes``, check it at ``check_size``, invert it under the cap.

    Sizes that run out of memory are replaced by halving below the smallest failure. A cap
    that even micro-batch 1 exceeds is an ``AutobatchError`` naming what 1 needs.
    """
    start = time.perf_counter()
    device = torch.device(device)

    def measure(size: int) -> ProbePoint:
        return measure_step_peak(model, batch_size=size, input_shape=input_shape,
                                 num_classes=num_classes, make_optimizer=make_optimizer,
                                 device=device)

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
