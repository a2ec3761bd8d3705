"""User code by import path (``pkg.module:function``) and the one-line error for an unknown name."""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from ..errors import AutobatchError


def import_path(spec: str, what: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any import failure is their error to fix
        raise AutobatchError(f"cannot import {what} module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AutobatchError(f"{what} {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def unknown_name(kind: str, name: str, known: list[str]) -> AutobatchError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return AutobatchError(f"unknown {kind} {name!r}{hint} (or give pkg.module:function)")
