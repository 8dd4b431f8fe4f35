"""The publish guard: a candidate version is scored on canary documents before it goes live.

A candidate whose canary loss is not finite, or rose by more than `max_rise` nats per token over
the live version's, is refused: divergence (a learning rate too large for the stream) and
poisoning (documents crafted to wreck the model) both show up as a jump on text the stream should
not have changed much. The canary set is a few paragraphs of plain, general English by default,
or any stream file (`--canary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from livelm.document import Document
from livelm.learner import DocScore, EncodedDocument
from livelm.source.files import read_stream

CANARY_TEXTS = (
    "The sun rises in the east and sets in the west. Most days begin with breakfast, and "
    "many people walk or drive to work in the morning.",
    "Water boils at one hundred degrees Celsius at sea level. Ice melts when it is warmed, "
    "and steam rises from a pot of boiling water.",
    "The library opens at nine o'clock. Visitors may borrow up to five books for three weeks, "
    "and late returns pay a small fine.",
    "A healthy diet includes fruit, vegetables, grains and protein. Doctors recommend "
    "drinking water and getting enough sleep every night.",
    "The city council met on Tuesday to discuss the new park. Residents asked for more trees, "
    "a playground and benches near the river.",
    "She opened the letter, read it twice, and smiled. Her brother was coming home for the "
    "holidays after two years abroad.",
    "Computers store information as bits. A program is a list of instructions that tells the "
    "computer what to do, step by step.",
    "The train to the coast leaves every hour. Tickets can be bought at the station or online, "
    "and children under five travel free.",
)


class Scores(Protocol):
    def encode(self, doc: Document) -> EncodedDocument: ...

    def score(self, docs: Sequence[EncodedDocument]) -> tuple[DocScore, ...]: ...


def canary_documents(path: Path | None) -> list[Document]:
    if path is None:
        return [Document(text, id=f"canary-{i}") for i, text in enumerate(CANARY_TEXTS)]
    docs = list(read_stream(path))
    if not docs:
        raise ValueError(f"--canary {path}: no documents in it")
    return docs


@dataclass(frozen=True)
class Verdict:
    loss: float  # the candidate's token-weighted canary loss, nats per token
    refused: str | None  # why the candidate may not be published; None when it may


class CanaryGuard:
    def __init__(self, docs: Sequence[Document], max_rise: float) -> None:
        if not docs:
            raise ValueError("the guard needs at least one canary document")
        self.docs = list(docs)
        self.max_rise = max_rise
        self._encoded: list[EncodedDocument] | None = None

    def loss(self, learner: Scores) -> float:
        """The learner's token-weighted loss on the canary set, under its current weights."""
        if self._encoded is None:
            self._encoded = [learner.encode(d) for d in self.docs]
        scores = learner.score(self._encoded)
        tokens = sum(s.tokens for s in scores)
        return sum(s.loss * s.tokens for s in scores) / tokens if tokens else math.nan

    def check(self, learner: Scores, live_loss: float | None) -> Verdict:
        loss = self.loss(learner)
        if not math.isfinite(loss):
            return Verdict(loss, f"canary loss is {loss}")
        if live_loss is not None and math.isfinite(live_loss) and loss > live_loss + self.max_rise:
            return Verdict(
                loss,
                f"canary loss rose from {live_loss:.3f} to {loss:.3f}, more than "
                f"--guard-max-rise {self.max_rise:g}",
            )
        return Verdict(loss, None)
