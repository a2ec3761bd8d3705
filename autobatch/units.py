"""Units: parsing and formatting of durations (``90s``, ``1h30m``) and byte sizes (``512MiB``)."""

from __future__ import annotations

import re

import humanfriendly
from humanfriendly.text import tokenize

from .errors import AutobatchError

_SHORT_BINARY = re.compile(r"[\d.]+\s*[kmgt]", re.IGNORECASE)  # 4g, 512m: binary, as docker and torch mean them
_SIZE = re.compile(r"\d+(\.\d+)?\s*(([kmgtpe]i?)?b|[kmgtpe]|bytes?|(kilo|mega|giga|tera|peta|kibi|mebi|gibi|tebi|pebi)?bytes?)?",
                   re.IGNORECASE)  # a number and a known unit


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``4h``, ``1h30m``, ``1.5h``, ``2 hours`` or a bare number of
    seconds. Each number-unit pair is read by ``humanfriendly.parse_timespan`` (s, m, h, d, w
    and their long names); the pairs of a compound like ``1h30m`` are added, each unit once.
    Raises ``AutobatchError`` for anything else, and for zero or less."""
    tokens = tokenize(str(text).strip())
    pairs = list(zip(tokens[::2], tokens[1::2]))
    malformed = AutobatchError(f"malformed duration {text!r}: use forms like 90s, 10m, 4h or 1h30m")
    if str(text).strip().startswith("-"):
        raise AutobatchError(f"duration {text!r} must be positive: use forms like 90s, 10m, 4h or 1h30m")
    if len(tokens) == 1 and isinstance(tokens[0], (int, float)):
        seconds = float(tokens[0])
    elif tokens and len(tokens) % 2 == 0 and all(isinstance(n, (int, float)) and isinstance(u, str)
                                                for n, u in pairs):
        try:
            seconds = sum(humanfriendly.parse_timespan(f"{n}{u}") for n, u in pairs)
        except humanfriendly.InvalidTimespan:
            raise malformed from None
        if len({humanfriendly.parse_timespan(f"1{u}") for _, u in pairs}) != len(pairs):
            raise malformed  # 1h1h
    else:
        raise malformed
    if seconds <= 0:
        raise AutobatchError(f"duration {text!r} must be positive")
    return float(seconds)


def parse_bytes(text: str | int) -> int:
    """Bytes in ``512MiB``, ``8GiB``, ``1.5GB``, ``4g`` or a bare integer, read by
    ``humanfriendly.parse_size``: ``KiB``/``MiB``/``GiB`` are binary, ``KB``/``MB``/``GB``
    decimal, and a one-letter suffix (``4g``) binary, as docker and torch mean it. Raises
    ``AutobatchError`` for anything else, and for zero or less."""
    if isinstance(text, int):
        value = text
    else:
        raw = str(text).strip()
        if raw.startswith("-"):
            raise AutobatchError(f"size {text!r} must be positive: use forms like 512MiB, 8GiB or 2000000000")
        if not _SIZE.fullmatch(raw):  # humanfriendly reads "12parsecs" as 12 PB (by its first letter)
            raise AutobatchError(f"malformed size {text!r}: use forms like 512MiB, 8GiB or 2000000000")
        try:
            value = int(humanfriendly.parse_size(raw, binary=_SHORT_BINARY.fullmatch(raw) is not None))
        except humanfriendly.InvalidSize:
            raise AutobatchError(f"malformed size {text!r}: use forms like 512MiB, 8GiB or 2000000000") from None
    if value <= 0:
        raise AutobatchError(f"size {text!r} must be positive")
    return value


def format_bytes(n: float | None) -> str:
    """``3.0 GiB``, ``718.9 KiB``: one decimal, binary units (``humanfriendly.format_size`` has no
    precision setting and prints two decimals, too wide for progress lines and tables)."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    """``1h30m``, ``1m15s``, ``42s``: the compact form of the progress lines
    (``humanfriendly.format_timespan`` writes ``1 hour, 30 minutes and 15 seconds``)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
