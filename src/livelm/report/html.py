"""`report.html`: the table of `metrics.json` and the curve, readable without a server."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from livelm.policy.monitor import EmergingTerm

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .35rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 .2rem; }
"""

_COLUMNS = [
    ("perplexity", "perplexity", "{:.2f}"),
    ("prequential_loss", "loss (nats/token)", "{:.4f}"),
    ("tokens_per_second", "tokens/s", "{:.1f}"),
    ("reference_loss_before", "reference loss before", "{:.4f}"),
    ("reference_loss_after", "reference loss after", "{:.4f}"),
    ("updates", "updates", "{}"),
]


def _cell(value: Any, fmt: str) -> str:
    return "&mdash;" if value is None else html.escape(fmt.format(value))


def write_html(
    path: Path,
    metrics: dict[str, Any],
    emerging: Sequence[EmergingTerm] = (),
    curve: str = "curve.png",
) -> None:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in _COLUMNS)
    rows = []
    for name, m in metrics["strategies"].items():
        cells = "".join(f"<td>{_cell(m.get(key), fmt)}</td>" for key, _, fmt in _COLUMNS)
        drifts = ", ".join(str(d) for d in m.get("drift_events", [])) or "none"
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}<td>{html.escape(drifts)}</td></tr>")
    stats = metrics.get("stream_stats", {})
    terms = ", ".join(
        f"<b>{html.escape(t.term)}</b> ({t.recent} recent, {t.earlier} earlier)" for t in emerging
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>livelm replay</title>
<style>{_STYLE}</style></head><body>
<h1>livelm replay</h1>
<p>Model <code>{html.escape(str(metrics["model"]))}</code>, stream
<code>{html.escape(str(metrics["stream"]))}</code>: {metrics["docs"]} documents,
{metrics["tokens"]} tokens. Left out of the stream: {stats.get("empty", 0)} empty,
{stats.get("bad", 0)} malformed.</p>
<p>Prequential: each document is scored under the weights before any update that used it.</p>
<table><tr><th>strategy</th>{head}<th>drift events</th></tr>
{"".join(rows)}
</table>
<img src="{html.escape(curve)}" alt="loss along the stream, one line per strategy">
<p>Emerging terms (documents holding them): {terms or "none yet"}. The most surprising
documents of each window are in <code>surprises.jsonl</code>, the drift events in full in
<code>metrics.json</code>.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
