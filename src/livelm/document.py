"""The unit of a stream: a document with an id, its text, an optional time and free metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def content_id(text: str) -> str:
    """A stable id for a document that came without one: the first 16 hex of its sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Document:
    """`id` makes ingestion idempotent; `time` is an ISO date or timestamp when known."""

    text: str
    id: str = ""
    time: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"document text must be a string, not {type(self.text).__name__}")
        if not self.id:
            object.__setattr__(self, "id", content_id(self.text))
