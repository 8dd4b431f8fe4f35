"""What a replay memory holds, and the verbs every memory (reservoir, window) shares."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from livelm.learner.encoding import EncodedDocument

# A token id as stored by a compact array (int32); Python ints cost more, but the budget is
# meant to bound what a memory costs to ship or persist, not the interpreter's overhead.
BYTES_PER_TOKEN = 4


@dataclass(frozen=True)
class MemoryItem:
    """A past document with its place in the stream: `index` counts scored documents from 0,
    `timestamp` is its stream time (see `livelm.policy.span.stream_time`)."""

    doc: EncodedDocument
    index: int
    timestamp: float

    @property
    def nbytes(self) -> int:
        """The text's UTF-8 bytes plus its token ids."""
        ids = sum(len(c) for c in self.doc.chunks)
        return len(self.doc.doc.text.encode("utf-8")) + BYTES_PER_TOKEN * ids


class Memory(Protocol):
    """A bounded store of past documents that replay samples from."""

    def add(self, item: MemoryItem) -> None: ...

    def sample(self, n: int, rng: random.Random) -> list[MemoryItem]:
        """Up to `n` distinct items, uniformly at random."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[MemoryItem]: ...

    @property
    def nbytes(self) -> int: ...
