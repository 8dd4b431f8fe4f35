"""Request and response bodies of `/v1/documents` and `/v1/score`.

Types are strict (a number is not a text); limits that depend on the server's settings (how
many documents, how long a text) are checked by the routes, which know the settings.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from livelm.source.queue import State

MAX_ID_CHARS = 256


def check_text(text: str) -> str:
    """A text must say something and be valid Unicode (JSON can carry lone surrogates)."""
    if not text.strip():
        raise ValueError("the text is empty; send some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text is not valid Unicode (a lone surrogate at {e.start})") from None
    return text


def _wrap(data: Any) -> Any:
    """Accept one document, a list of them, or `{"documents": [...]}`."""
    if isinstance(data, list):
        return {"documents": data}
    if not isinstance(data, dict):
        raise ValueError(
            'expected a document {"text": ...}, a list of them, or {"documents": [...]}, '
            f"not a JSON {type(data).__name__}"
        )
    if "documents" not in data and "text" in data:
        return {"documents": [data]}
    return data


def finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity: a non-finite number is sent as null."""
    return x if x is not None and math.isfinite(x) else None


class DocumentIn(BaseModel):
    """A document; fields other than these four join its `meta`, as in stream files."""

    model_config = ConfigDict(extra="allow")

    text: StrictStr = Field(description="the text to learn from")
    id: StrictStr | StrictInt | None = Field(
        None, description="makes re-sends idempotent; default: a hash of the text"
    )
    time: StrictStr | None = Field(None, max_length=64, description="ISO date or timestamp")
    meta: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, str) and not (0 < len(v.strip()) <= MAX_ID_CHARS and v == v.strip()):
            raise ValueError(
                f"an id is 1 to {MAX_ID_CHARS} characters without surrounding whitespace"
            )
        return v

    def merged_meta(self) -> dict[str, Any]:
        return {**(self.model_extra or {}), **(self.meta or {})}


class IngestRequest(BaseModel):
    """One document, a list, or `{"documents": [...]}`."""

    documents: list[DocumentIn] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: Any) -> Any:
        return _wrap(data)


class DocumentReceipt(BaseModel):
    id: str
    seq: int = Field(description="its position in the stream")
    state: State
    duplicate: bool = Field(description="already stored before this request: nothing written")


class IngestResponse(BaseModel):
    accepted: int = Field(description="documents newly stored, durably, by this request")
    duplicates: int
    documents: list[DocumentReceipt]


class DocumentStatusOut(BaseModel):
    id: str
    seq: int
    state: State
    version: int | None = Field(description="the version that first holds it (learned)")
    loss: float | None = Field(description="its prequential loss when learned, nats/token")
    reason: str | None = Field(description="why it was rejected")
    time: str | None
    accepted_at: float = Field(description="Unix time it was stored")
    done_at: float | None = Field(description="Unix time it was learned or rejected")


class ScoreDocumentIn(BaseModel):
    text: StrictStr
    id: StrictStr | StrictInt | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class ScoreRequest(BaseModel):
    """One document, a list, or `{"documents": [...]}`; nothing is stored or learned."""

    documents: list[ScoreDocumentIn] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: Any) -> Any:
        return _wrap(data)


class DocumentScore(BaseModel):
    id: str
    tokens: int = Field(description="predicted tokens")
    loss: float | None = Field(description="mean negative log-likelihood, nats per token")
    perplexity: float | None = Field(description="exp(loss)")
    surprise: float | None = Field(
        description="the loss as a z-score against the stream's running loss (how much less "
        "expected than the documents the server learns from); null until enough are learned"
    )


class ScoreResponse(BaseModel):
    model: str
    version: int = Field(description="the version that scored every document")
    documents: list[DocumentScore]
