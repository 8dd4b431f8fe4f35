"""Spans and ages, counted in documents or in stream time.

A window (`--window 500`, `--window 30d`) and a half-life (`--half-life 1000`, `--half-life 90d`)
are spans. A bare number counts documents; a number with a unit (s, m, h, d, w) is stream time:
the documents' own `time` field, so that replaying 2018 news ages it as 2018 news. A document
without a parsable time takes the wall clock when it arrives.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from livelm.document import Document

SpanUnit = Literal["docs", "seconds"]

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SPEC = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Span:
    """`amount` documents, or `amount` seconds of stream time.

    >>> Span.parse("30d")
    Span(amount=2592000.0, unit='seconds')
    >>> str(Span.parse("500"))
    '500'
    """

    amount: float
    unit: SpanUnit = "docs"

    def __post_init__(self) -> None:
        if not (self.amount > 0 and math.isfinite(self.amount)):
            raise ValueError(f"a span must be a positive number, not {self.amount}")
        if self.unit == "docs" and self.amount != int(self.amount):
            raise ValueError(f"a span in documents must be a whole number, not {self.amount}")

    @classmethod
    def parse(cls, spec: str) -> Span:
        match = _SPEC.match(spec.lower())
        if match is None or match.group(2) not in ("", *_UNITS):
            raise ValueError(
                f"{spec!r} is not a span: give documents (500) or time (90s, 30m, 12h, 7d, 2w)"
            )
        amount, unit = float(match.group(1)), match.group(2)
        if not unit:
            return cls(amount, "docs")
        return cls(amount * _UNITS[unit], "seconds")

    @property
    def in_time(self) -> bool:
        return self.unit == "seconds"

    def __str__(self) -> str:
        if not self.in_time:
            return f"{self.amount:g}"
        for suffix, seconds in _UNITS.items():  # the largest unit that divides it exactly
            if self.amount % seconds == 0:
                return f"{self.amount / seconds:g}{suffix}"
        return f"{self.amount:g}s"


def stream_time(doc: Document) -> float:
    """Seconds since the epoch of the document's `time` (naive times are UTC), else of now."""
    if doc.time:
        try:
            parsed = datetime.fromisoformat(doc.time)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    return time.time()
