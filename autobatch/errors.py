"""The library's one root exception.

An ``AutobatchError`` is a user error: the CLI prints its message as one line on stderr and
exits 2, with no traceback. Anything else that escapes is a bug and keeps its traceback.
Messages must never contain a storage password (use ``storage.mask_url``).
"""


class AutobatchError(Exception):
    """A problem the user can fix: bad argument, unknown model, unreachable database, ..."""


class NoStudiesError(AutobatchError):
    """The storage is reachable but holds no autobatch schema: no study was ever created."""
