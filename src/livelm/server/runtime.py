"""Everything a running server owns: the model, the queue, the store, the learner thread, the
live version, and the optional feeder. The app's lifespan opens one and closes it.

Data directory layout: `queue.sqlite3` (the document queue), `snapshots/` (the versions), and a
lock file that keeps a second server off the same directory.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import IO

from livelm.document import Document
from livelm.learner import DocScore, EncodedDocument
from livelm.loop import LearningLoop, LoopSettings, QueueFeed, canary_documents
from livelm.model import autocast_dtype_for, in_fresh_thread, load_model
from livelm.policy import build_learner
from livelm.server.engine import Engine
from livelm.server.errors import ApiError, NotReadyError
from livelm.server.feeder import Feeder
from livelm.server.follower import Follower
from livelm.server.gate import PriorityGate
from livelm.server.inference import Codec, Generation, Sampling
from livelm.server.memory import Trimmer
from livelm.server.metrics import Metrics
from livelm.server.monitoring import Monitor, WatchedGuard
from livelm.server.pinned import VersionLoader, VersionModels
from livelm.server.settings import ServerSettings
from livelm.server.versions import ServingVersion, serving_copy
from livelm.server.webhook import WebhookSender
from livelm.source.queue import Accepted, DocumentQueue, DocumentStatus, State
from livelm.source.redis_stream import RedisSpec, RedisStreamSource
from livelm.store import Manifest, SnapshotStore, base_model_id

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        """Load the model, open the queue and the store, and make the live version ready.

        The learner thread starts with `start()`.
        """
        self.settings = settings
        self.metrics = metrics
        # A replica (`--follow`) writes nothing of its own: no data directory to lock.
        self._lock_file: IO[bytes] | None = None
        if settings.follow is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = _lock(settings.data_dir, settings.lock_wait_s)
        try:
            self._open(settings)
        except BaseException:
            if self._lock_file is not None:
                self._lock_file.close()
            raise

    def _open(self, settings: ServerSettings) -> None:
        data_dir = settings.data_dir
        if settings.source is not None and settings.follow is None:
            raise ValueError(
                "--source: a single-process server learns from its own queue; Redis streams "
                "are for livelm learn workers and --follow replicas"
            )
        loaded = load_model(settings.model, device=settings.device)
        config = settings.learner_config
        self.window = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0)
        # The learner tokenizes in its own thread; request threads get their own copy.
        self.codec = Codec(
            copy.deepcopy(loaded.tokenizer),
            min(config.max_tokens, self.window) if self.window else config.max_tokens,
            config.boundary,
        )
        self.pad_id = int(
            loaded.tokenizer.pad_token_id
            if loaded.tokenizer.pad_token_id is not None
            else self.codec.encoder.boundary
        )
        self.eos_ids = _eos_ids(loaded.model, loaded.tokenizer.eos_token_id)
        self.token_budget = min(config.token_budget, settings.score_token_budget)  # /v1/score
        self.row_tokens = config.row_tokens
        self.gate = PriorityGate(
            max_inflight=settings.max_inflight,
            quiet_s=settings.yield_quiet_s,
            max_wait_s=settings.yield_max_s,
            share=settings.learner_share,
        )
        self.trimmer = Trimmer(self.gate, settings.malloc_trim_s)
        # One thread decodes every generation, batched (see livelm.server.engine).
        self.engine = Engine(
            self.gate,
            self.eos_ids,
            settings.max_batch,
            pad_id=self.pad_id,
            score_tokens=self.token_budget,
            row_tokens=self.row_tokens,
        )
        self._live: ServingVersion | None = None
        self._loader: VersionLoader | None = None  # made with the first live version
        # What the learner sees as it learns (/v1/monitor); drift events also go to the webhook.
        self.monitor = Monitor(
            docs=settings.monitor_docs,
            trend_docs=settings.trend_docs,
            surprise_half_life=settings.policy.surprise_half_life,
            webhook=None
            if settings.drift_webhook is None
            else WebhookSender(
                settings.drift_webhook, on_failure=self.metrics.webhook_failures.inc
            ),
        )
        # Where POST /v1/documents goes on a replica: the learners' Redis stream.
        self.stream = (
            RedisStreamSource(RedisSpec.parse(settings.source, consumer="ingest"))
            if settings.source is not None
            else None
        )
        self.queue: DocumentQueue | None = None
        self.learner: LearningLoop | Follower
        if settings.follow is not None:
            self.store = SnapshotStore(settings.follow, keep_last=settings.keep_last)
            self.learner = Follower(
                base=loaded.model,
                store=self.store,
                metrics=self.metrics,
                on_live=self._set_live,
                poll_s=settings.follow_poll_s,
            )
        else:
            self.queue = DocumentQueue(data_dir / "queue.sqlite3")
            self.store = SnapshotStore(data_dir / "snapshots", keep_last=settings.keep_last)
            canary = canary_documents(settings.canary)  # what to keep: the guard's and EWC's
            learner = build_learner(loaded.model, loaded.tokenizer, config, settings.policy, canary)
            self.monitor.watch_drifts(learner)
            self.learner = LearningLoop(
                learner=learner,
                feed=QueueFeed(self.queue, rebase=settings.rebase_queue),
                store=self.store,
                guard=WatchedGuard(
                    canary,
                    settings.guard_max_rise,
                    settings.guard_max_total_rise,
                    monitor=self.monitor,
                ),
                base_model=base_model_id(settings.model),
                where=f"--data-dir {settings.data_dir}",
                settings=LoopSettings(
                    publish_every_steps=settings.publish_every_steps,
                    publish_every_s=settings.publish_every_s,
                    block_ms=1000,
                ),
                gate=self.gate,
                metrics=self.metrics,
                on_live=self._serve_learner_version,
                on_step=self.monitor.stepped,
                fresh_threads=True,  # beside the engine: see `in_fresh_thread`
            )
        self.learner.bootstrap()
        # The models requests may name: `livelm` (the live version) and `livelm@N`.
        self.models = VersionModels(
            self.store,
            settings.served_name,
            live=lambda: self.live,
            load=self._load_pinned,
            capacity=settings.pinned_versions,
        )
        self.feeder = (
            Feeder(settings.feed, self, every=settings.feed_every, backlog=settings.feed_backlog)
            if settings.feed is not None
            else None
        )

    def start(self) -> None:
        self.trimmer.start()
        self.learner.start()
        if self.feeder is not None:
            self.feeder.start()

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.stop()
        self.learner.stop()
        self.engine.close()
        if self.queue is not None:
            self.queue.close()
        if self.stream is not None:
            self.stream.close()
        self.monitor.close()
        self.trimmer.stop()
        if self._lock_file is not None:
            self._lock_file.close()

    # -- versions -------------------------------------------------------------------------------

    def _serve_learner_version(self, manifest: Manifest) -> None:
        """A version the learner made live: serve a frozen copy of its weights (taken between
        steps: the loop calls this under its lock)."""
        assert isinstance(self.learner, LearningLoop)
        model = self.learner.learner.model
        device = next(model.parameters()).device
        dtype = autocast_dtype_for(device, self.settings.learner_config.precision)
        if self._loader is None:  # at bootstrap: the loader copies the learner's shape
            self._loader = VersionLoader(model, dtype)
        self._set_live(ServingVersion(manifest, serving_copy(model, dtype)))

    def _set_live(self, version: ServingVersion) -> None:
        # One reference swap: a request reads `live` once and keeps that version to its end.
        self._live = version
        self.monitor.went_live(version.manifest)

    @property
    def live(self) -> ServingVersion:
        assert self._live is not None, "bootstrap makes a version live before any request"
        return self._live

    def _load_pinned(self, number: int) -> ServingVersion:
        if isinstance(self.learner, Follower):  # a replica loads it as it loads a live one
            return self.learner.serving_version(number)
        assert self._loader is not None, "bootstrap made a version live"
        manifest = self.store.manifest(number)
        return self._loader.load(manifest, self.store.path(number), self.live)

    @property
    def ready(self) -> tuple[bool, str]:
        if self.learner.error is not None:
            return False, f"the learner stopped: {self.learner.error!r}"
        if not self.learner.alive:
            return False, "the learner is not running"
        trouble = getattr(self.learner, "trouble", None)
        if trouble is not None:
            return False, f"the learner is waiting to retry: {trouble}"
        if self.queue is not None and (problem := self.queue.storage_problem()) is not None:
            return False, problem  # a document sent now would be refused
        return True, "ready"

    def rollback(self, version: int) -> Manifest:
        try:  # loads weights: on a thread that ends (`in_fresh_thread`), beside the engine
            return in_fresh_thread(partial(self.learner.rollback, version))
        except OSError as e:  # the store's disk: the rollback changed nothing
            raise NotReadyError(
                f"cannot roll back to version {version}: {e}; nothing changed (version "
                f"{self.live.number} is live): free space on the snapshots' disk or make it "
                "writable, then retry",
                param="version",
            ) from e

    # -- documents ------------------------------------------------------------------------------

    def ingest(self, docs: Sequence[Document]) -> list[Accepted]:
        """Store documents durably (all or none), then wake the learner; a replica forwards
        them to the learners' stream."""
        if self.queue is None:
            if self.stream is None:
                raise ApiError(
                    "this replica follows a store and keeps no queue; send documents to the "
                    "learners' stream (livelm ingest), or start it with --source redis://...",
                    param="documents",
                )
            results = self.stream.add(docs)
            accepted = [
                Accepted(d.id, 0, "queued", duplicate=r == "duplicate")
                for d, r in zip(docs, results, strict=True)
            ]
        else:
            accepted = self.queue.put(docs)
        fresh = sum(not a.duplicate for a in accepted)
        self.metrics.accepted.inc(fresh)
        self.metrics.duplicates.inc(len(accepted) - fresh)
        if fresh:
            self.learner.notify()
        return accepted

    def backlog(self) -> int:
        if self.queue is None:
            return 0 if self.stream is None else self.stream.backlog()
        assert isinstance(self.learner, LearningLoop)  # a server with a queue learns
        return self.learner.backlog()

    def document_status(self, doc_id: str) -> DocumentStatus | None:
        if self.queue is None:
            raise ApiError(
                "this replica follows a store: document states are kept by the learners' "
                "stream (and each version's manifest lists the entries it learned)",
                param="id",
            )
        return self.queue.status(doc_id)

    def document_counts(self) -> dict[State, int]:
        return {} if self.queue is None else self.queue.counts()

    # -- inference ------------------------------------------------------------------------------

    def score(
        self,
        docs: Sequence[EncodedDocument],
        version: ServingVersion,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> list[DocScore]:
        """Documents encoded by `codec.document`, scored in the engine, packed with the other
        requests' documents; `cancelled` stops it between micro-batches."""
        return self.engine.score(
            version,
            docs,
            cancelled=cancelled,
            on_tokens=self.metrics.served_tokens.labels(kind="scored").inc,
        )

    def prompt_ids(self, prompt: str, max_tokens: int, *, raw: bool = False) -> list[int]:
        """The prompt's token ids, after the boundary token that starts every learned document
        (a chat prompt, `raw`, carries its own special tokens)."""
        ids = self.codec.encode(prompt)
        if not raw:
            ids = [self.codec.encoder.boundary, *ids]
        if self.window and len(ids) + max_tokens > self.window:
            raise ApiError(
                f"the prompt has {len(ids)} tokens and asks for {max_tokens} more, past the "
                f"model's window of {self.window} tokens; shorten the prompt or max_tokens",
                param="prompt",
            )
        return ids

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, version: ServingVersion
    ) -> Generation:
        return Generation(
            self.engine,
            version,
            self.codec,
            prompt_ids,
            sampling,
            on_tokens=self.metrics.served_tokens.labels(kind="generated").inc,
        )


def _eos_ids(model: object, tokenizer_eos: int | None) -> list[int]:
    """The tokens that end a generation: the model's own, and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [] if found is None else [found])
    if tokenizer_eos is not None:
        ids.add(tokenizer_eos)
    return sorted(int(i) for i in ids)


def _lock(data_dir: os.PathLike[str], wait_s: float) -> IO[bytes]:
    """An exclusive lock on the data directory, held while the server runs (the kernel drops
    it when the process dies, `kill -9` included). Waits up to `wait_s` seconds for it: a
    restart may overlap the old process's last moments."""
    handle = open(os.path.join(data_dir, ".lock"), "wb")  # noqa: SIM115  # held until close()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise RuntimeError(
                    f"--data-dir {data_dir} is in use by another livelm serve; stop it, "
                    "choose another directory, or wait for it with --lock-wait"
                ) from None
            time.sleep(0.05)
