"""Serving before learning on a shared CPU.

Model requests (generation, scoring) enter through `serving()`; the learner calls `wait_turn()`
before each step. A learning step cannot be interrupted once started, so the learner starts one
only when no request is running or waiting and none has finished in the last `quiet_s` seconds
(a client's next request usually follows its last within milliseconds), or, so that learning
never starves under a steady load, once it has waited `max_wait_s`. A turn is `contended` when
it was taken that way or requests ran in the last `recent_s` seconds: more are likely to come
during the step, so the learner takes the smallest step it can, to be out of their way soon.

At most `max_inflight` requests run at once: on a CPU each already uses every core, so more
would only share them; the others wait, counted as waiting, so the learner keeps yielding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    waited: float  # seconds
    contended: bool  # requests are coming: forced after max_wait_s, or some ran just before


class PriorityGate:
    def __init__(
        self, *, max_inflight: int, quiet_s: float, max_wait_s: float, recent_s: float = 1.0
    ) -> None:
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self.recent_s = recent_s
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._cond = threading.Condition()
        self._active = 0  # requests running or waiting for a slot
        self._last_done = -float("inf")
        self._closed = False

    @property
    def active(self) -> int:
        return self._active

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Hold a serving slot for one model request."""
        with self._cond:
            self._active += 1
        try:
            with self._slots:
                yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_done = time.monotonic()
                self._cond.notify_all()

    def wait_turn(self) -> Turn:
        """Block until the learner may take a step."""
        started = time.monotonic()
        deadline = started + self.max_wait_s
        forced = False
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if now >= deadline:
                    forced = True
                    break
                if self._active == 0:
                    quiet_left = self._last_done + self.quiet_s - now
                    if quiet_left <= 0:
                        break
                    self._cond.wait(min(quiet_left, deadline - now))
                else:
                    self._cond.wait(deadline - now)
            now = time.monotonic()
            recent = now - self._last_done < self.recent_s
        return Turn(now - started, contended=forced or recent)

    def close(self) -> None:
        """Release a waiting learner for good (at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
