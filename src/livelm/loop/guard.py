"""The publish guard: a candidate version is scored on canary documents before it goes live.

A candidate is refused when its canary loss

- is not finite (the weights diverged);
- rose by more than `max_rise` nats per token over the live version's (`--guard-max-rise`): a
  *jump* within one version, from divergence (a learning rate too large for the stream) or
  poisoning (documents crafted to wreck the model);
- rose by more than `max_total_rise` nats per token over the base model's
  (`--guard-max-total-rise`): a *slow climb*, each version a little worse than the one before
  and every step under the first limit, that adds up to a model that no longer knows what it
  knew (a probe saw 3.92 -> 5.04 over five versions). Once it trips, every candidate is refused
  until someone rolls back or raises the limit: the learner does not drift on unnoticed.

The canary set is a few paragraphs of plain, general English by default, or any stream file
(`--canary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeGuard

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
    def __init__(
        self, docs: Sequence[Document], max_rise: float, max_total_rise: float = math.inf
    ) -> None:
        if not docs:
            raise ValueError("the guard needs at least one canary document")
        for flag, value in (
            ("--guard-max-rise", max_rise),
            ("--guard-max-total-rise", max_total_rise),
        ):
            if not value > 0:
                raise ValueError(f"{flag} must be a positive number, not {value}")
        self.docs = list(docs)
        self.max_rise = max_rise
        self.max_total_rise = max_total_rise
        self._encoded: list[EncodedDocument] | None = None

    def loss(self, learner: Scores) -> float:
        """The learner's token-weighted loss on the canary set, under its current weights."""
        if self._encoded is None:
            self._encoded = [learner.encode(d) for d in self.docs]
        scores = learner.score(self._encoded)
        tokens = sum(s.tokens for s in scores)
        return sum(s.loss * s.tokens for s in scores) / tokens if tokens else math.nan

    def check(
        self, learner: Scores, live_loss: float | None, base_loss: float | None = None
    ) -> Verdict:
        """The candidate's verdict against the live version's and the base model's canary
        losses (either may be unknown: None)."""
        loss = self.loss(learner)
        if not math.isfinite(loss):
            return Verdict(loss, f"canary loss is {loss}")
        if _known(live_loss) and loss > live_loss + self.max_rise:
            return Verdict(
                loss,
                f"canary loss rose from {live_loss:.3f} to {loss:.3f}, more than "
                f"--guard-max-rise {self.max_rise:g}",
            )
        if _known(base_loss) and loss > base_loss + self.max_total_rise:
            return Verdict(
                loss,
                f"canary loss rose from the base model's {base_loss:.3f} to {loss:.3f}, more "
                f"than --guard-max-total-rise {self.max_total_rise:g}: roll back to an earlier "
                "version, or raise the limit",
            )
        return Verdict(loss, None)


def _known(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)
