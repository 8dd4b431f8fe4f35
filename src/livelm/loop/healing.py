"""Writes that fail for a reason that can pass (a full disk, a read-only or failing file system)
are retried with back-off until they succeed or the loop is asked to stop; meanwhile `trouble`
says why (the server's `/readyz` shows it)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a write may fail with and succeed later: a full or read-only disk, an I/O error.
TRANSIENT: tuple[type[BaseException], ...] = (OSError, sqlite3.OperationalError)


class Stopped(Exception):
    """Asked to stop while waiting to retry a write."""


class Healer:
    """Retries transient failures: `first_s`, doubling up to `max_s`, until `stop` is set."""

    def __init__(self, stop: threading.Event, first_s: float, max_s: float) -> None:
        self.stop = stop
        self.first_s = first_s
        self.max_s = max_s
        self.trouble: str | None = None  # why a write is waiting to be retried, if one is

    def retry(self, what: str, action: Callable[[], T]) -> T:
        """`action()`, retried on a transient failure; raises `Stopped` if asked to stop."""
        delay = self.first_s
        while True:
            try:
                result = action()
            except TRANSIENT as e:
                self.trouble = f"cannot {what}: {e}; retrying every {delay:g} s"
                log.warning("%s", self.trouble)
                if self.stop.wait(delay):
                    raise Stopped from e
                delay = min(delay * 2, self.max_s)
                continue
            if self.trouble is not None:
                log.info("%s: succeeded after all", what)
                self.trouble = None
            return result
