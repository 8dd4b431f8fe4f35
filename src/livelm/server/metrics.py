"""Prometheus metrics, one registry per app (so that several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from livelm.source.queue import State
from livelm.store import Manifest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.documents = Gauge(
            "livelm_documents", "Documents in the queue, by state", ["state"], registry=r
        )
        self.accepted = Counter(
            "livelm_documents_accepted", "Documents newly stored by this process", registry=r
        )
        self.duplicates = Counter(
            "livelm_documents_duplicate", "Re-sent documents (already stored)", registry=r
        )
        self.steps = Counter("livelm_learner_steps", "Learning steps taken", registry=r)
        self.skipped = Counter(
            "livelm_learner_skipped", "Steps whose update was skipped", ["reason"], registry=r
        )
        self.learned_tokens = Counter(
            "livelm_learner_tokens", "Stream tokens scored and learned", registry=r
        )
        self.loss = Gauge(
            "livelm_learner_loss", "Prequential loss of the last step (nats/token)", registry=r
        )
        self.drift = Counter("livelm_drift_events", "Drift events the learner reported", registry=r)
        self.yielded = Counter(
            "livelm_learner_yield_seconds", "Time the learner waited for requests", registry=r
        )
        self.live_version = Gauge("livelm_live_version", "The live version", registry=r)
        self.canary_loss = Gauge(
            "livelm_canary_loss", "Canary loss of the live version (nats/token)", registry=r
        )
        self.published = Counter("livelm_versions_published", "Versions published", registry=r)
        self.refused = Counter(
            "livelm_publish_refused", "Candidate versions the guard refused", registry=r
        )
        self.rollbacks = Counter("livelm_rollbacks", "Rollbacks", registry=r)
        self.publish_seconds = Histogram(
            "livelm_publish_seconds",
            "Time to guard, write and swap in a version",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.served_tokens = Counter(
            "livelm_served_tokens",
            "Tokens the model scored (/v1/score) or generated for requests",
            ["kind"],
            registry=r,
        )
        self.cancelled = Counter(
            "livelm_requests_cancelled",
            "Model requests stopped early because their client went away",
            ["route"],
            registry=r,
        )
        self.webhook_failures = Counter(
            "livelm_webhook_failures",
            "Drift events the --drift-webhook did not take (after retries, or queue full)",
            registry=r,
        )
        self.request_seconds = Histogram(
            "livelm_request_seconds",
            "HTTP request latency, by route",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def went_live(self, manifest: Manifest) -> None:
        """A version is serving now: its number and its canary loss."""
        self.live_version.set(manifest.version)
        canary = manifest.metrics.get("canary_loss")
        if isinstance(canary, float):
            self.canary_loss.set(canary)

    def set_documents(self, counts: dict[State, int]) -> None:
        for state, n in counts.items():
            self.documents.labels(state=state).set(n)
