"""Prequential (test-then-train) evaluation over a stream.

`prequential` is a generator of `StepReport`s; `Tally` folds them into the figures of the
replay contract. Progress bars and reports consume the events; nothing here prints.
"""

from __future__ import annotations

import itertools
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


def step_size(config: LearnerConfig, tokens: Sequence[int]) -> int:
    """How many of the documents at hand, in stream order, make the next step.

    `tokens` holds their predicted-token counts (`EncodedDocument.tokens`). A step takes at most
    `config.max_docs_per_step` documents; with `config.step_tokens` set it closes as soon as its
    documents hold that many tokens, and a document that alone holds that many is a step of its
    own (it closes the step before it). With fewer documents at hand than a full step, the step
    takes them all. Steps then carry a like number of tokens whether the stream is headlines or
    articles, and so updates of a like weight.

    The server and the workers take `max_docs_per_step` documents, step on the first
    `step_size(...)` of them and keep the rest for the next step.

    >>> config = LearnerConfig(max_docs_per_step=8, step_tokens=100)
    >>> step_size(config, [30, 30, 30, 30, 30])  # closes at 120 tokens
    4
    >>> step_size(config, [30, 500, 30])  # the long document waits for a step of its own
    1
    >>> step_size(config, [500, 30])
    1
    >>> step_size(LearnerConfig(max_docs_per_step=2), [30, 30, 30])  # by count alone
    2
    """
    limit = config.step_tokens
    held = 0
    for n, count in enumerate(tokens[: config.max_docs_per_step]):
        if limit is not None and n > 0 and count >= limit:
            return n
        held += count
        if limit is not None and held >= limit:
            return n + 1
    return min(len(tokens), config.max_docs_per_step)


def batches(
    learner: Stepper, docs: Iterable[Document], max_docs: int | None = None
) -> Iterator[list[EncodedDocument]]:
    """Consecutive documents, encoded, grouped into steps by `step_size`."""
    config = learner.config
    stream = iter(docs if max_docs is None else itertools.islice(docs, max_docs))
    ahead: list[EncodedDocument] = []  # encoded, not yet in a step: at most one step's worth
    while True:
        ahead += (
            learner.encode(d)
            for d in itertools.islice(stream, config.max_docs_per_step - len(ahead))
        )
        if not ahead:
            return
        n = step_size(config, [e.tokens for e in ahead])
        yield ahead[:n]
        ahead = ahead[n:]


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
