"""`livelm learn`: learner workers on a Redis stream, alone or data-parallel under torchrun.

    livelm learn --source 'redis://localhost:6379/0?stream=docs&group=learners' --store DIR
    torchrun --nproc-per-node 2 -m livelm learn --source ... --store DIR

Each rank is one consumer of the stream's group and reads its own share of the documents. A
step is the core step on every rank at once (`Learner.step` sums tokens, loss and gradients
over the ranks, see `livelm.learner.distributed`), so every rank holds the same weights. After
each step the ranks agree, from rank 0's view, on what comes next: publish, follow a rollback,
stop, or go on. Rank 0 alone writes versions to the store and acknowledges the stream entries
they hold; servers started with `livelm serve --follow DIR` serve each version as it appears.

The loop itself (step, guard, publish, acknowledge, restore, healing) is `livelm.loop`'s, the
same the server runs; a worker gives it a `StreamFeed` on the group and, under torchrun, the
gradient sync.

A crash leaves the entries a rank read and had not yet published pending: a restarted consumer
under the same name reads them back, and any live one takes them over (`XAUTOCLAIM`) once they
have been idle for `claim_idle_ms`. A rollback made through any replica (it writes the store's
live marker) reaches the workers at their next step: they load that version with fresh
optimizer moments and read back what they had learned since their last publish.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from livelm.model import DEFAULT_MODEL
from livelm.policy import Strategy, parse_strategy
from livelm.source.redis_stream import RedisSpec, RedisStreamSource
from livelm.store import SnapshotStore, base_model_id

if TYPE_CHECKING:
    from livelm.learner.distributed import GradientSync
    from livelm.loop import LearningLoop, LoopSettings


@dataclass(frozen=True)
class WorkerSettings:
    source: str  # redis://host:port/db?stream=NAME&group=G
    store: Path
    model: str = DEFAULT_MODEL
    strategy: Strategy | str = "online"  # a spec string is parsed once, at construction
    device: str = "auto"
    docs_per_step: int | None = None  # per rank; None: the strategy's max_docs_per_step
    publish_every_steps: int = 16
    publish_every_s: float = 10.0
    keep_last: int = 10
    guard_max_rise: float = 1.0
    guard_max_total_rise: float = 0.5
    canary: Path | None = None
    block_ms: int = 500  # how long a read waits for new entries when a rank has none
    exit_when_idle_s: float | None = None  # stop once no rank has read anything for this long
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.strategy, str):
            object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        for flag, value in {
            "--keep-last": self.keep_last,
            "--guard-max-rise": self.guard_max_rise,
            "--guard-max-total-rise": self.guard_max_total_rise,
        }.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{flag} must be a positive number, not {value}")
        self.loop  # noqa: B018  # validates the loop's settings
        RedisSpec.parse(self.source)  # a bad URL fails before the model loads

    @property
    def loop(self) -> LoopSettings:
        from livelm.loop import LoopSettings  # imports torch: `livelm learn --help` does not

        return LoopSettings(
            publish_every_steps=self.publish_every_steps,
            publish_every_s=self.publish_every_s,
            docs_per_step=self.docs_per_step,
            block_ms=self.block_ms,
            exit_when_idle_s=self.exit_when_idle_s,
            max_steps=self.max_steps,
        )


def build_worker(settings: WorkerSettings, sync: GradientSync | None = None) -> LearningLoop:
    """The learning loop of one rank: its learner, its consumer of the group, the store."""
    # Here rather than at the top: these import torch, and `livelm learn --help` needs only
    # the settings above.
    from livelm.loop import CanaryGuard, LearningLoop, StreamFeed, canary_documents
    from livelm.model import load_model
    from livelm.policy import build_learner, core_learner

    strategy = settings.strategy
    assert isinstance(strategy, Strategy), "parsed in WorkerSettings.__post_init__"
    if not strategy.learner.learns:
        raise ValueError(f"--strategy {strategy.name}: it does not learn")
    if sync is not None and strategy.policy.on_drift:
        raise ValueError(
            "drift actions change one rank's learner on that rank's losses, which would "
            "split the ranks' weights; under torchrun use a detector without --on-drift"
        )
    loaded = load_model(settings.model, device=settings.device)
    canary = canary_documents(settings.canary)
    learner = build_learner(
        loaded.model, loaded.tokenizer, strategy.learner, strategy.policy, canary
    )
    core_learner(learner).sync = sync
    rank = 0 if sync is None else sync.rank
    # One consumer name per rank, stable across restarts: a restarted rank reads back what it
    # held (no waiting for the idle timeout). `consumer=` in the URL prefixes it.
    spec = RedisSpec.parse(settings.source, default_consumer="learner")
    spec = dataclasses.replace(spec, consumer=f"{spec.consumer}-rank{rank}")
    return LearningLoop(
        learner=learner,
        feed=StreamFeed(RedisStreamSource(spec)),
        store=SnapshotStore(settings.store, keep_last=settings.keep_last),
        guard=CanaryGuard(canary, settings.guard_max_rise, settings.guard_max_total_rise),
        base_model=base_model_id(settings.model),
        where=f"--store {settings.store}",
        settings=settings.loop,
        sync=sync,
    )
