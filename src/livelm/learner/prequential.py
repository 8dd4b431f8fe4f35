"""Prequential (test-then-train) evaluation over a stream.

`prequential` is a generator of `StepReport`s; `Tally` folds them into the figures of the
replay contract. Progress bars and reports consume the events; nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from livelm.document import Document
from livelm.learner.config import LearnerConfig
from livelm.learner.core import StepReport
from livelm.learner.encoding import EncodedDocument


class Stepper(Protocol):
    """What loops need of a learner: a `Learner`, or a `livelm.policy.PolicyLearner` around one."""

    @property
    def config(self) -> LearnerConfig: ...

    def encode(self, doc: Document) -> EncodedDocument: ...

    def step(self, docs: Sequence[EncodedDocument]) -> StepReport: ...


def batches(
    learner: Stepper, docs: Iterable[Document], max_docs: int | None = None
) -> Iterator[list[EncodedDocument]]:
    """Consecutive documents, encoded, grouped `max_docs_per_step` at a time."""
    size = learner.config.max_docs_per_step
    batch: list[EncodedDocument] = []
    for n, doc in enumerate(docs):
        if max_docs is not None and n >= max_docs:
            break
        batch.append(learner.encode(doc))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prequential(
    learner: Stepper, docs: Iterable[Document], max_docs: int | None = None
) -> Iterator[StepReport]:
    """Score each document under the weights before any update that used it, then learn."""
    for batch in batches(learner, docs, max_docs):
        yield learner.step(batch)


@dataclass
class Tally:
    """Token-weighted prequential loss and throughput, folded from step reports."""

    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    docs: int = 0
    tokens: int = 0
    nll: float = 0.0
    steps: int = 0
    updates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    doc_losses: list[float] = field(default_factory=list)
    doc_tokens: list[int] = field(default_factory=list)

    def add(self, report: StepReport) -> Tally:
        self.steps += 1
        self.updates += report.updated
        if report.skipped is not None:
            self.skipped[report.skipped] = self.skipped.get(report.skipped, 0) + 1
        for s in report.scores:
            self.docs += 1
            self.doc_losses.append(s.loss)
            self.doc_tokens.append(s.tokens)
            if s.tokens and math.isfinite(s.loss):
                self.tokens += s.tokens
                self.nll += s.loss * s.tokens
        return self

    def stop(self) -> None:
        self.finished = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else math.nan

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0
