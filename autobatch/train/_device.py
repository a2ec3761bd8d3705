"""Which device trains: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from ..errors import AutobatchError


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; ``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AutobatchError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)
