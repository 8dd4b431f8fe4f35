"""A detected drift as an event, and the webhook that carries it to an alerting system."""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DriftEvent:
    """A drift, where the stream showed it and what was done about it."""

    index: int  # stream index (from 0) of the document whose loss tripped the detector
    doc_id: str
    time: str | None  # the document's own time, if it has one
    detected_at: str  # wall clock, ISO 8601 UTC
    step: int  # the learner step that scored the document
    detector: str  # the detector's spec, e.g. "adwin" or "kswin:0.001:up"
    loss: float  # the document's loss, nats per token
    state: dict[str, float] = field(default_factory=dict)  # the detector's state at the time
    actions: tuple[str, ...] = ()  # what the policy did: rewarm, reset, boost

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers (JSON has none) become null."""

        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "index": self.index,
            "doc_id": self.doc_id,
            "time": self.time,
            "detected_at": self.detected_at,
            "step": self.step,
            "detector": self.detector,
            "loss": finite(self.loss),
            "state": {k: finite(v) for k, v in sorted(self.state.items())},
            "actions": list(self.actions),
        }


def post_event(url: str, event: DriftEvent, timeout: float) -> None:
    """POSTs the event as JSON; raises `OSError` (urllib's errors among them) on failure."""
    request = urllib.request.Request(
        url,
        data=json.dumps(event.to_dict()).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "livelm"},
        method="POST",
    )
    # PolicyConfig admits only http(s) URLs, so urlopen never reads a file: URL here.
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
