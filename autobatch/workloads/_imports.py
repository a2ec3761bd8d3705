"""User code by import path (``pkg.module:function``), the objects a Python caller handed over
in-process, and the one-line error for an unknown name.

``autobatch.tune(model=fn, ...)`` runs with its objects *in scope* (``in_process``): for that
call, and in that context only, the name ``object_name(fn)`` resolves to ``fn`` itself. Nothing
global is mutated; another process resolves the same name by importing it (which works when
``fn`` lives in an importable module, not in a notebook's ``__main__``).
"""

from __future__ import annotations

import difflib
import importlib
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

from ..errors import AutobatchError

_IN_PROCESS: ContextVar[Mapping[str, Any]] = ContextVar("autobatch_in_process", default=MappingProxyType({}))


@contextmanager
def in_process(objects: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, ``resolve(name)`` returns ``objects[name]`` without importing."""
    token = _IN_PROCESS.set({**_IN_PROCESS.get(), **objects})
    try:
        yield
    finally:
        _IN_PROCESS.reset(token)


def in_scope(spec: str) -> bool:
    """Whether ``spec`` names an object handed over in-process."""
    return spec in _IN_PROCESS.get()


def object_name(obj: Any, kind: str) -> str:
    """The name under which an in-process object is stored with the study: its import path
    ``module:qualname`` when it has one (another process can import it), else ``python:<kind>``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        return f"{module}:{qualname}"
    return f"python:{getattr(type(obj), '__name__', kind)}-{kind}"


def import_path(spec: str, what: str) -> Callable:
    """The callable ``spec`` names: an object in scope (``in_process``), else imported."""
    found = _IN_PROCESS.get().get(spec)
    if found is not None:
        return found
    if spec.startswith("python:"):
        raise AutobatchError(f"{what} {spec!r} was a Python object handed to autobatch.tune() in another "
                             "process; a separate worker needs an import path (pkg.module:function)")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any import failure is their error to fix
        raise AutobatchError(f"cannot import {what} module {module_name!r}: {exc}") from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise AutobatchError(f"{what} {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def unknown_name(kind: str, name: str, known: list[str]) -> AutobatchError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return AutobatchError(f"unknown {kind} {name!r}{hint} (or give pkg.module:function)")
