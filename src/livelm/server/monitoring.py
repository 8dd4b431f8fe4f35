"""What the server's learner saw while it learned, for `/v1/monitor/*` and the dashboard.

The learner thread feeds a `Monitor` as it goes: after each step the step's documents (their
loss, surprise and words) and a timeline point; each version that goes live, each candidate the
guard refuses, each rollback; each drift its detector reports. Request threads read it. Every
piece is a bounded buffer (the newest `docs` documents, `points` steps, ...), one lock guards
them all, and the learner's cost per step is O(documents in the step); sorting and ranking
happen when a request asks.

It is attached where the server builds its loop: the loop's `on_step` and `on_live` callbacks,
the policy learner's `on_drift` (`watch_drifts`), and `WatchedGuard` (the loop's guard,
reporting each refusal).

Drift events come from the strategy's detector: the server's default strategy (`online`) has
none, so the drift list stays empty until the server runs one that has, such as
`--strategy online+detector=adwin` or the `online-drift` preset. `--drift-webhook` POSTs each
event as it comes (see `livelm.server.webhook`).
"""

from __future__ import annotations

import heapq
import json
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from livelm.document import Document
from livelm.learner import DocScore, Learner, StepReport
from livelm.loop.guard import CanaryGuard, Scores, Verdict
from livelm.policy import PolicyLearner
from livelm.policy.events import DriftEvent
from livelm.policy.monitor import EmergingTerms, SurpriseMonitor, terms
from livelm.server.schemas.monitor import (
    DriftItem,
    EventKind,
    SurpriseItem,
    TermItem,
    TimelineEvent,
    TimelinePoint,
    TimelineVersion,
)
from livelm.server.webhook import WebhookSender
from livelm.store import Manifest

