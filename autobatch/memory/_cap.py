"""The memory cap when none is given, and the process's own memory: how much a CPU process may
still allocate (cgroup limit, ``MemAvailable``, address-space limits), its resident set and the
peak of it. Torch is imported only for a CUDA device."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any, Optional

import psutil

MiB = 2**20
CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def cgroup_headroom(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[int]:
    """Bytes the process's memory cgroup still allows: ``limit - usage``; None without a limit.

    cgroup v2 (``0::/path`` in ``/proc/self/cgroup``): ``memory.max`` and ``memory.current`` of
    that cgroup (or of the root mount, as in containers); v1: ``memory.limit_in_bytes`` and
    ``memory.usage_in_bytes`` under ``memory/``.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    candidates: list[tuple[Path, str, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            candidates += [(root / rel, "memory.max", "memory.current"),
                           (root, "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):
            candidates += [(root / "memory" / rel, "memory.limit_in_bytes", "memory.usage_in_bytes"),
                           (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]
    for folder, limit_name, usage_name in candidates:
        limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
        if limit is not None and usage is not None:
            return max(0, limit - usage) if limit < _UNLIMITED else None
    return None


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def address_space_headroom() -> Optional[int]:
    """Bytes left under ``RLIMIT_AS`` (``ulimit -v``) and ``RLIMIT_DATA``: the limit less the
    current ``VmSize`` / ``VmData``; None when neither is limited."""
    left = []
    for limit_name, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit_name)
        used = _status_kib(field)
        if soft != resource.RLIM_INFINITY and used is not None:
            left.append(max(0, soft - used))
    return min(left) if left else None


def available_cpu_memory() -> dict[str, Any]:
    """What a CPU process may still allocate, by source (bytes; None where a source does not
    limit): ``mem_available`` (``MemAvailable``, via psutil), ``cgroup`` (limit - usage),
    ``address_space`` (``ulimit -v`` / data limit less what is mapped), and ``available``, the
    smallest of them."""
    sources = {"mem_available": int(psutil.virtual_memory().available),
               "cgroup": cgroup_headroom(), "address_space": address_space_headroom()}
    sources["available"] = min(v for v in sources.values() if v is not None)
    return sources


def cpu_margin(available: int) -> int:
    """Bytes kept free below what is available: ``max(20%, 256 MiB)``, at most half of it.

    The probe counts tensor bytes; the process's resident set grows more (the allocator's
    caches and rounding, oneDNN scratch buffers, data-loader copies: measured 5-20% above the
    tensors on CPU), and other processes share ``MemAvailable``.
    """
    return min(max(available // 5, 256 * MiB), available // 2)


def default_cap(device: Any) -> Optional[int]:
    """The cap when none is given, in bytes.

    CUDA: total memory less ``max(10% of total, 512 MiB)`` (the CUDA context, the caching
    allocator's rounding and fragmentation over a long run, and cuDNN/cuBLAS workspaces whose
    size depends on the algorithm picked). CPU: what the process may still allocate
    (``available_cpu_memory``) less ``cpu_margin``. Other devices (mps, xpu): None (no cap).
    """
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
        return int(total - max(total // 10, 512 * MiB))
    if kind == "cpu":
        available = available_cpu_memory()["available"]
        return int(available - cpu_margin(available))
    return None


def resident_bytes_now() -> int:
    """The process's resident set size (bytes)."""
    return int(psutil.Process().memory_info().rss)


def reset_peak_resident() -> bool:
    """Restart the process's peak resident set (``VmHWM``) from now: writes ``5`` to
    ``/proc/self/clear_refs`` (Linux >= 4.0). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> Optional[int]:
    """The process's peak resident set since start or the last ``reset_peak_resident`` (bytes;
    ``VmHWM``); None off Linux."""
    return _status_kib("VmHWM")
