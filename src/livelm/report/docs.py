"""Per-document figures: `docs.jsonl`, the per-group breakdown, strategy minus static, and the
stream time of each document.

A replay keeps one `DocRecord` per document it read (index, id, time, group) and each
strategy's `Tally` keeps the loss and token count of every document it scored, in stream order;
these functions join the two. A strategy that has not reached a document yet (the replay was
stopped, or is still running) has no figure for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from livelm.document import Document
from livelm.learner.prequential import Tally

NO_GROUP = "(none)"  # the group of a document without the field
OTHER_GROUP = "(other)"  # the groups past `MAX_GROUPS`, together
MAX_GROUPS = 30


@dataclass(frozen=True)
class DocRecord:
    """What the report needs of a document besides its scores."""

    index: int
    id: str
    time: str | None
    group: str | None = None  # the value of the `--group-by` field, when one is asked for

    @classmethod
    def of(cls, index: int, doc: Document, group_by: str | None) -> DocRecord:
        return cls(index, doc.id, doc.time, None if group_by is None else group_of(doc, group_by))


def group_of(doc: Document, field: str) -> str:
    """The document's value of a metadata field, as text (a list of tags joins with `|`).

    >>> group_of(Document("x", meta={"category": "POLITICS"}), "category")
    'POLITICS'
    >>> group_of(Document("x"), "category")
    '(none)'
    """
    value = doc.meta.get(field)
    if value is None or value == "":
        return NO_GROUP
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return str(value)


def parse_time(text: str | None) -> datetime | None:
    """An ISO date or timestamp (naive ones are UTC), or seconds since the epoch; else None.

    >>> parse_time("2020-03-01").isoformat()
    '2020-03-01T00:00:00+00:00'
    >>> parse_time("1583020800") == parse_time("2020-03-01T00:00:00Z")
    True
    >>> parse_time("last week") is None
    True
    """
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            seconds = float(text)
        except ValueError:
            return None
        if not math.isfinite(seconds):
            return None
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def stream_times(records: Sequence[DocRecord]) -> list[datetime] | None:
    """Each document's time, when every document has one that parses and the stream is in time
    order; else None (the report then plots against the document index).

    >>> stream_times([DocRecord(0, "a", "2020-01-01"), DocRecord(1, "b", "2020-02-01")])[1].month
    2
    >>> stream_times([DocRecord(0, "a", "2020-02-01"), DocRecord(1, "b", "2020-01-01")]) is None
    True
    """
    times: list[datetime] = []
    for record in records:
        t = parse_time(record.time)
        if t is None or (times and t < times[-1]):
            return None
        times.append(t)
    return times or None


def _scored(tally: Tally, index: int) -> tuple[float, int] | None:
    """(loss, tokens) of the document at `index`, when the tally scored it with a finite loss."""
    if index >= tally.docs:
        return None
    loss, tokens = tally.doc_losses[index], tally.doc_tokens[index]
    return (loss, tokens) if tokens and math.isfinite(loss) else None


def group_figures(records: Sequence[DocRecord], tally: Tally) -> dict[str, dict[str, Any]]:
    """Token-weighted loss and perplexity of each group, over the documents the tally scored.

    The `MAX_GROUPS` groups with the most documents are listed by name, in that order; the rest
    are summed as `(other)`.
    """
    sums: dict[str, list[float]] = {}  # group -> [docs, tokens, nll]
    for record in records[: tally.docs]:
        group = record.group if record.group is not None else NO_GROUP
        entry = sums.setdefault(group, [0, 0, 0.0])
        entry[0] += 1
        if (scored := _scored(tally, record.index)) is not None:
            entry[1] += scored[1]
            entry[2] += scored[0] * scored[1]
    ranked = sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0]))
    if len(ranked) > MAX_GROUPS:
        rest = ranked[MAX_GROUPS - 1 :]
        merged = [sum(v[i] for _, v in rest) for i in range(3)]
        ranked = [*ranked[: MAX_GROUPS - 1], (OTHER_GROUP, merged)]
    out: dict[str, dict[str, Any]] = {}
    for group, (docs, tokens, nll) in ranked:
        loss = nll / tokens if tokens else None
        out[group] = {
            "docs": int(docs),
            "tokens": int(tokens),
            "prequential_loss": loss,
            "perplexity": math.exp(loss) if loss is not None and loss < 700 else None,
        }
    return out


def differences(tally: Tally, baseline: Tally) -> list[tuple[int, float, int]]:
    """(index, loss minus the baseline's, tokens) of every document both scored."""
    out = []
    for index in range(min(tally.docs, baseline.docs)):
        mine, theirs = _scored(tally, index), _scored(baseline, index)
        if mine is not None and theirs is not None:
            out.append((index, mine[0] - theirs[0], mine[1]))
    return out


def mean_difference(tally: Tally, baseline: Tally) -> float | None:
    """Token-weighted mean of the per-document loss difference (nats/token); negative: the
    strategy predicted the stream better than the baseline did. None without a common document.
    """
    diffs = differences(tally, baseline)
    tokens = sum(n for *_, n in diffs)
    return sum(d * n for _, d, n in diffs) / tokens if tokens else None


def docs_lines(records: Sequence[DocRecord], tallies: Iterable[tuple[str, Tally]]) -> str:
    """`docs.jsonl`: one line per document some strategy scored, with each strategy's loss
    (null for a loss that was not finite; absent for a strategy that has not reached it)."""
    named = list(tallies)
    reached = max((t.docs for _, t in named), default=0)
    lines = []
    for record in records[:reached]:
        i = record.index
        losses = {
            name: (t.doc_losses[i] if math.isfinite(t.doc_losses[i]) else None)
            for name, t in named
            if i < t.docs
        }
        tokens = next(t.doc_tokens[i] for _, t in named if i < t.docs)
        line: dict[str, Any] = {"index": i, "id": record.id, "time": record.time}
        if record.group is not None:
            line["group"] = record.group
        line["tokens"] = tokens
        line["loss"] = losses
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    return "".join(lines)
