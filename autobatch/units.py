"""Units: parsing and formatting of durations (``90s``, ``1h30m``) and byte sizes (``512MiB``)."""

from __future__ import annotations

import re

from .errors import AutobatchError

_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_BYTE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``4h``, ``1h30m`` or a bare number of seconds."""
    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = _DURATION_PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw or len({u for _, u in parts}) != len(parts):
            raise AutobatchError(
                f"malformed duration {text!r}: use forms like 90s, 10m, 4h or 1h30m"
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise AutobatchError(f"duration {text!r} must be positive")
    return seconds


def parse_bytes(text: str | int) -> int:
    """Bytes in ``512MiB``, ``8GiB``, ``1.5GB`` or a bare integer."""
    if isinstance(text, int):
        value = text
    else:
        match = _BYTES.fullmatch(str(text).strip().lower())
        if not match or match.group(2) not in _BYTE_UNITS:
            raise AutobatchError(
                f"malformed size {text!r}: use forms like 512MiB, 8GiB or 2000000000"
            )
        value = int(float(match.group(1)) * _BYTE_UNITS[match.group(2)])
    if value <= 0:
        raise AutobatchError(f"size {text!r} must be positive")
    return value


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
