"""One strategy's run in a replay: its learner, what it scored, and the documents it holds for
its next step; and the helpers around it (the reference loss, saving the learned weights)."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document
from livelm.learner import EncodedDocument, Learner, StepReport, Tally
from livelm.learner.prequential import step_size
from livelm.model import LoadedModel
from livelm.policy import PolicyLearner, Strategy, TopSurprises
from livelm.report import StrategyResult, write_text
from livelm.store.weights import save_weights

if TYPE_CHECKING:
    from livelm.replay import ReplayOptions

StepCallback = Callable[[str, StepReport, Tally], None]


def reference_loss(learner: Learner, docs: Sequence[Document]) -> float:
    """Token-weighted loss of fixed documents under the learner's current weights."""
    scores = learner.score([learner.encode(d) for d in docs])
    tokens = sum(s.tokens for s in scores if s.tokens)
    if not tokens:
        return math.nan
    return sum(s.loss * s.tokens for s in scores if s.tokens) / tokens


class Lane:
    """One strategy's run: its learner, what it scored so far, and the documents it holds for
    its next step.

    Documents come one at a time (`add`); a step is taken as `learner.batches` would take it:
    once the lane holds `max_docs_per_step` documents, the first `step_size(...)` of them.
    `flush` steps on all it holds (at the end of the stream, or when stdin pauses).
    """

    def __init__(
        self,
        base: LoadedModel,
        strategy: Strategy,
        options: ReplayOptions,
        reference: Sequence[Document],
        fisher: Sequence[Document],
        on_step: StepCallback | None,
    ) -> None:
        self.strategy = strategy
        self.options = options
        self.reference = reference
        self.learner = Learner(copy.deepcopy(base.model), base.tokenizer, strategy.learner)
        self.tokenizer = base.tokenizer
        self.before = reference_loss(self.learner, reference) if reference else None
        self.after: float | None = None
        # (documents read, reference loss) every `options.reference_every` documents
        self.curve: list[tuple[int, float]] = []
        self.measuring_s = 0.0  # scoring the reference along the way (not the strategy's time)
        self.stepper = PolicyLearner(self.learner, strategy.policy, reference=fisher)
        self.top = TopSurprises(options.surprise_window, options.surprise_top)
        self.tally = Tally()
        self.ahead: list[EncodedDocument] = []
        self.busy_s = 0.0  # in this lane's encoding and steps (side by side: its own time)
        self.paused_s = 0.0  # writing reports while this lane ran (not its time)
        self.on_step = on_step

    def add(self, doc: Document) -> None:
        started = time.perf_counter()
        self.ahead.append(self.stepper.encode(doc))
        while len(self.ahead) >= self.stepper.config.max_docs_per_step:
            self._step()
        self.busy_s += time.perf_counter() - started

    def flush(self) -> None:
        started = time.perf_counter()
        while self.ahead:
            self._step()
        self.busy_s += time.perf_counter() - started

    def _step(self) -> None:
        n = step_size(self.stepper.config, [e.tokens for e in self.ahead])
        batch, self.ahead = self.ahead[:n], self.ahead[n:]
        report = self.stepper.step(batch)
        for i, (encoded, score) in enumerate(zip(batch, report.scores, strict=True)):
            self.top.add(self.tally.docs + i, encoded.doc, score.loss, score.surprise)
        before = self.tally.docs
        self.tally.add(report)
        every = self.options.reference_every
        if every and self.reference and before // every < self.tally.docs // every:
            started = time.perf_counter()
            self.curve.append((self.tally.docs, reference_loss(self.learner, self.reference)))
            self.measuring_s += time.perf_counter() - started
        if self.on_step is not None:
            self.on_step(self.strategy.name, report, self.tally)

    def finish(self) -> None:
        """At the end of the stream: the reference loss after it, and the weights saved."""
        self.flush()
        self.tally.stop()
        if self.reference:
            self.after = reference_loss(self.learner, self.reference)
        if (directory := self.options.save_path(self.strategy)) is not None:
            save_learned(self.learner.model, self.tokenizer, self.strategy, directory)

    def result(self, status: str) -> StrategyResult:
        seconds = self.busy_s if self.options.side_by_side else self.tally.seconds - self.paused_s
        seconds -= self.measuring_s
        return StrategyResult(
            self.strategy.name,
            self.tally,
            self.strategy.to_dict(),
            self.before,
            self.after,
            reference_curve=list(self.curve),
            drift_events=[e.index for e in self.stepper.drift_events],
            drift=[e.to_dict() for e in self.stepper.drift_events],
            policy_stats={
                "replayed_docs": self.stepper.replayed,
                "rewarms": self.learner.rewarms,
                "optimizer_resets": self.learner.optimizer_resets,
                "webhook_failures": self.stepper.webhook_failures,
            },
            boundary=self.learner.encoder.resolved.to_dict(),
            seconds=max(seconds, 0.0),
            status=status,
        )

    def surprises(self) -> list[dict[str, Any]]:
        return [
            {"strategy": self.strategy.name, "window": [start, end], "rank": rank, **s.to_dict()}
            for start, end, found in self.top.windows()
            for rank, s in enumerate(found, start=1)
        ]


def save_learned(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, strategy: Strategy, directory: Path
) -> None:
    """A learner's weights (a PEFT adapter or a model directory), its tokenizer and
    `strategy.json` into `directory`, created if needed; files already there are replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory)
    tokenizer.save_pretrained(directory)
    described = {"name": strategy.name, "config": strategy.to_dict()}
    write_text(directory / "strategy.json", json.dumps(described, indent=2, sort_keys=True) + "\n")
