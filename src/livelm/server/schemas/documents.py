"""Request and response bodies of `/v1/documents` and `/v1/score`.

Types are strict (a number is not a text); limits that depend on the server's settings (how
many documents, how long a text) are checked by the routes, which know the settings.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
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


def check_unicode(text: str) -> str:
    """A string must be valid Unicode: JSON's `\\ud800` escapes can carry lone surrogates,
    which no tokenizer, database or response encoder takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode (a lone surrogate at {e.start})") from None
    return text


def check_text(text: str) -> str:
    """A text must say something and be valid Unicode."""
    if not text.strip():
        raise ValueError("the text is empty; send some text")
    try:
        return check_unicode(text)
    except ValueError as e:
        raise ValueError(f"the text is {e}") from None


def _no_controls(text: str, what: str) -> str:
    """Ids and times are one-line labels: a control character (a newline) has no place in one,
    and in a log line it would forge the next."""
    bad = next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"{what} has a control character at {bad} (U+{ord(text[bad]):04X})")
    return text


def check_id(v: str | int | None) -> str | int | None:
    if v is None:
        return v
    text = check_unicode(v) if isinstance(v, str) else str(v)
    if not (0 < len(text.strip()) <= MAX_ID_CHARS and text == text.strip()):
        raise ValueError(f"an id is 1 to {MAX_ID_CHARS} characters without surrounding whitespace")
    _no_controls(text, "the id")
    return v


def check_json(value: Any, where: str) -> None:
    """Free-form JSON (meta) must hold valid Unicode and finite numbers (Python's JSON parser
    takes NaN and Infinity, which no JSON reader downstream does)."""
    if isinstance(value, str):
        try:
            check_unicode(value)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a JSON number")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_json(k, f"{where} (a key)")
            check_json(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json(v, f"{where}.{i}")


Unicode = Annotated[StrictStr, AfterValidator(check_unicode)]
DocumentId = Annotated[StrictStr | StrictInt | None, AfterValidator(check_id)]


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
    id: DocumentId = Field(
        None, description="makes re-sends idempotent; default: a hash of the text"
    )
    time: Unicode | None = Field(None, max_length=64, description="ISO date or timestamp")
    meta: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        return None if v is None else _no_controls(v, "the time")

    @model_validator(mode="after")
    def _meta(self) -> DocumentIn:
        check_json(self.merged_meta(), "meta")
        return self

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
    id: DocumentId = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class ScoreRequest(BaseModel):
    """One document, a list, or `{"documents": [...]}`; nothing is stored or learned."""

    documents: list[ScoreDocumentIn] = Field(min_length=1)
    model: Unicode | None = Field(
        None, description="livelm@N: score with kept version N; default: the live version"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data and "documents" not in data:
            # One document with the request's model beside it: {"text": ..., "model": ...}.
            doc = {k: v for k, v in data.items() if k != "model"}
            return {**_wrap(doc), "model": data["model"]}
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
