"""When the disk is the problem: the errors the document queue raises for writes its disk
refuses, and for a file that is not a database (any more).

A refused write is not the client's fault and not lasting: the API answers 503 with a
Retry-After, the learner retries with back-off, and the same write succeeds once there is room.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

# Errors that say the disk cannot take a write now (not that the request or the data is wrong):
# SQLite's primary result codes, and the errno of an OS call.
_STORAGE_CODES = {
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
}
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT}


class StorageUnavailable(OSError):
    """The queue's disk refused a write (full, read-only, failing); nothing was stored.

    Transient: the same write succeeds once the disk has room. An OSError, so that a loop that
    retries failed I/O with back-off (the learner's acknowledgements) retries this one too.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"the document queue cannot store ({reason}: {path}); free space on its disk or make "
            "it writable, then retry"
        )
        self.reason = reason


class QueueFileError(RuntimeError):
    """The queue file is not a database SQLite can read (truncated, overwritten)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path} is not a readable document queue ({reason}): restore it from a backup, or "
            "move it away to start an empty queue (the snapshots are kept, and new documents "
            "continue after them)"
        )


def storage_reason(error: BaseException) -> str | None:
    """Why a failed write failed, when the disk is the cause; None for any other error."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _STORAGE_CODES:  # extended codes carry detail
            return str(error)
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
        return os.strerror(error.errno)
    return None
