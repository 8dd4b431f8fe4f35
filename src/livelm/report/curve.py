"""`curve.png`: the prequential loss along the stream, one smoothed line per strategy, and each
strategy minus static below it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

from livelm.report.docs import differences
from livelm.report.metrics import StrategyResult


def smooth(losses: Sequence[float], tokens: Sequence[int], window: int) -> list[float]:
    """Token-weighted trailing mean of per-document losses over `window` documents."""
    out: list[float] = []
    nll = 0.0
    count = 0
    queue: list[tuple[float, int]] = []
    for loss, n in zip(losses, tokens, strict=True):
        item = (loss * n, n) if n and math.isfinite(loss) else (0.0, 0)
        queue.append(item)
        nll += item[0]
        count += item[1]
        if len(queue) > window:
            old = queue.pop(0)
            nll -= old[0]
            count -= old[1]
        out.append(nll / count if count else math.nan)
    return out


def plot_curves(
    path: Path,
    results: Sequence[StrategyResult],
    title: str,
    *,
    times: Sequence[datetime] | None = None,
    baseline: StrategyResult | None = None,
) -> None:
    """The loss along the stream, one line per strategy, drift events marked; against the
    documents' stream time when `times` gives one per document, else the document index.

    With a `baseline` (static), a second panel shows each other strategy's per-document loss
    minus the baseline's on the same documents (below zero: it predicted the stream better).
    """
    others = [r for r in results if baseline is not None and r is not baseline and r.tally.docs]
    rows = 2 if others else 1
    fig, axes = plt.subplots(
        rows,
        1,
        figsize=(10, 5 if rows == 1 else 8),
        dpi=110,
        sharex=True,
        squeeze=False,
        height_ratios=[3, 2][:rows],
    )
    ax = axes[0][0]
    docs = max((r.tally.docs for r in results), default=0)
    window = max(1, docs // 40)

    def x_of(index: int) -> Any:
        """Where document `index` (0-based) sits on the x axis."""
        return times[index] if times is not None else index + 1

    colors: dict[str, Any] = {}
    for r in results:
        line = smooth(r.tally.doc_losses, r.tally.doc_tokens, window)
        (drawn,) = ax.plot(
            [x_of(i) for i in range(len(line))],
            line,
            label=f"{r.name} (ppl {r.tally.perplexity:.1f})",
        )
        colors[r.name] = drawn.get_color()
        for i, event in enumerate(e for e in r.drift_events if e < len(line)):
            ax.axvline(
                x_of(event),
                color=drawn.get_color(),
                linestyle=":",
                alpha=0.7,
                label=f"{r.name}: drift" if i == 0 else None,
            )
    ax.set_ylabel(f"loss, nats/token\n(trailing mean of {window} documents)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if others and baseline is not None:
        gx = axes[1][0]
        for r in others:
            diffs = differences(r.tally, baseline.tally)
            curve = smooth([d for _, d, _ in diffs], [n for *_, n in diffs], window)
            gx.plot([x_of(i) for i, *_ in diffs], curve, color=colors[r.name], label=r.name)
        gx.axhline(0.0, color="black", linewidth=0.8)
        gx.set_ylabel(f"minus {baseline.name}, nats/token\n(below 0: better)")
        gx.grid(alpha=0.3)
        gx.legend()
    bottom = axes[-1][0]
    bottom.set_xlabel("stream time" if times is not None else "document")
    if times is not None:
        fig.autofmt_xdate()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")  # then renamed: a reader never sees half a file
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
