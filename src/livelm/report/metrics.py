"""`metrics.json`, the replay contract other tools read (see DESIGN.md)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livelm.learner.prequential import Tally


@dataclass
class StrategyResult:
    """One strategy's run over the stream."""

    name: str
    tally: Tally
    config: dict[str, Any]
    reference_loss_before: float | None = None
    reference_loss_after: float | None = None
    # (documents read, reference loss) along the stream, with `--reference-every`
    reference_curve: list[tuple[int, float]] = field(default_factory=list)
    drift_events: list[int] = field(default_factory=list)  # the stream index of each drift
    drift: list[dict[str, Any]] = field(default_factory=list)  # each drift event in full
    policy_stats: dict[str, Any] = field(default_factory=dict)  # counts: replayed docs, ...
    # The token each chunk started with: {token, id, rule} (see livelm.learner.encoding).
    boundary: dict[str, Any] | None = None
    # The seconds the strategy's own work took, when not the tally's wall clock: strategies run
    # side by side share the clock, and the time spent writing partial reports is not theirs.
    seconds: float | None = None
    status: str = "complete"  # or "running", "interrupted": the figures cover `tally.docs`
    groups: dict[str, dict[str, Any]] | None = None  # per `--group-by` value (report.docs)
    loss_minus_static: float | None = None  # token-weighted, over documents both scored

    def metrics(self) -> dict[str, Any]:
        t = self.tally
        seconds = t.seconds if self.seconds is None else self.seconds
        return {
            "prequential_loss": _finite(t.loss),
            "perplexity": _finite(t.perplexity),
            "tokens_per_second": round(t.tokens / seconds, 2) if seconds > 0 else 0.0,
            "reference_loss_before": _finite(self.reference_loss_before),
            "reference_loss_after": _finite(self.reference_loss_after),
            "reference_curve": [[docs, _finite(loss)] for docs, loss in self.reference_curve],
            "drift_events": list(self.drift_events),
            "drift": list(self.drift),
            **self.policy_stats,
            "status": self.status,
            "loss_minus_static": _finite(self.loss_minus_static),
            **({} if self.groups is None else {"groups": self.groups}),
            "docs": t.docs,
            "tokens": t.tokens,
            "seconds": round(seconds, 3),
            "steps": t.steps,
            "updates": t.updates,
            "skipped_updates": dict(t.skipped),
            "boundary": self.boundary,
            "config": self.config,
        }


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: a missing or non-finite figure is null."""
    return x if x is not None and math.isfinite(x) else None


def build_metrics(
    model: str,
    stream: str,
    results: list[StrategyResult],
    stream_stats: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The contract's fields, then `extra` (the replay's status, command and options)."""
    first = results[0].tally if results else None
    return {
        "model": model,
        "stream": stream,
        "docs": first.docs if first else 0,
        "tokens": first.tokens if first else 0,
        "stream_stats": stream_stats,
        "strategies": {r.name: r.metrics() for r in results},
        **(extra or {}),
    }


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Written to a temporary name, then renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
