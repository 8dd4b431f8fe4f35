"""`curve.png`: the prequential loss along the stream, one smoothed line per strategy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

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


def plot_curves(path: Path, results: Sequence[StrategyResult], title: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    docs = max((r.tally.docs for r in results), default=0)
    window = max(1, docs // 40)
    for r in results:
        line = smooth(r.tally.doc_losses, r.tally.doc_tokens, window)
        (drawn,) = ax.plot(
            range(1, len(line) + 1), line, label=f"{r.name} (ppl {r.tally.perplexity:.1f})"
        )
        for i, event in enumerate(r.drift_events):
            ax.axvline(
                event + 1,
                color=drawn.get_color(),
                linestyle=":",
                alpha=0.7,
                label=f"{r.name}: drift" if i == 0 else None,
            )
    ax.set_xlabel("document")
    ax.set_ylabel(f"loss, nats/token (trailing mean of {window} documents)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