TEXT_CHARS = 500  # of each document kept for /v1/monitor/surprises
META_CHARS = 2_000  # a document's meta is kept when its JSON is no longer than this
RATE_WINDOW_S = 60.0  # docs_per_s and tokens_per_s are over the last minute
HOLDERS_SHOWN = 5  # ids of recent documents listed with each emerging term
MAX_EARLIER_TERMS = 100_000  # distinct words of the earlier stream kept for emerging terms


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def unix_time(iso: str) -> float:
    """An ISO 8601 time (a manifest's `created`) as unix seconds; nan if it is not one."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return math.nan


class Monitor:
    """Bounded, thread-safe state of the learner as it learns; written by the learner thread,
    read by request threads.

    >>> from livelm.learner import DocScore, StepReport
    >>> m = Monitor(docs=10, warmup=2)
    >>> docs = [Document(f"storm number {i}", id=f"d{i}") for i in range(4)]
    >>> scores = tuple(DocScore(d.id, 3.0 + i % 2, 5) for i, d in enumerate(docs))
    >>> report = StepReport(1, scores, 3.5, True, None, 1e-3, None, 20, 0.1)
    >>> m.stepped(docs, report)
    >>> m.docs, [s.id for s in m.surprises(1)]
    (4, ['d3'])
    """

    def __init__(
        self,
        *,
        docs: int = 1000,
        trend_docs: int = 300,
        trend_min_count: int = 3,
        points: int = 2000,
        versions: int = 500,
        events: int = 500,
        drifts: int = 200,
        surprise_half_life: int = 500,
        warmup: int = 20,
        webhook: WebhookSender | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._scorer = SurpriseMonitor(surprise_half_life, warmup)
        self._recent: deque[SurpriseItem] = deque(maxlen=docs)
        self._trends = EmergingTerms(trend_docs, trend_min_count)
        # (id, words) of the documents in the trends' recent window, newest last.
        self._holders: deque[tuple[str, frozenset[str]]] = deque(maxlen=trend_docs)
        self._points: deque[TimelinePoint] = deque(maxlen=points)
        self._versions: deque[TimelineVersion] = deque(maxlen=versions)
        self._events: deque[TimelineEvent] = deque(maxlen=events)
        self._drifts: deque[DriftItem] = deque(maxlen=drifts)
        # (monotonic time, documents, tokens) of each step in the last minute.
        self._rates: deque[tuple[float, int, int]] = deque(maxlen=100_000)
        self._started = time.monotonic()
        self._last_step: float | None = None
        self._live: int | None = None
        self._newest = 0
        self._candidate = 0  # documents stepped on since the last version went live
        self.webhook = webhook
        self.docs = 0  # documents stepped on since the server started
        self.tokens = 0
        self.drift_count = 0

    # -- written by the learner thread ---------------------------------------------------------

    def stepped(self, docs: Sequence[Document], report: StepReport) -> None:
        """One learning step: its documents, in stream order, and the step's report."""
        wall, now = time.time(), time.monotonic()
        # The per-document work that needs no lock: words, clipped text and meta.
        words = [frozenset(terms(d.text)) for d in docs]
        metas = [_small_meta(d.meta) for d in docs]
        scored = [s for s in report.scores if s.tokens and math.isfinite(s.loss)]
        tokens = sum(s.tokens for s in scored)
        loss = sum(s.loss * s.tokens for s in scored) / tokens if tokens else None
        with self._lock:
            version = self._live or 0
            for i, (doc, score) in enumerate(zip(docs, report.scores, strict=True)):
                self._add(doc, score, words[i], metas[i], self.docs + i, version, wall)
            self.docs += len(docs)
            self.tokens += tokens
            self._candidate += len(docs)
            self._last_step = now
            self._rates.append((now, len(docs), tokens))
            self._prune(now)
            times = [d.time for d in docs if d.time]
            self._points.append(
                TimelinePoint(
                    step=report.step,
                    docs=self.docs,
                    time=times[-1] if times else None,
                    at=wall,
                    stream_loss=_finite(loss),
                    version=version,
                    tokens=tokens,
                )
            )

    def _add(
        self,
        doc: Document,
        score: DocScore,
        words: frozenset[str],
        meta: dict[str, Any],
        index: int,
        version: int,
        wall: float,
    ) -> None:
        self._trends.update(doc.text)
        earlier = self._trends.earlier_counts
        if len(earlier) > MAX_EARLIER_TERMS:
            # The earlier stream's vocabulary grows without end (names, numbers, links): keep
            # its most frequent half. A rare word dropped here counts as unseen before, should
            # it ever rise; once per MAX_EARLIER_TERMS / 2 new words, O(log V) a word amortized.
            kept = earlier.most_common(MAX_EARLIER_TERMS // 2)
            earlier.clear()
            earlier.update(dict(kept))
        self._holders.append((doc.id, words))
        if not (score.tokens and math.isfinite(score.loss)):
            return  # a rejected document: no loss to rank by
        surprise = self._scorer.surprise(score.loss)  # before its loss joins the statistics
        self._scorer.update(score.loss)
        if surprise is None:
            return  # the running statistics are still warming up
        self._recent.append(
            SurpriseItem(
                id=doc.id,
                time=doc.time,
                text=doc.text[:TEXT_CHARS],
                meta=meta,
                loss=score.loss,
                surprise=surprise,
                version=version,
                index=index,
                at=wall,
            )
        )

    def went_live(self, manifest: Manifest) -> None:
        """A version is live: the first (at startup), a new one (publish) or an older one
        (rollback)."""
        number = manifest.version
        with self._lock:
            first = self._live is None
            if first or number > self._newest:
                metrics = manifest.metrics
                stream_loss, canary_loss = metrics.get("stream_loss"), metrics.get("canary_loss")
                docs = metrics.get("documents")
                self._versions.append(
                    TimelineVersion(
                        version=number,
                        at=_written_at(manifest),
                        stream_loss=_number(stream_loss),
                        canary_loss=_number(canary_loss),
                        documents=docs if isinstance(docs, int) else None,
                    )
                )
                if not first:
                    losses = ", ".join(
                        f"{name} {value:.3f}"
                        for name, value in (
                            ("stream loss", stream_loss),
                            ("canary loss", canary_loss),
                        )
                        if isinstance(value, (int, float)) and math.isfinite(value)
                    )
                    self._event(
                        "publish",
                        number,
                        docs if isinstance(docs, int) else self._candidate,
                        f"version {number} live" + (f": {losses}" if losses else ""),
                    )
            elif number != self._live:
                self._event("rollback", number, self.docs, f"rolled back to version {number}")
            self._candidate = 0
            self._live = number
            self._newest = max(self._newest, number)

    def refused(self, reason: str) -> None:
        """The guard refused a candidate: learning continues from the live version."""
        with self._lock:
            self._event("refused", self._live or 0, self._candidate, reason)
            self._candidate = 0

    def drifted(self, event: DriftEvent) -> None:
        """A drift the learner's detector reported (called inside its step)."""
        with self._lock:
            version = self._live or 0
            item = DriftItem(
                **event.to_dict(),
                doc_index=event.index,
                signal=_finite(event.loss),
                at=time.time(),
                version=version,
            )
            self._drifts.append(item)
            self.drift_count += 1
            loss = f"loss {event.loss:.3f}" if math.isfinite(event.loss) else "a loss"
            self._event(
                "drift",
                version,
                event.index + 1,
                f"{event.detector}: {loss} at document {event.index}",
            )
        if self.webhook is not None:
            self.webhook.send(item.model_dump())  # returns at once: a thread delivers it

    def _event(self, kind: EventKind, version: int, docs: int, detail: str) -> None:
        self._events.append(
            TimelineEvent(kind=kind, at=time.time(), version=version, docs=docs, detail=detail)
        )

    def _prune(self, now: float) -> None:
        while self._rates and self._rates[0][0] < now - RATE_WINDOW_S:
            self._rates.popleft()

    # -- read by request threads ----------------------------------------------------------------

    def surprises(self, limit: int) -> list[SurpriseItem]:
        """The `limit` most surprising of the recent documents, most surprising first."""
        with self._lock:
            recent = list(self._recent)
        return heapq.nlargest(limit, recent, key=lambda s: (s.surprise, s.index))

    def terms(self, limit: int) -> list[TermItem]:
        """The `limit` fastest-rising words, each with up to 5 recent documents holding it."""
        with self._lock:
            top = self._trends.top(limit)
            holders = list(self._holders)
        found = []
        for t in top:
            ids = []
            for doc_id, words in reversed(holders):  # newest first
                if t.term in words:
                    ids.append(doc_id)
                    if len(ids) == HOLDERS_SHOWN:
                        break
            found.append(
                TermItem(
                    term=t.term, score=t.score, recent=t.recent, earlier=t.earlier, documents=ids
                )
            )
        return found

    def drifts(self, limit: int) -> list[DriftItem]:
        """The newest `limit` drift events, newest first."""
        with self._lock:
            return list(self._drifts)[::-1][:limit]

    def timeline(
        self, limit: int
    ) -> tuple[list[TimelinePoint], list[TimelineVersion], list[TimelineEvent]]:
        """The newest `limit` points, versions and events, each oldest first."""
        with self._lock:
            return (
                list(self._points)[-limit:],
                list(self._versions)[-limit:],
                list(self._events)[-limit:],
            )

    def rates(self) -> tuple[float, float]:
        """Documents and tokens stepped on per second over the last minute (or since the
        server started, if that is sooner)."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            docs = sum(n for _, n, _ in self._rates)
            tokens = sum(t for *_, t in self._rates)
        span = min(RATE_WINDOW_S, now - self._started)
        return (docs / span, tokens / span) if span > 0 else (0.0, 0.0)

    def since_step(self) -> float | None:
        """Seconds since the last step, or None before the first."""
        last = self._last_step
        return None if last is None else time.monotonic() - last

    def watch_drifts(self, learner: Learner | PolicyLearner) -> None:
        """Hear of every drift a policy learner's detector reports (the core learner has
        none)."""
        if not isinstance(learner, PolicyLearner):
            return
        previous = learner.on_drift

        def drifted(event: DriftEvent) -> None:
            self.drifted(event)
            if previous is not None:
                previous(event)

        learner.on_drift = drifted

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()


def _written_at(manifest: Manifest) -> float:
    at = unix_time(manifest.created)
    return at if math.isfinite(at) else time.time()


def _number(value: object) -> float | None:
    return _finite(float(value)) if isinstance(value, (int, float)) else None


def _small_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A document's meta, or a note in its place when it is too large to keep in memory."""
    if not meta:
        return {}
    size = len(json.dumps(meta, default=str))
    return meta if size <= META_CHARS else {"omitted": f"{size} characters of meta"}


class WatchedGuard(CanaryGuard):
    """The publish guard, reporting each refused candidate to a monitor."""

    def __init__(
        self,
        docs: Sequence[Document],
        max_rise: float,
        max_total_rise: float,
        *,
        monitor: Monitor,
    ) -> None:
        super().__init__(docs, max_rise, max_total_rise)
        self.monitor = monitor

    def check(
        self, learner: Scores, live_loss: float | None, base_loss: float | None = None
    ) -> Verdict:
        verdict = super().check(learner, live_loss, base_loss)
        if verdict.refused is not None:
            self.monitor.refused(verdict.refused)
        return verdict
