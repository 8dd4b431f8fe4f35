"""The drift webhook (`--drift-webhook URL`): each drift event POSTed as JSON, off the learner.

The learner hands an event over with `send`, which never blocks: the event joins a bounded queue
and a daemon thread delivers it, trying a few times with back-off (0.5 s, 1 s, 2 s). An event
that cannot be delivered, or that finds the queue full (an endpoint slower than the drifts),
is logged and counted in `livelm_webhook_failures_total`; learning goes on either way.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import threading
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_STOP: dict[str, Any] = {}  # the sentinel that ends the sender's thread


def check_webhook_url(url: str, flag: str = "--drift-webhook") -> None:
    """Only http(s): urllib would also open `file:` and `ftp:` URLs."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{flag} must be an http(s) URL, not {url!r}")


def post_json(url: str, payload: dict[str, Any], timeout: float) -> None:
    """POST `payload` as JSON; raises `OSError` (urllib's errors among them) on failure, a
    non-2xx answer included."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "livelm"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # http(s) only, checked
        response.read()


class WebhookSender:
    """Delivers JSON payloads to one URL from a daemon thread, started by the first `send`.

    `on_failure` is called once per payload given up on (after its retries, or dropped with
    the queue full).
    """

    def __init__(
        self,
        url: str,
        *,
        on_failure: Callable[[], None] = lambda: None,
        max_queued: int = 64,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        check_webhook_url(url)
        if max_queued < 1 or attempts < 1 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("a webhook needs max_queued, attempts >= 1 and a positive timeout")
        self.url = url
        self.on_failure = on_failure
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def send(self, payload: dict[str, Any]) -> None:
        """Queue a payload for delivery; returns at once (a full queue drops it, counted)."""
        if self._stop.is_set():
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="livelm-webhook", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self._failed("the webhook's queue is full (the endpoint is slower than the events)")

    def close(self, wait_s: float = 2.0) -> None:
        """Stop delivering; what is still queued is dropped. Waits up to `wait_s` for the thread
        (a request in flight ends within its timeout; the thread is a daemon either way)."""
        self._stop.set()
        with self._start_lock:
            thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):  # then it sees the stop flag after its payload
            self._queue.put_nowait(_STOP)
        thread.join(wait_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            payload = self._queue.get()
            if payload is _STOP:
                return
            self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                post_json(self.url, payload, self.timeout_s)
            # urllib's URLError and HTTPError (a non-2xx answer) are OSErrors; a garbled answer
            # raises http.client's own.
            except (OSError, http.client.HTTPException) as e:
                if attempt == self.attempts or self._stop.wait(delay):
                    self._failed(f"{e} (after {attempt} attempts)")
                    return
                delay *= 2
            else:
                self.delivered += 1
                return

    def _failed(self, why: str) -> None:
        self.failed += 1
        self.on_failure()
        # Scheme and host only: a webhook's path or query often carries a token.
        where = urlsplit(self.url)
        log.warning(
            "drift webhook %s://%s: an event was not delivered: %s",
            where.scheme,
            where.netloc,
            why,
        )
