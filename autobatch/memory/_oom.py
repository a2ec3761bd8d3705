"""Which exceptions mean "out of memory", on every device. Torch-free: judged by type name and
message, so the recommender and tests can use it without torch."""

from __future__ import annotations

import re

# Messages of allocation failures that torch raises as a plain RuntimeError (or MemoryError):
# - CPU: c10's DefaultCPUAllocator (``alloc_cpu.cpp``), e.g. under ``ulimit -v`` or a cgroup
#   limit: "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes";
# - MPS: "MPS backend out of memory (MPS allocated: ...)";
# - XPU / CUDA libraries: "XPU out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
#   "CUDNN_STATUS_ALLOC_FAILED" (cuDNN/cuBLAS workspaces), "HIP out of memory";
# - oneDNN (mkldnn) scratch buffers: "could not allocate memory"; errno 12 "Cannot allocate memory".
_OOM_MESSAGES = re.compile(
    r"DefaultCPUAllocator: can't allocate memory|out of memory|_ALLOC_FAILED|"
    r"could not allocate memory|Cannot allocate memory|not enough memory", re.IGNORECASE)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure: ``torch.OutOfMemoryError`` (CUDA, XPU), ``MemoryError``
    (a Python allocation under the same limit) and the ``RuntimeError`` messages above (CPU,
    MPS, library workspaces). Walks ``__cause__``/``__context__`` once, for errors re-raised by
    a wrapper (oneDNN's "could not create a primitive" raised while handling an allocation
    failure)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            return True
        if isinstance(exc, RuntimeError) and _OOM_MESSAGES.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
