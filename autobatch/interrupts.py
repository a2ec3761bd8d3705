"""Ctrl-C that is never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` at the next bytecode; when that bytecode
runs inside a weak-reference or ``__del__`` callback (the garbage collector's, e.g. a
``WeakKeyDictionary`` entry removed while a model copy is freed), Python prints "Exception
ignored" and the interrupt is gone: the run carries on as if nothing was pressed. The CLI
installs ``install()``'s handler, which also records the interrupt; the training step loop and
the worker's claim loop call ``check()``, which raises ``KeyboardInterrupt`` again at a safe point
once one was recorded. ``deferred()`` holds an interrupt back (recorded, not raised) for the few
statements that take a trial and hand its id to the caller, so that it cannot land between the
database's commit and the caller's hand-back code. Library use (``autobatch.tune`` in a notebook) keeps Python's handler:
``check()`` then never raises.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_pressed = threading.Event()
_deferring = [0]  # nesting depth of ``deferred()`` (the handler runs on the main thread only)


def _handler(signum: int, frame: object) -> None:
    _pressed.set()
    if not _deferring[0]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While inside, a SIGINT is recorded and not raised: the next ``check()`` raises it (the
    caller checks right after it has made what it took safe to hand back). Never wrap a wait
    in it without calling ``check()`` in the wait."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1


def install() -> None:
    """Record every SIGINT as well as raising it (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT was recorded (one a callback may have swallowed)."""
    if _pressed.is_set():
        raise KeyboardInterrupt
