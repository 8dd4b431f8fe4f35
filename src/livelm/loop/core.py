"""The one learning loop: take documents -> step -> guard -> publish -> acknowledge, or restore.

The server's learner thread and the `learn` workers (alone, or as ranks under `torchrun`) run
this loop; they differ only in their `Feed` (a SQLite queue's positions, a Redis stream's
entries, see `feeds.py`) and in what a server adds around it (a priority gate so that requests
come first, Prometheus metrics, a serving copy of each version).

Each round: wait for documents, take a step's worth, and run the core step on them
(`Learner.step`: test-then-train; a document whose loss or gradient is not finite is isolated
there and rejected here, with the reason). Under torchrun every rank steps, even with nothing
to read, and `Learner.step` sums the update over the ranks; after the step rank 0 decides what
comes next (publish, follow a rollback made elsewhere, stop) and every rank follows.

Publishing, so that no accepted document is ever lost or learned twice, even across a
`kill -9`:

1. the ranks gather what they learned since the last version on rank 0, whose guard scores the
   candidate on the canary set; a refused candidate is not written, its documents are rejected
   with the reason, and every rank restores the live version's weights (fresh optimizer);
2. rank 0 writes the version (temporary name, fsync, rename) with the documents' keys in its
   manifest, makes it live, then acknowledges them in the feed.

A crash before 2 loses only in-memory learning: the documents are still unacknowledged and are
learned again from the last durable version. A crash between the write and the acknowledgement
is finished at the next start (`Feed.finish` on the newest manifest).

**Healing.** A write that fails for a reason that can pass (a full disk, a read-only or failing
file system: `OSError`, SQLite's I/O errors) is retried with back-off, and `trouble` says why
while it waits (the server's `/readyz`); nothing learned is dropped meanwhile, and once the
write succeeds the loop goes on by itself. A rollback either completes or changes nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from livelm.document import Document
from livelm.learner import EncodedDocument, StepReport
from livelm.learner.distributed import GradientSync
from livelm.learner.prequential import step_size
from livelm.logsafe import printable
from livelm.loop.feeds import Feed, Learned, Taken
from livelm.loop.guard import CanaryGuard
from livelm.loop.healing import Healer, Stopped
from livelm.loop.state import LoopSettings, Pending, StepLearner
from livelm.model.device import in_fresh_thread
from livelm.policy.monitor import SurpriseMonitor
from livelm.store import (
    Manifest,
    SnapshotStore,
    check_compatible,
    load_weights,
    save_weights,
    weights_kind,
)

if TYPE_CHECKING:
    from livelm.server.gate import PriorityGate
    from livelm.server.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _Plan:
    """What every rank does after a step: rank 0 decides, everyone follows."""

    publish: bool = False
    stop: bool = False
    follow: int | None = None  # a version made live by a rollback elsewhere


class LearningLoop:
    """The loop; see the module docstring for the protocol."""

    def __init__(
        self,
        *,
        learner: StepLearner,
        feed: Feed,
        store: SnapshotStore,
        guard: CanaryGuard,
        base_model: str,
        where: str,  # the flag and directory that hold the store, for messages
        settings: LoopSettings,
        sync: GradientSync | None = None,
        gate: PriorityGate | None = None,
        metrics: Metrics | None = None,
        on_live: Callable[[Manifest], None] | None = None,
        on_step: Callable[[Sequence[Document], StepReport], None] | None = None,
        fresh_threads: bool = False,
    ) -> None:
        """`fresh_threads`: run each step and each publish on a thread that ends with it, for a
        process that serves requests beside the loop (`livelm.model.device.in_fresh_thread`)."""
        self.learner = learner
        self.feed = feed
        self.store = store
        self.guard = guard
        self.base_model = base_model
        self.where = where
        self.settings = settings
        self.sync = sync
        self.rank = 0 if sync is None else sync.rank
        self.gate = gate
        self.metrics = metrics
        self._on_live = on_live
        self._on_step = on_step  # each step's documents and report (the server's monitor)
        self.fresh_threads = fresh_threads
        self.per_step = settings.docs_per_step or learner.config.max_docs_per_step
        self.pending = Pending()
        self._carry: list[Taken] = []  # taken, left for the next step by a step sized in tokens
        self.live: Manifest | None = None
        self.base_canary_loss: float | None = None
        # The stream's running loss, for the surprise of a scored document (a z-score).
        self.monitor = SurpriseMonitor()
        # Guards the learner's weights, optimizer, pending documents and live version: a
        # rollback from a request thread never lands in the middle of a step or a publish.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.healer = Healer(self._stop, settings.retry_first_s, settings.retry_max_s)
        self._retry = self.healer.retry
        self.steps = 0
        self.skipped_steps = 0  # steps whose update was skipped (the learner's reason)
        self.rejected = 0  # documents set aside for good
        self.learned_docs = 0  # documents this rank learned into published versions
        self.tokens = 0  # tokens this rank scored and learned from
        self.first_read: float | None = None
        self.last_publish: float | None = None
        self._drifts = 0

    # -- agreement between ranks ------------------------------------------------------------

    def _agree(self, value: T) -> T:
        return value if self.sync is None else self.sync.broadcast(value)

    def _total(self, *values: float) -> list[float]:
        return list(values) if self.sync is None else self.sync.sum(values)

    # -- lifecycle --------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Rank 0 publishes the base model as version 1 into an empty store, or finishes
        acknowledging the newest version's documents; then every rank loads the live one."""
        with self._lock:
            if self.rank == 0:
                self.feed.attach(self.store)
                if self.store.live() is None:
                    loss = self.guard.loss(self.learner)
                    manifest = self._write([], {"base_canary_loss": loss}, None, loss)
                    self.store.pin(manifest.version)  # the base model stays to roll back to
                else:
                    newest = self.store.manifest(max(self.store.versions()))
                    done = self.feed.finish(newest)
                    if done:
                        log.info(
                            "acknowledged %d documents of version %d after a restart",
                            done,
                            newest.version,
                        )
            version = self._agree(self.store.live())
            assert version is not None
            manifest = self.store.manifest(version)
            kind = weights_kind(self.learner.model)
            check_compatible(manifest, self.base_model, kind, self.where)
            load_weights(self.learner.model, self.store.path(version))
            self.base_canary_loss = self._base_canary_loss(manifest)
            self._go_live(manifest)

    def _base_canary_loss(self, live: Manifest) -> float | None:
        value = live.metrics.get("base_canary_loss")
        if isinstance(value, (int, float)):
            return float(value)
        first = self.store.versions()[0]  # the base model, pinned (stores older than the field)
        root = self.store.manifest(first)
        loss = root.metrics.get("canary_loss")
        return float(loss) if root.parent is None and isinstance(loss, (int, float)) else None

    def start(self) -> None:
        """Run the loop in a background thread (the server's way)."""
        self._thread = threading.Thread(target=self.run, name="livelm-learner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step, publishing what was learned since the last version."""
        self._stop.set()
        self.feed.notify()
        if self.gate is not None:
            self.gate.close()
        if self._thread is not None:
            self._thread.join()

    def notify(self) -> None:
        """New documents are there to take."""
        self.feed.notify()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def trouble(self) -> str | None:
        """Why the loop is waiting to retry a write, if it is."""
        return self.healer.trouble

    def backlog(self) -> int:
        return self.feed.backlog()

    def close(self) -> None:
        self.feed.close()

    def totals(self) -> tuple[int, int, float]:
        """Documents and tokens learned into versions by every rank, and the seconds from the
        first read to the last publish (call on every rank: it sums over them)."""
        docs, tokens = self._total(self.learned_docs, self.tokens)
        seconds = (self.last_publish or 0.0) - (self.first_read or 0.0)
        return int(docs), int(tokens), max(0.0, seconds)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Learn until told to stop (`stop()`, `exit_when_idle_s`, `max_steps`)."""
        try:
            self._run()
        except Stopped:
            log.warning("stopped while a write was failing: what it held stays unacknowledged")
        except BaseException as e:  # the server reports it in /readyz and keeps serving
            log.exception("the learner stopped")
            self.error = e
            if self._thread is None:
                raise

    def _run(self) -> None:
        idle_since = time.monotonic()
        previous_read = 0.0
        while True:
            taken = self._take()
            with self._lock:
                encoded = [self.learner.encode(t.doc) for t in taken]
                # A step sized in tokens may leave some of what was taken for the next one.
                n = step_size(self.learner.config, [e.tokens for e in encoded]) if taken else 0
                self._carry = taken[n:]
                try:
                    self._work(partial(self._step, taken[:n], encoded[:n]))
                finally:
                    if self.gate is not None:
                        self.gate.end_turn()
                held = [x.key for x in self.pending.learned] + [t.key for t in self._carry]
                if held:
                    self._retry("hold documents", partial(self.feed.hold, held))
            read, pending = self._total(n, len(self.pending.learned))
            now = time.monotonic()
            if read:
                idle_since = now
                self.first_read = self.first_read or now
                if not self.pending.steps:
                    self.pending.since = now
                self.pending.steps += 1
            plan = self._plan(read, pending, now - idle_since)
            if plan.publish and self.gate is not None and not plan.stop:
                # A publish (canary scores, a write, a copy) cannot be interrupted either. One
                # that makes the last step live follows it at once: a pause between them would
                # only add to every document's freshness (the gate charges it all the same).
                turn = self.gate.wait_turn(follow_on=bool(read or previous_read))
                if self.metrics is not None:
                    self.metrics.yielded.inc(turn.waited)
            with self._lock:
                try:
                    if plan.follow is not None:
                        self._work(partial(self._follow, plan.follow))
                    elif plan.publish:
                        self._work(self._publish)
                finally:
                    if self.gate is not None:
                        self.gate.end_turn()
            if plan.stop:
                return
            previous_read = read

    def _work(self, work: Callable[[], None]) -> None:
        if self.fresh_threads:
            in_fresh_thread(work)
        else:
            work()

    def _take(self) -> list[Taken]:
        """The documents of the next step: those left from the last one, then new ones."""
        taken, self._carry = self._carry, []
        if self._stop.is_set():
            return taken
        waiting = not (self.pending.learned or taken)
        if not self.feed.wait(self.settings.block_ms / 1000 if waiting else 0.0) and not taken:
            return taken
        size = self.per_step
        if self.gate is not None:
            # A full step even while requests come: the gate's share bounds the time the
            # learner takes from them, and what is learned does not depend on the traffic.
            turn = self.gate.wait_turn()
            if self.metrics is not None:
                self.metrics.yielded.inc(turn.waited)
        if len(taken) >= size:
            return taken
        block_ms = self.settings.block_ms if waiting else 0
        more = self._retry("read documents", partial(self.feed.take, size - len(taken), block_ms))
        return taken + more

    def _plan(self, read: float, pending: float, idle_s: float) -> _Plan:
        plan = _Plan()
        if self.rank == 0:
            s, p = self.settings, self.pending
            live = self.store.live()
            assert self.live is not None
            due = pending > 0 and (
                p.steps >= s.publish_every_steps
                or time.monotonic() - p.since >= s.publish_every_s
                or read == 0  # the feed ran dry: make the learning live
            )
            done = (
                self._stop.is_set()
                or (s.max_steps is not None and self.steps >= s.max_steps)
                or (s.exit_when_idle_s is not None and idle_s >= s.exit_when_idle_s and not pending)
            )
            follow = live if live is not None and live != self.live.version else None
            plan = _Plan(publish=due or (done and pending > 0), stop=done, follow=follow)
        return self._agree(plan)

    def _step(self, taken: Sequence[Taken], encoded: Sequence[EncodedDocument]) -> None:
        if not taken and self.sync is None:
            return  # alone, an empty step is no step; in a group, every rank takes part
        report = self.learner.step(encoded)
        self.steps += 1
        if self._on_step is not None and taken:
            self._on_step([t.doc for t in taken], report)
        for score in report.scores:
            self.monitor.update(score.loss)
        m = self.metrics
        if m is not None:
            m.steps.inc()
            # A policy learner keeps the drift events it detected; the core learner has none.
            drifts = len(getattr(self.learner, "drift_events", ()))
            m.drift.inc(drifts - self._drifts)
            self._drifts = drifts
        if not taken:
            return
        culprits = dict(report.rejected)
        if not report.updated:
            self.skipped_steps += 1
            if m is not None:
                m.skipped.labels(reason=str(report.skipped)).inc()
            # The learner isolates a bad document itself: a step skipped as a whole failed for
            # every document in it (or for the weights), so none of them is learned.
            culprits = {i: culprits.get(i, str(report.skipped)) for i in range(len(taken))}
        for i, reason in culprits.items():
            log.warning("document %s rejected: %s", printable(taken[i].doc.id), reason)
            why = f"not learned: {reason}"
            self._retry("reject a document", partial(self.feed.reject, [taken[i].key], why))
        self.rejected += len(culprits)
        if not report.updated:
            return
        learned = [
            Learned(t.key, s.loss, s.tokens, t.doc.time)
            for i, (t, s) in enumerate(zip(taken, report.scores, strict=True))
            if i not in culprits
        ]
        self.pending.learned.extend(learned)
        self.tokens += sum(x.tokens for x in learned)
        if m is not None:
            m.learned_tokens.inc(sum(x.tokens for x in learned))
            if math.isfinite(report.loss):
                m.loss.set(report.loss)

    # -- publishing -------------------------------------------------------------------------

    def _publish(self) -> None:
        started = time.perf_counter()
        local = self.pending.learned
        gathered = [local] if self.sync is None else self.sync.gather(local)
        steps = self.pending.steps
        self.pending = Pending()
        refused: str | None = None
        if self.rank == 0:
            learned = [x for rank in gathered for x in rank]
            assert self.live is not None
            live_loss = self.live.metrics.get("canary_loss")
            verdict = self.guard.check(self.learner, live_loss, self.base_canary_loss)
            refused = verdict.refused
            if refused is not None:
                if self.metrics is not None:
                    self.metrics.refused.inc()
                log.warning(
                    "publish guard refused a candidate (%d documents): %s; learning continues "
                    "from version %d",
                    len(learned),
                    refused,
                    self.live.version,
                )
                keys = [x.key for x in learned]
                reason = f"learned into a candidate the publish guard refused: {refused}"
                self._retry("reject documents", lambda: self.feed.reject(keys, reason))
                self.rejected += len(keys)
            else:
                times = sorted(x.time for x in learned if x.time)
                metrics: dict[str, Any] = {
                    "documents": len(learned),
                    "tokens": sum(x.tokens for x in learned),
                    "steps": steps,
                    "ranks": 1 if self.sync is None else self.sync.world,
                    "stream_loss": Pending.stream_loss(learned),
                    "stream_time": [times[0], times[-1]] if times else None,
                    "base_canary_loss": self.base_canary_loss,
                }
                parent = self.live.version
                manifest = self._retry(
                    "publish a version",
                    lambda: self._write(learned, metrics, parent, verdict.loss),
                )
                self._go_live(manifest)
                ack = partial(self.feed.ack, learned, manifest.version)
                self._retry("acknowledge documents", ack)
                self._retry("apply retention", self.store.retain)
                seconds = time.perf_counter() - started
                if self.metrics is not None:
                    self.metrics.publish_seconds.observe(seconds)
                # Times come from clients and stream files: escaped, so one event is one line.
                span = f" ({printable(times[0])} .. {printable(times[-1])})" if times else ""
                loss = metrics["stream_loss"]
                log.info(
                    "version %d live: %d documents%s, stream loss %s, canary loss %.3f (%.2f s)",
                    manifest.version,
                    len(learned),
                    span,
                    "-" if loss is None else f"{loss:.3f}",
                    verdict.loss,
                    seconds,
                )
        outcome = self._agree((self.store.live() if self.rank == 0 else None, refused))
        version, refused = outcome
        if refused is not None:
            assert self.live is not None
            self._restore(self.live)
            return
        if self.rank != 0:
            assert version is not None
            self.live = self.store.manifest(version)
        self.learned_docs += len(local)
        self.last_publish = time.monotonic()

    def _write(
        self,
        learned: Sequence[Learned],
        metrics: dict[str, Any],
        parent: int | None,
        canary_loss: float,
    ) -> Manifest:
        """Write the learner's weights as the next version, durably."""
        manifest = Manifest(
            version=self.store.next_version(),
            parent=parent,
            kind=weights_kind(self.learner.model),
            base_model=self.base_model,
            metrics={**metrics, "canary_loss": canary_loss},
            config=self.learner.config.to_dict(),
            **self.feed.manifest_fields(learned, [t.key for t in self._carry]),
        )
        self.store.publish(manifest, lambda d: save_weights(self.learner.model, d))
        if self.metrics is not None:
            self.metrics.published.inc()
        return manifest

    def _go_live(self, manifest: Manifest) -> None:
        self.live = manifest
        if self.metrics is not None:
            self.metrics.went_live(manifest)
        if self._on_live is not None:
            self._on_live(manifest)

    def _restore(self, manifest: Manifest) -> None:
        """Put a version's weights back into the learner, with a fresh optimizer; what was
        learned since the last publish goes with the weights and is taken again."""
        path = self.store.path(manifest.version)
        self._retry("load a version", lambda: load_weights(self.learner.model, path))
        self._start_afresh()

    def _follow(self, version: int) -> None:
        """Another process made `version` live (a rollback through a replica): continue
        from it."""
        log.warning("version %d was made live elsewhere: continuing from it", version)
        manifest = self.store.manifest(version)
        self._restore(manifest)
        self._go_live(manifest)

    # -- rollback ---------------------------------------------------------------------------

    def rollback(self, version: int) -> Manifest:
        """Make an older version live; the learner continues from it. It completes or changes
        nothing: the learner's weights are put back if the store cannot record the change.

        What was learned since the last publish is dropped with the weights and learned again
        from the version rolled back to. Documents learned into the versions rolled back over
        stay learned (in those versions).
        """
        # A publish that waits for a full disk holds the lock: say so rather than hang.
        if not self._lock.acquire(timeout=self.settings.retry_max_s):
            busy = self.trouble or "a step or a publish"
            raise TimeoutError(f"the learner is busy: {busy}")
        try:
            return self._rollback(version)
        finally:
            self._lock.release()

    def _rollback(self, version: int) -> Manifest:
        manifest = self.store.manifest(version)
        kept = {n: p.detach().clone() for n, p in self._trainable()}
        try:
            load_weights(self.learner.model, self.store.path(version))
            self.store.set_live(version)
        except BaseException:
            with torch.no_grad():
                for name, p in self._trainable():
                    p.copy_(kept[name])
            raise
        self._start_afresh()
        if self.metrics is not None:
            self.metrics.rollbacks.inc()
        self._go_live(manifest)
        log.warning("rolled back: version %d is live", version)
        return manifest

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.learner.model.named_parameters() if p.requires_grad]

    def _start_afresh(self) -> None:
        """After the weights went back to a version: fresh optimizer moments and warm-up, and
        what was learned since the last publish is taken again."""
        self.learner.reset_optimizer()
        self.learner.rewarm()
        self.pending = Pending()
        self._carry = []  # taken again after the rewind
        newest = self.store.newest()
        self.feed.rewind(None if newest is None else self.store.manifest(newest))

    # -- healing ----------------------------------------------------------------------------
