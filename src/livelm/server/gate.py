"""Serving before learning on a shared CPU, with a guaranteed share for the learner.

Model requests (generation, scoring) enter through `serving()`; the learner calls `wait_turn()`
before each step or publish and `end_turn()` once it is done. A step cannot be interrupted once
started, so the learner starts one

- *quiet*: when no request is running or waiting and none has finished in the last `quiet_s`
  seconds (a client's next request usually follows its last within milliseconds);
- *share*: when its share is due: under a steady load the learner still gets `share` of the
  wall-clock time (see below), so that what is posted is learned at a steady rate and freshness
  stays bounded however busy the server is;
- *deadline*: once it has waited `max_wait_s`, whatever it owes.

The share is kept as a debt, in seconds: a turn of B seconds that overlapped a request (one was
running when it began, or one started before it ended) adds B (1 - share), paid back at `share`
seconds per second between turns, so that under load the learner's turns take `share` of the
time. A publish that makes the step just taken live follows it at once (`follow_on`), charged
all the same: a pause between them would only add to every document's freshness. A quiet turn
that no request met costs nothing. `share=0` turns the share off: the learner then steps under
load only after `max_wait_s`. A turn under load runs alongside the requests (it does not hold
them): requests slow down while it runs, rather than wait for it.

At most `max_inflight` requests run at once: on a CPU each already uses every core, so more
would only share them; the others wait, counted as waiting, so the learner keeps yielding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

Reason = Literal["quiet", "share", "follow-on", "deadline", "closed"]
_PAID = 1e-6  # seconds of debt that count as none (the clock's rounding)


@dataclass(frozen=True)
class Turn:
    waited: float  # seconds
    reason: Reason  # why the learner may go now


@dataclass
class _Held:
    started: float
    overlapped: bool  # a request was running when the turn began
    requests: int  # requests started before it began


class PriorityGate:
    """See the module docstring.

    >>> gate = PriorityGate(max_inflight=1, quiet_s=0.0, max_wait_s=1.0, share=0.5)
    >>> gate.wait_turn().reason  # nothing is running
    'quiet'
    >>> gate.end_turn()
    """

    def __init__(
        self,
        *,
        max_inflight: int,
        quiet_s: float,
        max_wait_s: float,
        share: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"--learner-share must lie in [0, 1], not {share}")
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self.share = share
        self._clock = clock
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._cond = threading.Condition()
        self._active = 0  # requests running or waiting for a slot
        self._last_done = -float("inf")
        self._closed = False
        self.requests = 0  # requests started, ever
        self.turns = 0  # learner turns given, ever
        self.overlapped_seconds = 0.0  # the learner's turns that met a request, in seconds
        self._debt = 0.0  # seconds of turns under load not yet paid back
        self._debt_at = clock()
        self._held: _Held | None = None

    @property
    def active(self) -> int:
        return self._active

    @property
    def debt(self) -> float:
        with self._cond:
            return self._repay(self._clock())

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Hold a serving slot for one model request."""
        with self._cond:
            self._active += 1
            self.requests += 1
        try:
            with self._slots:
                yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_done = self._clock()
                self._cond.notify_all()

    def quiet_for(self, seconds: float) -> bool:
        """Whether no request has run (or waited) in the last `seconds`."""
        with self._cond:
            return self._active == 0 and self._clock() - self._last_done >= seconds

    def _repay(self, now: float) -> float:
        """The debt at `now` (called under the lock): paid back at `share` per second of the
        time the learner does not hold a turn."""
        if self._held is None:
            self._debt = max(0.0, self._debt - self.share * (now - self._debt_at))
        self._debt_at = now
        return self._debt

    def wait_turn(self, *, follow_on: bool = False) -> Turn:
        """Block until the learner may take a step (or publish); `end_turn()` when done.
        `follow_on`: this turn completes the one just ended (the publish of its step)."""
        self.end_turn()
        started = self._clock()
        deadline = started + self.max_wait_s
        with self._cond:
            reason: Reason = "closed"
            while not self._closed:
                now = self._clock()
                debt = self._repay(now)
                if self._active == 0 and now >= self._last_done + self.quiet_s:
                    reason = "quiet"
                    break
                if self.share > 0 and follow_on:
                    reason = "follow-on"
                    break
                if self.share > 0 and debt <= _PAID:
                    reason = "share"
                    break
                if now >= deadline:
                    reason = "deadline"
                    break
                wake = deadline
                if self.share > 0:
                    wake = min(wake, now + debt / self.share)
                if self._active == 0:
                    wake = min(wake, self._last_done + self.quiet_s)
                self._cond.wait(max(0.0, wake - now))
            now = self._clock()
            self._held = _Held(now, self._active > 0, self.requests)
            self.turns += 1
        return Turn(now - started, reason)

    def end_turn(self) -> None:
        """The learner's turn is over (a no-op when it holds none). A turn that met a request
        is charged to the learner's share."""
        with self._cond:
            held = self._held
            if held is None:
                return
            now = self._clock()
            self._repay(now)
            self._held = None
            seconds = now - held.started
            if held.overlapped or self.requests != held.requests or self._active > 0:
                self.overlapped_seconds += seconds
                # Owing more than `max_wait_s` would pay back changes nothing: the deadline
                # gives the next turn first.
                owed = self._debt + (1 - self.share) * seconds
                self._debt = min(owed, self.share * self.max_wait_s)
            else:  # a quiet turn: the time passed as if the learner had waited
                self._debt = max(0.0, self._debt - self.share * seconds)
            self._cond.notify_all()

    def close(self) -> None:
        """Release a waiting learner for good (at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
