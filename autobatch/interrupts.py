"""Ctrl-C that is never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` at the next bytecode; when that bytecode
runs inside a weak-reference or ``__del__`` callback (the garbage collector's, e.g. a
``WeakKeyDictionary`` entry removed while a model copy is freed), Python prints "Exception
ignored" and the interrupt is gone: the run carries on as if nothing was pressed. The CLI
installs ``install()``'s handler, which also records the interrupt; the training step loop and
the worker's claim loop call ``check()``, which raises ``KeyboardInterrupt`` again at a safe point
once one was recorded. Library use (``autobatch.tune`` in a notebook) keeps Python's handler:
``check()`` then never raises.
"""

from __future__ import annotations

import signal
import threading

_pressed = threading.Event()


def _handler(signum: int, frame: object) -> None:
    _pressed.set()
    raise KeyboardInterrupt


def install() -> None:
    """Record every SIGINT as well as raising it (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT was recorded (one a callback may have swallowed)."""
    if _pressed.is_set():
        raise KeyboardInterrupt
