"""A sliding window: only the most recent documents, by count or by stream time."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator

from livelm.policy.memory import MemoryItem
from livelm.policy.span import Span


class SlidingWindow:
    """The last `span` documents, or those less than `span` of stream time older than the newest.

    A time window is also capped at `max_docs` and `max_bytes` (the oldest go first), so a burst
    of documents with one timestamp cannot grow it without bound. Documents leave in arrival
    order: in a stream whose times are slightly out of order, a late-dated one leaves with its
    neighbours.

    >>> # w = SlidingWindow(Span.parse("30d"), max_docs=5000); w.add(item)
    """

    def __init__(
        self, span: Span, max_docs: int | None = None, max_bytes: int | None = None
    ) -> None:
        if max_docs is not None and max_docs < 1:
            raise ValueError(f"a window holds at least 1 document, not {max_docs}")
        self.span = span
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.newest = -math.inf
        self._items: deque[MemoryItem] = deque()
        self._bytes = 0

    def add(self, item: MemoryItem) -> None:
        self._items.append(item)
        self._bytes += item.nbytes
        self.newest = max(self.newest, item.timestamp)
        while self._items and self._too_many():
            self._bytes -= self._items.popleft().nbytes

    def _too_many(self) -> bool:
        n = len(self._items)
        if self.span.in_time:
            if self.newest - self._items[0].timestamp >= self.span.amount:
                return True
        elif n > self.span.amount:
            return True
        if self.max_docs is not None and n > self.max_docs:
            return True
        return self.max_bytes is not None and self._bytes > self.max_bytes

    def sample(self, n: int, rng: random.Random) -> list[MemoryItem]:
        return rng.sample(list(self._items), min(n, len(self._items)))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[MemoryItem]:
        return iter(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
