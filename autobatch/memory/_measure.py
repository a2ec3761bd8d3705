"""Measuring peak memory of a piece of work: CPU tensor bytes from the profiler's allocation
events (exact, not RSS), CUDA from the allocator's peak statistics. What existed before the
measuring window is not counted."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch._C._profiler import _EventType  # what torch.profiler._memory_profiler reads too
from torch.profiler import ProfilerActivity, profile


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


def measure_cpu(run: Callable[[], None]) -> tuple[int, None]:
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


def measure_cuda(run: Callable[[], None], device: torch.device) -> tuple[int, int]:
    _release_cuda(device)
    allocated_before = torch.cuda.memory_allocated(device)
    reserved_before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - allocated_before,
            torch.cuda.max_memory_reserved(device) - reserved_before)


class TrialMeter:
    """Peak memory of a trial, by phase: the measured training steps and the first evaluation.

    ``with meter.phase("train", live_bytes):`` around a piece of work records its peak:
    CPU: ``live_bytes`` (tensor bytes alive before it: parameters, buffers, gradients,
    optimizer state) plus the exact tensor accounting inside it (``PeakWindow``); CUDA: the
    allocator's peak over the phase (everything allocated on the device, the dataset included),
    with the peak over the whole trial kept across the resets; other devices: not measured.
    ``peak_bytes()`` is the largest of what was seen (CUDA: the whole trial's allocator peak).
    ``rss_bytes`` (CPU) is the process's peak resident set since the meter started.
    """

    def __init__(self, device: torch.device) -> None:
        from ._cap import reset_peak_resident

        self.device = torch.device(device)
        self.peaks: dict[str, int] = {}
        self._cuda_max = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss = self.device.type == "cpu" and reset_peak_resident()

    @property
    def profiles(self) -> bool:
        """Whether a phase runs under the profiler (CPU), which slows the work inside it down."""
        return self.device.type == "cpu"

    @contextmanager
    def phase(self, name: str, live_bytes: Callable[[], int]) -> Iterator[None]:
        kind = self.device.type
        if kind == "cpu":
            before = live_bytes()
            with PeakWindow() as window:
                yield
            self._record(name, before + window.peak_bytes)
        elif kind == "cuda":
            self._cuda_max = max(self._cuda_max, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            self._record(name, torch.cuda.max_memory_allocated(self.device))
        else:
            yield

    def _record(self, name: str, nbytes: int) -> None:
        self.peaks[name] = max(nbytes, self.peaks.get(name, 0))
        self._cuda_max = max(self._cuda_max, nbytes if self.device.type == "cuda" else 0)

    def peak_bytes(self) -> Optional[int]:
        if self.device.type == "cuda":
            return max(self._cuda_max, torch.cuda.max_memory_allocated(self.device))
        return max(self.peaks.values()) if self.peaks else None

    @property
    def rss_bytes(self) -> Optional[int]:
        from ._cap import peak_resident_bytes

        return peak_resident_bytes() if self._rss else None


def live_tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (non-tensors are skipped): what is
    alive before a measuring window, counted once however many views share a storage."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
