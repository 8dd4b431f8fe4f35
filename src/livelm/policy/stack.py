"""`PolicyLearner`: a `Learner` with its policies, behind the same `step`.

Replay, the server and the distributed learner hold either one and call `step(docs)`. Each step:

1. picks replayed documents from memory (a reservoir over the whole stream, or a sliding window
   of the newest), weighted by age if a half-life is set, more of them while a drift boost lasts;
2. calls `Learner.step(docs, extra=replayed, extra_weights=weights)`, the one place where
   documents are scored and learned; replayed documents are learned from, never scored;
3. for each scored document in stream order, takes its surprise (before its loss joins the
   running statistics) and feeds its loss to the detector; a drift runs the configured actions,
   which shape the steps after it, and is recorded, posted and passed to the callback;
4. adds the new documents to memory (those with a finite loss), so a document is never replayed
   in the step that scores it.

>>> # policy = PolicyConfig(replay=0.25, detector=DetectorConfig("adwin"), on_drift=("rewarm",))
>>> # learner = PolicyLearner(Learner(model, tokenizer, get_strategy("online")), policy)
>>> # report = learner.step([learner.encode(doc) for doc in batch])
>>> # learner.drift_events  # DriftEvent(index=..., detector="adwin", actions=("rewarm",), ...)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document
from livelm.learner.config import LearnerConfig
from livelm.learner.core import DocScore, Learner, StepReport
from livelm.learner.encoding import EncodedDocument
from livelm.policy.anchor import make_anchor
from livelm.policy.config import PolicyConfig
from livelm.policy.decay import Decay
from livelm.policy.drift import Detector
from livelm.policy.events import DriftEvent, post_event
from livelm.policy.memory import Memory, MemoryItem
from livelm.policy.monitor import SurpriseMonitor
from livelm.policy.reservoir import Reservoir
from livelm.policy.span import stream_time
from livelm.policy.window import SlidingWindow

log = logging.getLogger(__name__)

DriftCallback = Callable[[DriftEvent], None]


class PolicyLearner:
    """Wraps a `Learner`: same `step`, `score`, `encode`, `config` and `model`, plus policies.

    `reference`: documents that stand for what to keep (EWC's Fisher information); `on_drift`:
    called with every drift event, after the actions ran.
    """

    def __init__(
        self,
        learner: Learner,
        policy: PolicyConfig | None = None,
        *,
        reference: Sequence[Document] = (),
        on_drift: DriftCallback | None = None,
    ) -> None:
        policy = policy or PolicyConfig()
        options = policy.learning_options()
        if options and not learner.config.learns:
            raise ValueError(
                f"a learner with update='none' learns nothing, so {', '.join(options)} "
                "would do nothing: use them with a learning strategy"
            )
        self.learner = learner
        self.policy = policy
        self.memory: Memory | None = None
        if policy.uses_memory:
            if policy.window is not None:
                self.memory = SlidingWindow(policy.window, policy.replay_size, policy.replay_bytes)
            else:
                self.memory = Reservoir(policy.replay_size, policy.replay_bytes, policy.seed)
        self.decay = None if policy.half_life is None else Decay(policy.half_life)
        self.detector: Detector | None = (
            None if policy.detector is None else policy.detector.build()
        )
        self.monitor = SurpriseMonitor(policy.surprise_half_life)
        if policy.anchor is not None:
            # Anchored to the weights as they are now: the base, before any step.
            learner.regularizers.append(make_anchor(policy.anchor, learner, reference))
        self.on_drift = on_drift
        self.drift_events: list[DriftEvent] = []
        self.docs_seen = 0  # the stream index of the next document to score
        self.replayed = 0
        self.boost_left = 0  # steps the drift boost still lasts
        self.webhook_failures = 0
        self.newest_time = -math.inf
        self._rng = random.Random(policy.seed)

    # -- the Learner's face ---------------------------------------------------------------------

    @property
    def config(self) -> LearnerConfig:
        return self.learner.config

    @property
    def model(self) -> PreTrainedModel:
        return self.learner.model

    def encode(self, doc: Document) -> EncodedDocument:
        return self.learner.encode(doc)

    def rewarm(self) -> None:
        self.learner.rewarm()

    def reset_optimizer(self) -> None:
        self.learner.reset_optimizer()

    def score(self, docs: Sequence[EncodedDocument]) -> tuple[DocScore, ...]:
        """Scores and surprises under the current weights and statistics; changes neither."""
        return tuple(
            dataclasses.replace(s, surprise=self.monitor.surprise(s.loss))
            for s in self.learner.score(docs)
        )

    # -- the step -------------------------------------------------------------------------------

    def step(self, docs: Sequence[EncodedDocument]) -> StepReport:
        items = [MemoryItem(d, self.docs_seen + i, stream_time(d.doc)) for i, d in enumerate(docs)]
        now = max([self.newest_time, *(item.timestamp for item in items)])
        replayed = self._pick_replay(len(docs))
        weights = [
            1.0 if self.decay is None else self.decay.weight(r, self.docs_seen, now)
            for r in replayed
        ]
        report = self.learner.step(docs, extra=[r.doc for r in replayed], extra_weights=weights)
        self.replayed += len(replayed)
        scores = []
        for item, score in zip(items, report.scores, strict=True):
            surprise = self.monitor.surprise(score.loss)
            self.monitor.update(score.loss)
            scores.append(dataclasses.replace(score, surprise=surprise))
            if self.detector is None or not score.tokens or not math.isfinite(score.loss):
                continue
            if self.detector.update(score.loss).drift_detected:
                self._drift(item, score, report.step)
        if self.memory is not None:
            for item, score in zip(items, report.scores, strict=True):
                # A document with no tokens or a non-finite loss (poisoned, say) would only make
                # later steps skip their update: it is not kept for replay.
                if score.tokens and math.isfinite(score.loss):
                    self.memory.add(item)
        self.newest_time = now
        self.docs_seen += len(docs)
        return dataclasses.replace(report, scores=tuple(scores))

    def _pick_replay(self, fresh: int) -> list[MemoryItem]:
        if self.memory is None or not len(self.memory):
            return []
        share = self.policy.replay
        if self.boost_left > 0:
            share = max(share, self.policy.boost)
            self.boost_left -= 1
        expected = share * fresh
        # Stochastic rounding: 0.25 replayed per new document over steps of 1 still averages 0.25.
        n = int(expected) + (self._rng.random() < expected - int(expected))
        return self.memory.sample(n, self._rng)

    def _drift(self, item: MemoryItem, score: DocScore, step: int) -> None:
        assert self.detector is not None and self.policy.detector is not None
        for action in self.policy.on_drift:
            if action == "rewarm":
                self.learner.rewarm()
            elif action == "reset":
                self.learner.reset_optimizer()
            else:
                self.boost_left = self.policy.boost_steps
        event = DriftEvent(
            index=item.index,
            doc_id=item.doc.doc.id,
            time=item.doc.doc.time,
            detected_at=datetime.now(UTC).isoformat(timespec="seconds"),
            step=step,
            detector=str(self.policy.detector),
            loss=score.loss,
            state=self.detector.state(),
            actions=self.policy.on_drift,
        )
        self.drift_events.append(event)
        log.info("drift at document %d (%s): %s", event.index, event.detector, event.actions)
        if self.policy.webhook is not None:
            try:
                post_event(self.policy.webhook, event, self.policy.webhook_timeout)
            except OSError as e:  # an alert that cannot be delivered must not stop learning
                self.webhook_failures += 1
                log.warning("drift webhook failed (%d so far): %s", self.webhook_failures, e)
        if self.on_drift is not None:
            self.on_drift(event)


def build_learner(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: LearnerConfig,
    policy: PolicyConfig | None = None,
    reference: Sequence[Document] = (),
) -> Learner | PolicyLearner:
    """The core learner, wrapped in `policy` (replay, windows, drift detection, anchoring; EWC's
    Fisher information from `reference`) when it has one: what the server and workers run."""
    learner = Learner(model, tokenizer, config)
    if policy is None or policy == PolicyConfig():
        return learner
    return PolicyLearner(learner, policy, reference=reference)


def core_learner(learner: Learner | PolicyLearner) -> Learner:
    return learner.learner if isinstance(learner, PolicyLearner) else learner
