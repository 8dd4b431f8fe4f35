"""The server's configuration: one frozen dataclass, validated at construction.

Every limit a request can hit lives here, with the flag that changes it named in its error.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from livelm.learner import LearnerConfig
from livelm.model import DEFAULT_MODEL
from livelm.policy import PolicyConfig, Strategy, parse_strategy
from livelm.server.webhook import check_webhook_url

Scope = Literal["read", "write"]
API_KEYS_ENV_VAR = "LIVELM_API_KEYS"  # read:KEY,write:KEY entries (`livelm.server.auth`)


@dataclass(frozen=True)
class ApiKey:
    """A bearer token and what it may do: `read` (generate, score, list) or `write` (also
    ingest documents, roll back and pin versions)."""

    key: str
    scope: Scope

    def __post_init__(self) -> None:
        if len(self.key) < 8 or any(c.isspace() for c in self.key):
            raise ValueError("an API key needs at least 8 characters and no whitespace")
        if self.scope not in ("read", "write"):
            raise ValueError(f"an API key's scope is read or write, not {self.scope!r}")

    def __repr__(self) -> str:  # keys never reach logs
        return f"ApiKey(scope={self.scope!r})"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """What `livelm serve` runs: the model, where its state lives, how it learns and publishes,
    who may call it and how much a request may ask."""

    model: str = DEFAULT_MODEL
    data_dir: Path = Path("runs/serve")  # queue.sqlite3 and snapshots/ live here
    lock_wait_s: float = 0.0  # how long to wait for another server to leave data_dir
    # What the learner runs, parsed once (the CLI parses `--strategy`; a spec string given here,
    # as replay's `online-guarded` or `online+replay=0.25`, is parsed at construction).
    strategy: Strategy | str = "online"
    learner: LearnerConfig | None = None  # overrides the strategy's learner config when given
    device: str = "auto"
    # A replica: serve the versions learner workers publish into this store; learn nothing.
    follow: Path | None = None
    follow_poll_s: float = 0.2
    source: str | None = None  # a replica's POST /v1/documents goes to this Redis stream
    served_name: str = "livelm"  # the model id of the OpenAI-compatible API
    # Publishing: a version every N learning steps or T seconds, and whenever the queue runs dry.
    publish_every_steps: int = 16
    publish_every_s: float = 10.0
    keep_last: int = 10
    # Kept versions that requests name (`livelm@N`) stay loaded, at most this many besides the
    # live one (least recently used first out); 0 loads one for each request.
    pinned_versions: int = 2
    # A queue that disagrees with the store at startup (see livelm.source.reconcile) is re-based
    # after the store's position instead of refused.
    rebase_queue: bool = False
    # The guard: a candidate whose canary loss is not finite or rose by more than this many
    # nats per token over the live version's is refused.
    guard_max_rise: float = 1.0
    # ... or rose by more than this over the base model's (a slow climb, version by version).
    guard_max_total_rise: float = 0.5
    canary: Path | None = None  # a stream file of canary documents; None: the built-in set
    # Feeding a stream file into the queue at startup, in order, as fast as the learner keeps up.
    feed: Path | None = None
    feed_every: int = 1
    feed_backlog: int = 32  # the feeder waits while more documents than this are queued
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    # Limits on what one request may ask.
    max_request_bytes: int = 4 << 20
    max_documents_per_request: int = 256
    max_document_chars: int = 32_768
    max_new_tokens: int = 512
    # Tokens one POST /v1/score may ask the model to score: about a minute of a 135M model on
    # two CPU cores, a small fraction of the 4 MB a body may carry (~1M tokens, ~40 minutes).
    max_score_tokens: int = 16_384
    # Seconds a client has to send its whole request body once its headers are in; a slower
    # one gets a 408 and its connection closed, so a stalled upload does not hold a worker.
    body_timeout_s: float = 30.0
    # Serving first: at most this many model requests run at once; the learner starts a step
    # after no request has run for `yield_quiet_s`, or, under a steady load, when its share is
    # due (its steps then take `learner_share` of the time, beside the requests: see
    # livelm.server.gate), or once it has waited `yield_max_s`.
    max_inflight: int = 2
    # Generations run batched in one engine (livelm.server.engine), which takes one of the
    # `max_inflight` slots while it runs: at most this many sequences share its decode steps,
    # the others wait for a place.
    max_batch: int = 8
    yield_quiet_s: float = 0.02
    yield_max_s: float = 5.0
    learner_share: float = 0.5
    # Memory (livelm.server.memory): at most this many malloc arenas (0: glibc's default, eight
    # per core); blocks of this many bytes or more mapped for themselves, so that freeing one
    # gives it back (0: glibc's threshold, which rises to 32 MB); freed memory given back once
    # no request has run for this many seconds (0: never); at most this many compiled CPU
    # matmul kernels cached, one per shape, about 1 MB each (0: oneDNN's 1024).
    malloc_arenas: int = 2
    malloc_mmap_threshold: int = 1 << 20
    malloc_trim_s: float = 1.0
    kernel_cache: int = 128
    # Tokens in one micro-batch of /v1/score: its logits over the vocabulary (bf16, their fp32
    # copy and its log-softmax) take about 0.5 MB a token for a 49k vocabulary, so the learner's
    # 2,048-token micro-batches would hold 1 GB for a moment; a longer chunk (up to the learner's
    # max_tokens) still gets a micro-batch of its own.
    score_token_budget: int = 512
    # Monitoring (/v1/monitor): each drift event is POSTed as JSON to this URL (needs a strategy
    # with a detector); the newest `monitor_docs` documents are ranked by surprise, and terms
    # emerge in the newest `trend_docs` against the documents before them.
    drift_webhook: str | None = field(default=None, repr=False)  # its URL may hold a token
    monitor_docs: int = 1000
    trend_docs: int = 300
    # /v1/recommend (livelm.recommend): at most this many history items and candidates in one
    # request; without candidates it ranks the newest `recommend_candidates` learned documents,
    # and TF-IDF's document frequencies come from the newest `recommend_idf_docs` of them.
    recommend_max_history: int = 32
    recommend_max_candidates: int = 100
    recommend_candidates: int = 50
    recommend_idf_docs: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.strategy, str):
            object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        if not self.learner_config.learns:
            raise ValueError(
                f"--strategy {self.parsed_strategy.name}: it does not learn, and serve needs a "
                "learner"
            )
        positive = {
            "--publish-every-steps": self.publish_every_steps,
            "--publish-every-s": self.publish_every_s,
            "--keep-last": self.keep_last,
            "--guard-max-rise": self.guard_max_rise,
            "--guard-max-total-rise": self.guard_max_total_rise,
            "--feed-every": self.feed_every,
            "--feed-backlog": self.feed_backlog,
            "--max-request-bytes": self.max_request_bytes,
            "--max-documents-per-request": self.max_documents_per_request,
            "--max-document-chars": self.max_document_chars,
            "--max-new-tokens": self.max_new_tokens,
            "--max-score-tokens": self.max_score_tokens,
            "--body-timeout-s": self.body_timeout_s,
            "--max-inflight": self.max_inflight,
            "--max-batch": self.max_batch,
            "--score-token-budget": self.score_token_budget,
            "recommend_max_history": self.recommend_max_history,
            "recommend_max_candidates": self.recommend_max_candidates,
            "recommend_candidates": self.recommend_candidates,
            "recommend_idf_docs": self.recommend_idf_docs,
            "--yield-max-s": self.yield_max_s,
        }
        for flag, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{flag} must be a positive number, not {value}")
        if self.malloc_arenas < 0:
            raise ValueError(f"--malloc-arenas must be at least 0, not {self.malloc_arenas}")
        if not (0 <= self.malloc_mmap_threshold <= 32 << 20):
            raise ValueError(
                "--malloc-mmap-threshold must lie in [0, 33554432] bytes (glibc's limit), not "
                f"{self.malloc_mmap_threshold}"
            )
        if self.kernel_cache < 0:
            raise ValueError(f"--kernel-cache must be at least 0, not {self.kernel_cache}")
        if not (0 <= self.malloc_trim_s < math.inf):
            raise ValueError(f"--malloc-trim-s must be seconds >= 0, not {self.malloc_trim_s}")
        if self.pinned_versions < 0:
            raise ValueError(f"--pinned-versions must be at least 0, not {self.pinned_versions}")
        if not (0 <= self.lock_wait_s < math.inf):
            raise ValueError(f"--lock-wait must be seconds >= 0, not {self.lock_wait_s}")
        if not (0 <= self.learner_share <= 1):
            raise ValueError(
                f"--learner-share must lie in [0, 1] (0: only quiet moments), not "
                f"{self.learner_share}"
            )
        if not (0 <= self.yield_quiet_s <= self.yield_max_s):
            raise ValueError(
                f"--yield-quiet-s must lie in [0, --yield-max-s], not {self.yield_quiet_s}"
            )
        if not self.served_name.strip():
            raise ValueError("--served-name must not be empty")
        if self.monitor_docs < 1 or self.trend_docs < 1:
            raise ValueError("monitor_docs and trend_docs must be at least 1")
        if self.drift_webhook is not None:
            check_webhook_url(self.drift_webhook)
            if self.follow is not None:
                raise ValueError(
                    "--drift-webhook: a --follow replica learns nothing, so it sees "
                    "no drift; give it to the learners' server"
                )
            if self.policy.detector is None:
                raise ValueError(
                    f"--drift-webhook: --strategy {self.parsed_strategy.name} has no drift "
                    "detector; add one, e.g. --strategy online+detector=adwin"
                )

    @property
    def parsed_strategy(self) -> Strategy:
        assert isinstance(self.strategy, Strategy), "parsed in __post_init__"
        return self.strategy

    @property
    def learner_config(self) -> LearnerConfig:
        return self.learner if self.learner is not None else self.parsed_strategy.learner

    @property
    def policy(self) -> PolicyConfig:
        return self.parsed_strategy.policy

    @property
    def authenticated(self) -> bool:
        return bool(self.api_keys)

    def check_bind(self, host: str) -> None:
        """Refuse to serve beyond this machine without API keys."""
        if not self.authenticated and not is_loopback(host):
            raise ValueError(
                f"--host {host}: refusing to serve beyond localhost without API keys; set "
                f"--api-key-read/--api-key-write, --api-keys-file or {API_KEYS_ENV_VAR}"
            )
