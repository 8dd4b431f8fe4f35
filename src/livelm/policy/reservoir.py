"""A reservoir: a uniform random sample of every document seen, bounded in documents and bytes.

Each document draws a uniform random key when it arrives and the reservoir keeps the documents
with the largest keys: with equal weights, Efraimidis and Spirakis's A-Res, which holds the same
sample as Vitter's algorithm R. Every document seen so far is equally likely to be held,
whenever it came, so replay from it revisits the whole stream rather than its recent past. The
byte bound evicts the smallest keys too: it shrinks the sample (slightly favouring short
documents, which fit where long ones do not) without favouring any part of the stream.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator

from livelm.policy.memory import MemoryItem


class Reservoir:
    """At most `max_docs` documents and `max_bytes` bytes (`MemoryItem.nbytes`), uniformly drawn.

    >>> # r = Reservoir(max_docs=1000, max_bytes=64 << 20, seed=0); r.add(item)
    """

    def __init__(self, max_docs: int, max_bytes: int | None = None, seed: int = 0) -> None:
        if max_docs < 1:
            raise ValueError(f"a reservoir holds at least 1 document, not {max_docs}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"a reservoir's byte bound must be positive, not {max_bytes}")
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.seen = 0
        self._rng = random.Random(seed)
        self._heap: list[tuple[float, int, MemoryItem]] = []  # min-heap of (key, arrival, item)
        self._bytes = 0

    def add(self, item: MemoryItem) -> None:
        self.seen += 1
        key = self._rng.random()  # drawn for every document, kept or not: the sample stays seeded
        size = item.nbytes
        if self.max_bytes is not None and size > self.max_bytes:
            return  # it could never be held
        if len(self._heap) >= self.max_docs and key <= self._heap[0][0]:
            return
        heapq.heappush(self._heap, (key, self.seen, item))
        self._bytes += size
        while len(self._heap) > self.max_docs or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            _, _, dropped = heapq.heappop(self._heap)
            self._bytes -= dropped.nbytes

    def sample(self, n: int, rng: random.Random) -> list[MemoryItem]:
        held = [item for _, _, item in self._heap]
        return rng.sample(held, min(n, len(held)))

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[MemoryItem]:
        return (item for _, _, item in self._heap)

    @property
    def nbytes(self) -> int:
        return self._bytes
