"""Write a replay's report, whole, from what it has scored so far.

A replay calls `write_report` every few hundred documents and once at the end (or when it is
stopped), so the files always describe the same documents: `docs.jsonl`, `surprises.jsonl`,
`emerging_terms.json`, `curve.png`, `report.html`, then `metrics.json`. Each file is written to a
temporary name and renamed: a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livelm.policy.monitor import EmergingTerms
from livelm.report.curve import plot_curves
from livelm.report.docs import DocRecord, docs_lines, group_figures, mean_difference, stream_times
from livelm.report.html import write_html
from livelm.report.metrics import StrategyResult, build_metrics, write_metrics


@dataclass
class ReportInput:
    """What a replay has at hand: the strategies started (in order; the running one with its
    figures so far), a record of each document read, and what the report says about the run."""

    model: str
    stream: str
    results: list[StrategyResult]
    records: Sequence[DocRecord]
    stream_stats: dict[str, Any]
    surprises: list[dict[str, Any]]  # surprises.jsonl's lines: strategy, window, rank, Surprise
    emerging: EmergingTerms
    group_by: str | None = None
    baseline: str | None = None  # the strategy the others are compared with: static
    extra: dict[str, Any] = field(default_factory=dict)  # status, progress, command, options


def write_text(path: Path, text: str) -> None:
    """Written to a temporary name, then renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(out: Path, given: ReportInput) -> dict[str, Any]:
    """Every report file into `out`; returns the metrics written to `metrics.json`."""
    baseline = next((r for r in given.results if r.name == given.baseline), None)
    for r in given.results:
        if given.group_by is not None:
            r.groups = group_figures(given.records, r.tally)
        if baseline is not None and r is not baseline:
            r.loss_minus_static = mean_difference(r.tally, baseline.tally)
    scored = max((r.tally.docs for r in given.results), default=0)
    times = stream_times(given.records[:scored])
    metrics = build_metrics(
        given.model,
        given.stream,
        given.results,
        given.stream_stats,
        {
            **given.extra,
            "group_by": given.group_by,
            "static": baseline.name if baseline is not None else None,
            "x_axis": "time" if times is not None else "index",
        },
    )
    write_text(
        out / "docs.jsonl", docs_lines(given.records, [(r.name, r.tally) for r in given.results])
    )
    write_text(out / "surprises.jsonl", "".join(json.dumps(s) + "\n" for s in given.surprises))
    write_text(out / "emerging_terms.json", json.dumps(given.emerging.to_dict(), indent=2) + "\n")
    title = f"{given.model} on {Path(given.stream).name if given.stream != '-' else 'stdin'}"
    if metrics.get("status", "complete") != "complete":
        title += f" ({metrics['status']}: {scored} documents so far)"
    plot_curves(out / "curve.png", given.results, title, times=times, baseline=baseline)
    by_strategy: dict[str, list[dict[str, Any]]] = {r.name: [] for r in given.results}
    for s in given.surprises:
        by_strategy.setdefault(s["strategy"], []).append(s)
    write_html(out / "report.html", metrics, given.emerging.top(10), surprises=by_strategy)
    write_metrics(out / "metrics.json", metrics)
    return metrics
