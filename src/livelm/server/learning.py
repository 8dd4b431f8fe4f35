"""The learner inside the server: take queued documents, score and learn, publish versions.

One background thread runs `LearnerService`. Each round it waits for its turn (serving comes
first, see `gate.py`), takes up to a step's worth of queued documents past its position, and
runs the core step on them. A version is published every `publish_every_steps` steps or
`publish_every_s` seconds, and whenever the queue runs dry (so a document sent to an idle
server is live in about a step and a publish).

Publishing, in this order, so that no accepted document is ever lost or learned twice:

1. the guard scores the candidate on the canary set; a refused candidate is not written, its
   documents are rejected (with the reason), and the learner reloads the live version;
2. the version is written to the store, durably (temporary directory, fsync, rename), with
   the queue positions of the documents it learned in its manifest;
3. the new version goes live for requests;
4. its documents are acknowledged (`learned`, with the version) in the queue.

A crash before 2 loses only in-memory learning: those documents are still queued and are
learned again after the restart, from the last durable version. A crash between 2 and 4 leaves
a durable version whose documents are still queued: at startup, `bootstrap` acknowledges them
from the newest manifest, so they are not learned again.

The learner's lock guards its weights, optimizer, position and pending documents; a rollback
takes it too, so it never lands in the middle of a step or a publish.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from livelm.document import Document
from livelm.learner import DocScore, EncodedDocument, LearnerConfig, StepReport
from livelm.model import autocast_dtype_for
from livelm.policy.monitor import SurpriseMonitor
from livelm.server.gate import PriorityGate
from livelm.server.guard import CanaryGuard
from livelm.server.metrics import Metrics
from livelm.server.settings import ServerSettings
from livelm.server.versions import ServingVersion, serving_copy
from livelm.source.queue import DocumentQueue, QueuedDocument
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


class StepLearner(Protocol):
    """What the server needs of a learner: the core `Learner`, or one wrapped in policies.

    `reset_optimizer` and `rewarm` are called when the learner's weights are replaced by a
    version's (a rollback, a refused candidate): moments gathered on weights that are gone must
    not steer the next steps.
    """

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def config(self) -> LearnerConfig: ...

    def encode(self, doc: Document) -> EncodedDocument: ...

    def step(self, docs: Sequence[EncodedDocument]) -> StepReport: ...

    def score(self, docs: Sequence[EncodedDocument]) -> tuple[DocScore, ...]: ...

    def reset_optimizer(self) -> None: ...

    def rewarm(self) -> None: ...


@dataclass
class _Pending:
    """Documents learned since the last publish, not yet in any durable version."""

    learned: list[tuple[int, float]] = field(default_factory=list)  # (seq, prequential loss)
    times: list[str] = field(default_factory=list)
    tokens: int = 0
    nll: float = 0.0
    steps: int = 0
    since: float = 0.0  # monotonic time of the first step

    def add(self, batch: Sequence[QueuedDocument], report: StepReport) -> None:
        if not self.steps:
            self.since = time.monotonic()
        self.steps += 1
        for queued, score in zip(batch, report.scores, strict=True):
            self.learned.append((queued.seq, score.loss))
            if queued.doc.time:
                self.times.append(queued.doc.time)
            if score.tokens and math.isfinite(score.loss):
                self.tokens += score.tokens
                self.nll += score.loss * score.tokens


class LearnerService:
    """The background learner; see the module docstring for the publish protocol."""

    def __init__(
        self,
        *,
        learner: StepLearner,
        queue: DocumentQueue,
        store: SnapshotStore,
        guard: CanaryGuard,
        gate: PriorityGate,
        metrics: Metrics,
        settings: ServerSettings,
        on_live: Callable[[ServingVersion], None],
    ) -> None:
        self.learner = learner
        self.queue = queue
        self.store = store
        self.guard = guard
        self.gate = gate
        self.metrics = metrics
        self.settings = settings
        self._on_live = on_live
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = _Pending()
        self._drifts = 0
        # The stream's running loss, for the surprise of a scored document (a z-score).
        self.monitor = SurpriseMonitor()
        self.position = 0  # every document at or before it was taken (learned or rejected)
        self.live: Manifest | None = None
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Load the live version (or publish the base model as version 1) and make it live."""
        with self._lock:
            live = self.store.live()
            if live is None:
                manifest = self._write(position=0, parent=None, learned=[], metrics={})
                self.store.pin(manifest.version)  # the base model stays to roll back to
            else:
                manifest = self.store.manifest(live)
                self._check_compatible(manifest)
                load_weights(self.learner.model, self.store.path(live))
                newest = self.store.manifest(max(self.store.versions()))
                # A crash between a publish and its acknowledgement left these queued.
                done = self.queue.ack(((seq, None) for seq in newest.learned), newest.version)
                if done:
                    log.info(
                        "acknowledged %d documents of version %d after a restart",
                        done,
                        newest.version,
                    )
                self.position = newest.position
            self._go_live(manifest)

    @property
    def base_model(self) -> str:
        return base_model_id(self.settings.model)

    def _check_compatible(self, manifest: Manifest) -> None:
        kind = weights_kind(self.learner.model)
        check_compatible(manifest, self.base_model, kind, f"--data-dir {self.settings.data_dir}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="livelm-learner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step, publishing what was learned since the last version."""
        self._stop.set()
        self._wake.set()
        self.gate.close()
        if self._thread is not None:
            self._thread.join()

    def notify(self) -> None:
        """New documents are queued."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if self.queue.queued_after(self.position) == 0:
                    if self._pending.learned:
                        self._publish_when_idle()  # the queue ran dry: make the learning live
                    self._wake.wait(1.0)
                    continue
                turn = self.gate.wait_turn()
                self.metrics.yielded.inc(turn.waited)
                with self._lock:
                    # While requests come, one document: a step cannot be interrupted, and a
                    # short one keeps a request that arrives during it waiting less.
                    size = 1 if turn.contended else self.learner.config.max_docs_per_step
                    batch = self.queue.take(after=self.position, limit=size)
                    if batch:
                        self._learn(batch)
                    due = self._due()
                if due:
                    self._publish_when_idle()
            with self._lock:
                if self._pending.learned:
                    self._publish()
        except BaseException as e:  # reported by /readyz; the server keeps serving
            log.exception("the learner stopped")
            self.error = e

    def _publish_when_idle(self) -> None:
        # A publish (canary scores, a write, a copy) cannot be interrupted either: it waits for
        # its turn like a step.
        self.metrics.yielded.inc(self.gate.wait_turn().waited)
        with self._lock:
            if self._pending.learned:  # a rollback meanwhile drops what was pending
                self._publish()

    def _learn(self, batch: Sequence[QueuedDocument]) -> None:
        report = self.learner.step([self.learner.encode(q.doc) for q in batch])
        self.metrics.steps.inc()
        for score in report.scores:
            self.monitor.update(score.loss)
        # A policy learner keeps the drift events it detected; the core learner detects none.
        drifts = len(getattr(self.learner, "drift_events", ()))
        self.metrics.drift.inc(drifts - self._drifts)
        self._drifts = drifts
        if report.updated:
            self._pending.add(batch, report)
            self.metrics.learned_tokens.inc(report.tokens)
            if math.isfinite(report.loss):
                self.metrics.loss.set(report.loss)
        else:
            self.metrics.skipped.labels(reason=str(report.skipped)).inc()
            if len(batch) > 1:
                # One document can make a whole batch's loss or gradient non-finite: learn the
                # documents one by one, so that only the culprit is rejected.
                for queued in batch:
                    self._learn([queued])
            else:
                self.queue.reject([batch[0].seq], f"not learned: {report.skipped}")
        self.position = max(self.position, batch[-1].seq)

    def _due(self) -> bool:
        p, s = self._pending, self.settings
        if not p.learned:
            return False
        return p.steps >= s.publish_every_steps or time.monotonic() - p.since >= s.publish_every_s

    # -- publishing -----------------------------------------------------------------------------

    def _publish(self) -> None:
        started = time.perf_counter()
        pending, self._pending = self._pending, _Pending()
        assert self.live is not None
        verdict = self.guard.check(self.learner, self.live.metrics.get("canary_loss"))
        seqs = [seq for seq, _ in pending.learned]
        if verdict.refused is not None:
            self.metrics.refused.inc()
            log.warning(
                "publish guard refused a candidate (%d documents): %s; learning continues "
                "from version %d",
                len(seqs),
                verdict.refused,
                self.live.version,
            )
            self.queue.reject(
                seqs, f"learned into a candidate the publish guard refused: {verdict.refused}"
            )
            self._restore(self.live)
            return
        stream_loss = pending.nll / pending.tokens if pending.tokens else None
        span = (min(pending.times), max(pending.times)) if pending.times else None
        metrics: dict[str, object] = {
            "documents": len(seqs),
            "tokens": pending.tokens,
            "steps": pending.steps,
            "stream_loss": stream_loss,
            "stream_time": list(span) if span else None,
        }
        manifest = self._write(
            position=self.position,
            parent=self.live.version,
            learned=seqs,
            metrics=metrics,
            canary_loss=verdict.loss,
        )
        self._go_live(manifest)
        self.queue.ack(pending.learned, manifest.version)
        self.store.retain()
        seconds = time.perf_counter() - started
        self.metrics.publish_seconds.observe(seconds)
        log.info(
            "version %d live: %d documents%s, stream loss %s, canary loss %.3f (%.2f s)",
            manifest.version,
            len(seqs),
            f" ({span[0]} .. {span[1]})" if span else "",
            "-" if stream_loss is None else f"{stream_loss:.3f}",
            verdict.loss,
            seconds,
        )

    def _write(
        self,
        *,
        position: int,
        parent: int | None,
        learned: list[int],
        metrics: dict[str, object],
        canary_loss: float | None = None,
    ) -> Manifest:
        """Write the learner's weights as the next version, durably."""
        if canary_loss is None:
            canary_loss = self.guard.loss(self.learner)
        manifest = Manifest(
            version=self.store.next_version(),
            parent=parent,
            kind=weights_kind(self.learner.model),
            base_model=self.base_model,
            position=position,
            learned=tuple(learned),
            metrics={**metrics, "canary_loss": canary_loss},
            config=self.learner.config.to_dict(),
        )
        self.store.publish(manifest, lambda directory: save_weights(self.learner.model, directory))
        self.metrics.published.inc()
        return manifest

    def _go_live(self, manifest: Manifest) -> None:
        model = self.learner.model
        device = next(model.parameters()).device
        autocast = autocast_dtype_for(device, self.learner.config.precision)
        version = ServingVersion(manifest, serving_copy(model), autocast)
        self.live = manifest
        self.metrics.went_live(manifest)
        self._on_live(version)

    def _restore(self, manifest: Manifest) -> None:
        """Put a version's weights back into the learner, with a fresh optimizer."""
        load_weights(self.learner.model, self.store.path(manifest.version))
        self.learner.reset_optimizer()
        self.learner.rewarm()

    # -- rollback -------------------------------------------------------------------------------

    def rollback(self, version: int) -> Manifest:
        """Make an older version live; the learner continues from it.

        What was learned since the last publish is dropped with the weights; those documents
        are still queued, and are learned again from the version rolled back to. Documents
        learned into the versions rolled back over stay learned (in those versions).
        """
        with self._lock:
            manifest = self.store.manifest(version)
            self._restore(manifest)
            self.store.set_live(version)
            newest = self.store.newest()
            assert newest is not None
            self.position = self.store.manifest(newest).position
            self._pending = _Pending()
            self.metrics.rollbacks.inc()
            self._go_live(manifest)
            log.warning("rolled back: version %d is live", version)
            return manifest
