"""Forgetting by age: a replayed document weighs `0.5 ** (age / half_life)` in the update.

Old data is down-weighted rather than dropped: a document one half-life old counts half as much
as a fresh one, two half-lives a quarter. Age is counted in documents (how many were scored since
it) or in stream time (how much older it is than the newest document), as the half-life says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from livelm.policy.memory import MemoryItem
from livelm.policy.span import Span


def decay_weight(age: float, half_life: float) -> float:
    """`0.5 ** (age / half_life)`; a negative age (a document dated after "now") weighs 1.

    >>> decay_weight(200, half_life=100)
    0.25
    """
    return math.pow(0.5, max(0.0, age) / half_life)


@dataclass(frozen=True)
class Decay:
    """Weights replayed documents by their age, in documents or stream time."""

    half_life: Span

    def age(self, item: MemoryItem, index: int, now: float) -> float:
        """`index`: the stream index of the next document; `now`: the newest stream time."""
        if self.half_life.in_time:
            return now - item.timestamp
        return float(index - item.index)

    def weight(self, item: MemoryItem, index: int, now: float) -> float:
        return decay_weight(self.age(item, index, now), self.half_life.amount)
