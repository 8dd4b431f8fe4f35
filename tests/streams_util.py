"""Synthetic streams for the tests' tiny models."""

from __future__ import annotations

import random

from livelm.document import Document


def two_sources(n: int, switch_at: int, topics: str) -> list[Document]:
    """Word salad from the words of `topics` until `switch_at`, then runs of numbers: a stream
    that switches source, ids `d0`, `d1`, ..."""
    rng = random.Random(0)
    words = topics.split()
    docs = []
    for i in range(n):
        if i < switch_at:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) + "."
        else:
            text = " ".join(str(rng.randint(0, 99999)) for _ in range(rng.randint(4, 8)))
        docs.append(Document(text, id=f"d{i}"))
    return docs
