"""What the learning loop is made of besides its protocol: the learner it drives, its settings,
and what it learned since the last publish."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from livelm.learner import DocScore, EncodedDocument
from livelm.learner.prequential import Stepper
from livelm.loop.feeds import Learned


class StepLearner(Stepper, Protocol):
    """What the loop needs of a learner beyond a replay's `Stepper` (config, encode, step): the
    core `Learner`, or one wrapped in policies.

    `reset_optimizer` and `rewarm` are called when the learner's weights are replaced by a
    version's (a rollback, a refused candidate): moments gathered on weights that are gone must
    not steer the next steps.
    """

    @property
    def model(self) -> torch.nn.Module: ...

    def score(self, docs: Sequence[EncodedDocument]) -> tuple[DocScore, ...]: ...

    def reset_optimizer(self) -> None: ...

    def rewarm(self) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    publish_every_steps: int = 16
    publish_every_s: float = 10.0
    docs_per_step: int | None = None  # None: the strategy's max_docs_per_step
    block_ms: int = 500  # how long a round waits for documents when nothing is pending
    exit_when_idle_s: float | None = None  # stop once nothing was read for this long
    max_steps: int | None = None
    retry_first_s: float = 0.5  # back-off of a failed write: doubles up to retry_max_s
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        for flag, value in {
            "--publish-every-steps": self.publish_every_steps,
            "--publish-every-s": self.publish_every_s,
            "--block-ms": self.block_ms,
        }.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{flag} must be a positive number, not {value}")
        if self.docs_per_step is not None and self.docs_per_step < 1:
            raise ValueError(f"--docs-per-step must be at least 1, not {self.docs_per_step}")


@dataclass
class Pending:
    """What was learned since the last publish, not yet in any durable version."""

    learned: list[Learned] = field(default_factory=list)
    steps: int = 0  # steps in which any rank learned
    since: float = 0.0  # monotonic time of the first of them

    @staticmethod
    def stream_loss(learned: Sequence[Learned]) -> float | None:
        """The token-weighted prequential loss of learned documents (nats/token): the one
        definition of a version's stream loss."""
        scored = [x for x in learned if x.tokens and math.isfinite(x.loss)]
        tokens = sum(x.tokens for x in scored)
        return sum(x.loss * x.tokens for x in scored) / tokens if tokens else None
