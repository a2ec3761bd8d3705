"""The library's one root exception.

An ``AutobatchError`` is a user error: the CLI prints its message as one line on stderr and
exits 2, with no traceback (``--debug`` or ``AUTOBATCH_DEBUG=1`` shows it). Anything else that
escapes is a bug and keeps its traceback. Messages must never contain a storage password (use
``storage.mask_url``).
"""

from __future__ import annotations


class AutobatchError(Exception):
    """A problem the user can fix: bad argument, unknown model, unreachable database, ..."""


class NoStudiesError(AutobatchError):
    """The storage is reachable but holds no autobatch schema: no study was ever created."""


class UserCodeError(AutobatchError):
    """The user's own code raised: a model factory, a forward pass, a ``--step`` function, the
    loss or metric on the user's outputs, a dataset factory or a dataset item.

    ``where`` names the function (``"forward of TupleOut"``, ``"step pkg.mod:fn"``); the message
    is ``"<where> raised <Type>: <first line of the message>"``. The original exception is the
    ``__cause__`` (shown with ``--debug``).
    """

    def __init__(self, where: str, exc: BaseException) -> None:
        self.where = where
        self.exc_type = type(exc).__name__
        self.reason = first_line(exc)
        super().__init__(f"{where} raised {self.exc_type}: {self.reason}")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, at most ``limit`` characters."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
