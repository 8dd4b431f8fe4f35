"""`livelm learn`: learner workers on a Redis stream, alone or data-parallel under torchrun.

    livelm learn --source 'redis://localhost:6379/0?stream=docs&group=learners' --store DIR
    torchrun --nproc-per-node 2 -m livelm learn --source ... --store DIR

Each rank is one consumer of the stream's group and reads its own share of the documents. A
step is the core step on every rank at once (`Learner.step` sums tokens, loss and gradients
over the ranks, see `livelm.learner.distributed`), so every rank holds the same weights. After
each step the ranks agree, from rank 0's view, on what comes next: publish, follow a rollback,
stop, or go on. Rank 0 alone writes versions to the store and acknowledges the stream entries
they hold; servers started with `livelm serve --follow DIR` serve each version as it appears.

Publishing, so that every document is learned exactly once, even across a `kill -9`:

1. the ranks gather their pending entries on rank 0, which checks the candidate on the canary
   set (a refused candidate is not written; its documents go to `STREAM:rejected` with the
   reason, and every rank reloads the live version);
2. rank 0 writes the version (temporary name, fsync, rename) with the entry ids in its
   manifest, then acknowledges them (`XACK`).

A crash before 2 leaves the entries pending: a restarted consumer under the same name reads
them back, and any live one takes them over (`XAUTOCLAIM`) once they have been idle for
`claim_idle_ms`; they are learned again from the last durable version. A crash between the
write and the acknowledgement is finished at the next start: rank 0 acknowledges the newest
version's entries before anyone reads.

A rollback made through any replica (it writes the store's live marker) reaches the workers
at their next step: they load that version with fresh optimizer moments, drop what they had
learned since their last publish, and read those entries back from their pending list.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livelm.learner import DocScore, StepReport
from livelm.learner.distributed import GradientSync
from livelm.model import DEFAULT_MODEL, load_model
from livelm.policy import build_learner, core_learner, parse_strategy
from livelm.server.guard import CanaryGuard, canary_documents
from livelm.source.redis_stream import Delivery, RedisSpec, RedisStreamSource
from livelm.store import (
    Manifest,
    SnapshotStore,
    base_model_id,
    check_compatible,
    load_weights,
    save_weights,
    weights_kind,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    source: str  # redis://host:port/db?stream=NAME&group=G
    store: Path
    model: str = DEFAULT_MODEL
    strategy: str = "online"
    device: str = "auto"
    docs_per_step: int | None = None  # per rank; None: the strategy's max_docs_per_step
    publish_every_steps: int = 16
    publish_every_s: float = 10.0
    keep_last: int = 10
    guard_max_rise: float = 1.0
    canary: Path | None = None
    block_ms: int = 500  # how long a read waits for new entries when a rank has none
    exit_when_idle_s: float | None = None  # stop once no rank has read anything for this long
    max_steps: int | None = None

    def __post_init__(self) -> None:
        for flag, value in {
            "--publish-every-steps": self.publish_every_steps,
            "--publish-every-s": self.publish_every_s,
            "--keep-last": self.keep_last,
            "--guard-max-rise": self.guard_max_rise,
            "--block-ms": self.block_ms,
        }.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{flag} must be a positive number, not {value}")
        if self.docs_per_step is not None and self.docs_per_step < 1:
            raise ValueError(f"--docs-per-step must be at least 1, not {self.docs_per_step}")
        RedisSpec.parse(self.source)  # a bad URL fails before the model loads


@dataclass
class _Pending:
    """What this rank learned since the last publish; `steps` and `since` count the steps
    in which any rank learned (the same on every rank)."""

    entries: list[tuple[str, float, str | None]] = field(default_factory=list)
    steps: int = 0
    since: float = 0.0

    def add(self, deliveries: Sequence[Delivery], scores: Sequence[DocScore]) -> None:
        for d, s in zip(deliveries, scores, strict=True):
            self.entries.append((d.entry, s.loss, d.doc.time))


@dataclass(frozen=True)
class _Plan:
    """What every rank does after a step: rank 0 decides, everyone follows."""

    publish: bool = False
    stop: bool = False
    follow: int | None = None  # a version made live by a rollback elsewhere


class Worker:
    def __init__(self, settings: WorkerSettings, sync: GradientSync | None = None) -> None:
        self.settings = settings
        self.sync = sync
        self.rank = 0 if sync is None else sync.rank
        strategy = parse_strategy(settings.strategy)
        if not strategy.learner.learns:
            raise ValueError(f"--strategy {settings.strategy}: it does not learn")
        if sync is not None and strategy.policy.on_drift:
            raise ValueError(
                "drift actions change one rank's learner on that rank's losses, which would "
                "split the ranks' weights; under torchrun use a detector without --on-drift"
            )
        loaded = load_model(settings.model, device=settings.device)
        canary = canary_documents(settings.canary)
        self.learner = build_learner(
            loaded.model, loaded.tokenizer, strategy.learner, strategy.policy, canary
        )
        core_learner(self.learner).sync = sync
        self.base_model = base_model_id(settings.model)
        # One consumer name per rank, stable across restarts: a restarted rank reads back what
        # it held (no waiting for the idle timeout). `consumer=` in the URL prefixes it.
        spec = RedisSpec.parse(settings.source, default_consumer="learner")
        spec = dataclasses.replace(spec, consumer=f"{spec.consumer}-rank{self.rank}")
        self.source = RedisStreamSource(spec)
        self.store = SnapshotStore(settings.store, keep_last=settings.keep_last)
        self.guard = CanaryGuard(canary, settings.guard_max_rise)
        self.per_step = settings.docs_per_step or strategy.learner.max_docs_per_step
        self.pending = _Pending()
        self.live: Manifest | None = None
        self.steps = 0
        self.learned = 0  # documents this rank learned into published versions
        self.tokens = 0  # tokens this rank scored and learned from
        self.first_read: float | None = None  # when any rank first read a document
        self.last_publish: float | None = None

    # -- agreement between ranks ------------------------------------------------------------

    def _agree(self, value: Any) -> Any:
        return value if self.sync is None else self.sync.broadcast(value)

    def _total(self, *values: float) -> list[float]:
        return list(values) if self.sync is None else self.sync.sum(values)

    # -- lifecycle --------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Rank 0 publishes the base model as version 1 into an empty store, or finishes
        acknowledging the newest version's entries; then every rank loads the live version."""
        if self.rank == 0:
            live = self.store.live()
            if live is None:
                self.live = self._write([], {}, parent=None)
                self.store.pin(self.live.version)
            else:
                newest = self.store.manifest(max(self.store.versions()))
                done = self.source.ack(list(newest.entries))
                if done:
                    log.info("acknowledged %d entries of version %d", done, newest.version)
        version = self._agree(self.store.live())
        self._load(version)

    def _load(self, version: int) -> None:
        manifest = self.store.manifest(version)
        kind = weights_kind(self.learner.model)
        check_compatible(manifest, self.base_model, kind, f"--store {self.settings.store}")
        load_weights(self.learner.model, self.store.path(version))
        self.live = manifest

    def run(self) -> None:
        """Learn until told to stop (`exit_when_idle_s`, `max_steps`), publishing as it goes."""
        self.bootstrap()
        idle_since = time.monotonic()
        while True:
            wait = 0 if self.pending.entries else self.settings.block_ms
            deliveries = self.source.read(self.per_step, block_ms=wait)
            self._step(deliveries)
            # Held entries stay ours while we live, however long a publish takes to come.
            self.source.touch([e for e, _, _ in self.pending.entries])
            read, pending = self._total(len(deliveries), len(self.pending.entries))
            now = time.monotonic()
            if read:
                idle_since = now
                self.first_read = self.first_read or now
                if not self.pending.steps:
                    self.pending.since = now
                self.pending.steps += 1
            plan = self._plan(read, pending, now - idle_since)
            if plan.follow is not None:
                self._follow(plan.follow)
            elif plan.publish:
                self._publish()
            if plan.stop:
                break

    def totals(self) -> tuple[int, int, float]:
        """Documents and tokens learned into versions by every rank, and the seconds from the
        first read to the last publish (call on every rank: it sums over them)."""
        docs, tokens = self._total(self.learned, self.tokens)
        seconds = (self.last_publish or 0.0) - (self.first_read or 0.0)
        return int(docs), int(tokens), max(0.0, seconds)

    def _plan(self, read: float, pending: float, idle_s: float) -> _Plan:
        plan = _Plan()
        if self.rank == 0:
            s, p = self.settings, self.pending
            live = self.store.live()
            assert self.live is not None
            due = pending > 0 and (
                p.steps >= s.publish_every_steps
                or time.monotonic() - p.since >= s.publish_every_s
                or read == 0
            )
            done = (s.max_steps is not None and self.steps >= s.max_steps) or (
                s.exit_when_idle_s is not None and idle_s >= s.exit_when_idle_s and not pending
            )
            follow = live if live is not None and live != self.live.version else None
            plan = _Plan(publish=due or (done and pending > 0), stop=done, follow=follow)
        result: _Plan = self._agree(plan)
        return result

    def _step(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries and self.sync is None:
            return  # alone, an empty step is no step; in a group, every rank takes part
        report: StepReport = self.learner.step([self.learner.encode(d.doc) for d in deliveries])
        self.steps += 1
        if not deliveries:
            return
        if report.updated:
            self.pending.add(deliveries, report.scores)
            self.tokens += report.tokens
            return
        # A step whose loss or gradient was not finite: its documents can poison any step they
        # are in, so they are set aside, with the reason, rather than retried forever.
        reason = f"not learned: {report.skipped}"
        log.warning("%d documents rejected: %s", len(deliveries), reason)
        for d in deliveries:
            self.source.reject(d, reason)

    # -- publishing -------------------------------------------------------------------------

    def _publish(self) -> None:
        local = self.pending.entries
        gathered = [local] if self.sync is None else self.sync.gather(local)
        steps = self.pending.steps
        self.pending = _Pending()
        refused: str | None = None
        if self.rank == 0:
            entries = [e for rank in gathered for e in rank]
            assert self.live is not None
            verdict = self.guard.check(self.learner, self.live.metrics.get("canary_loss"))
            refused = verdict.refused
            if refused is None:
                losses = [loss for _, loss, _ in entries if math.isfinite(loss)]
                times = sorted(t for _, _, t in entries if t)
                metrics: dict[str, Any] = {
                    "documents": len(entries),
                    "steps": steps,
                    "ranks": 1 if self.sync is None else self.sync.world,
                    "stream_loss": sum(losses) / len(losses) if losses else None,
                    "stream_time": [times[0], times[-1]] if times else None,
                    "canary_loss": verdict.loss,
                }
                manifest = self._write([e for e, _, _ in entries], metrics, self.live.version)
                self.source.ack([e for e, _, _ in entries])
                self.store.retain()
                log.info("version %d: %d documents", manifest.version, len(entries))
            else:
                log.warning("publish guard refused a candidate: %s", refused)
                for entry, _, _ in entries:
                    self.source.reject_entry(entry, f"learned into a refused candidate: {refused}")
        outcome: tuple[int | None, str | None] = self._agree(
            (self.store.live() if self.rank == 0 else None, refused)
        )
        version, refused = outcome
        if refused is not None:
            assert self.live is not None
            self._restore(self.live.version)
        else:
            assert version is not None
            self.live = self.store.manifest(version) if self.rank else self.live
            self.learned += len(local)
            self.last_publish = time.monotonic()

    def _write(self, entries: list[str], metrics: dict[str, Any], parent: int | None) -> Manifest:
        if "canary_loss" not in metrics:
            metrics = {**metrics, "canary_loss": self.guard.loss(self.learner)}
        manifest = Manifest(
            version=self.store.next_version(),
            parent=parent,
            kind=weights_kind(self.learner.model),
            base_model=self.base_model,
            position=0,
            entries=tuple(entries),
            metrics=metrics,
            config=self.learner.config.to_dict(),
        )
        self.store.publish(manifest, lambda d: save_weights(self.learner.model, d))
        self.live = manifest
        return manifest

    def _restore(self, version: int) -> None:
        self._load(version)
        self.learner.reset_optimizer()
        self.learner.rewarm()

    def _follow(self, version: int) -> None:
        """Another process made `version` live (a rollback): continue from it. What was learned
        since the last publish goes with the weights; those entries are read back."""
        log.warning("version %d was made live elsewhere: continuing from it", version)
        self.pending = _Pending()
        self._restore(version)
        self.source.reread_pending()

    def close(self) -> None:
        self.source.close()
