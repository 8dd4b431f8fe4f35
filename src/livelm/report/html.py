"""`report.html`: what `metrics.json` holds, the curve, the per-group breakdown, the most
surprising documents and the command that made it; one file, readable without a server.

A report written while the replay runs refreshes itself every 30 seconds in a browser.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from livelm.policy.monitor import EmergingTerm

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222;
       padding: 0 1rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .35rem .7rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; max-width: 40rem; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; }
code, pre { background: #f3f3f3; padding: 0 .2rem; }
pre { padding: .5rem; overflow-x: auto; white-space: pre-wrap; }
.status { border-left: 4px solid #d08000; background: #fff6e5; padding: .5rem 1rem; }
.note { color: #555; }
"""

_COLUMNS = [
    ("docs", "documents", "{}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("prequential_loss", "loss (nats/token)", "{:.4f}"),
    ("loss_minus_static", "minus static", "{:+.4f}"),
    ("tokens_per_second", "tokens/s", "{:.1f}"),
    ("reference_loss_before", "reference loss before", "{:.4f}"),
    ("reference_loss_after", "reference loss after", "{:.4f}"),
    ("updates", "updates", "{}"),
]

SURPRISES_SHOWN = 10  # per strategy


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&mdash;"
    return html.escape(fmt.format(value))


def _e(value: Any) -> str:
    return html.escape(str(value))


def _strategies_table(metrics: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in _COLUMNS)
    rows = []
    for name, m in metrics["strategies"].items():
        cells = "".join(f"<td>{_cell(m.get(key), fmt)}</td>" for key, _, fmt in _COLUMNS)
        drifts = ", ".join(str(d) for d in m.get("drift_events", [])) or "none"
        rows.append(f"<tr><td>{_e(name)}</td>{cells}<td>{_e(drifts)}</td></tr>")
    return f"<table><tr><th>strategy</th>{head}<th>drift events</th></tr>{''.join(rows)}</table>"


def _groups_table(metrics: Mapping[str, Any]) -> str:
    field = metrics.get("group_by")
    if not field:
        return ""
    strategies = {n: m.get("groups") or {} for n, m in metrics["strategies"].items()}
    order: list[str] = []
    for groups in strategies.values():
        order += [g for g in groups if g not in order]
    head = "".join(f"<th>{_e(n)}<br>loss / perplexity</th>" for n in strategies)
    rows = []
    for group in order:
        found = [groups[group] for groups in strategies.values() if group in groups]
        docs = max(f["docs"] for f in found)
        cells = "".join(
            "<td>{} / {}</td>".format(
                _cell(groups.get(group, {}).get("prequential_loss"), "{:.4f}"),
                _cell(groups.get(group, {}).get("perplexity"), "{:.2f}"),
            )
            for groups in strategies.values()
        )
        rows.append(f"<tr><td>{_e(group)}</td><td>{docs}</td>{cells}</tr>")
    return f"""<h2>By {_e(field)}</h2>
<p class="note">Token-weighted prequential loss of each value of the documents'
<code>{_e(field)}</code> field, per strategy (the 30 largest groups; the rest as
<code>(other)</code>).</p>
<table><tr><th>{_e(field)}</th><th>documents</th>{head}</tr>{"".join(rows)}</table>"""


def _surprises(surprises: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    blocks = []
    for n, (name, found) in enumerate(surprises.items()):
        top = sorted(found, key=lambda s: -float(s["surprise"]))[:SURPRISES_SHOWN]
        if not top:
            continue
        rows = "".join(
            f"<tr><td>{s['index']}</td><td>{_e(s.get('time') or '')}</td><td>{_e(s['id'])}</td>"
            f"<td>{s['loss']:.3f}</td><td>{s['surprise']:+.2f}</td>"
            f'<td class="text">{_e(s["text"])}</td></tr>'
            for s in top
        )
        blocks.append(
            f"<details{' open' if n == 0 else ''}><summary>{_e(name)}</summary><table>"
            "<tr><th>document</th><th>time</th><th>id</th><th>loss</th><th>surprise (z)</th>"
            f"<th>text</th></tr>{rows}</table></details>"
        )
    if not blocks:
        return (
            "<h2>Most surprising documents</h2><p>None yet: surprise is scored once the "
            "running loss has warmed up on the first documents.</p>"
        )
    return f"""<h2>Most surprising documents</h2>
<p class="note">A document's surprise is its loss as a z-score against the stream's running loss
under that strategy; the most surprising of each window are in <code>surprises.jsonl</code>.</p>
{"".join(blocks)}"""


def _provenance(metrics: Mapping[str, Any]) -> str:
    command = metrics.get("command")
    options = metrics.get("options") or {}
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(json.dumps(v))}</td></tr>" for k, v in options.items()
    )
    configs = "".join(
        f"<details><summary>{_e(name)}</summary><pre>"
        f"{_e(json.dumps(m.get('config'), indent=2, sort_keys=True))}</pre></details>"
        for name, m in metrics["strategies"].items()
    )
    made = f"<pre>{_e(command)}</pre>" if command else "<p>(run from Python, not the CLI)</p>"
    return f"""<h2>How this report was made</h2>
{made}
<p>livelm {_e(metrics.get("livelm_version", "?"))}, started {_e(metrics.get("started", "?"))}.
Each strategy's configuration:</p>
{configs}
<table><tr><th>option</th><th>value</th></tr>{rows}</table>"""


def write_html(
    path: Path,
    metrics: dict[str, Any],
    emerging: Sequence[EmergingTerm] = (),
    curve: str = "curve.png",
    surprises: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> None:
    """`surprises`: per strategy, the documents of `surprises.jsonl` (dicts of `Surprise`)."""
    stats = metrics.get("stream_stats", {})
    status = metrics.get("status", "complete")
    note = (metrics.get("progress") or {}).get("note")
    banner = f'<p class="status">{_e(note)}</p>' if note else ""
    refresh = '<meta http-equiv="refresh" content="30">' if status == "running" else ""
    terms = ", ".join(
        f"<b>{_e(t.term)}</b> ({t.recent} recent, {t.earlier} earlier)" for t in emerging
    )
    axis = (
        "stream time"
        if metrics.get("x_axis") == "time"
        else "document index (the documents' times are missing or out of order)"
    )
    static = metrics.get("static")
    minus = (
        f"The lower panel is each strategy's per-document loss minus <code>{_e(static)}</code>'s "
        "on the same documents (below zero: it predicted the stream better)."
        if static
        else "Run with <code>static</code> among the strategies to see each one minus static."
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>livelm replay</title>
<style>{_STYLE}</style></head><body>
<h1>livelm replay</h1>
{banner}
<p>Model <code>{_e(metrics["model"])}</code>, stream
<code>{_e(metrics["stream"])}</code>: {metrics["docs"]} documents,
{metrics["tokens"]} tokens. Left out of the stream: {stats.get("empty", 0)} empty,
{stats.get("bad", 0)} malformed.</p>
<p>Prequential: each document is scored under the weights before any update that used it.
Each document's loss under every strategy is in <code>docs.jsonl</code>.</p>
{_strategies_table(metrics)}
<img src="{_e(curve)}" alt="loss along the stream, one line per strategy">
<p class="note">Against {axis}. {minus}</p>
{_groups_table(metrics)}
{_surprises(surprises or {})}
<h2>Emerging terms</h2>
<p>Documents holding them: {terms or "none yet"}. The drift events in full are in
<code>metrics.json</code>.</p>
{_provenance(metrics)}
</body></html>
"""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
