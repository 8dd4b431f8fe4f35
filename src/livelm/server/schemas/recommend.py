"""Request and response bodies of `/v1/recommend` and the OpenAI-compatible `/v1/embeddings`.

An item of a history or of the candidates is a text (`"..."`), a document the server stores
(`{"id": "..."}`), or a text with an id of the caller's (`{"text": "...", "id": "..."}`).
Limits that depend on the server's settings (how many items, how long a text) are checked by
the routes, which know the settings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr, field_validator, model_validator

from livelm.recommend.config import DEFAULT_METHOD, parse_method
from livelm.server.schemas.documents import DocumentId, Unicode, check_text
from livelm.server.schemas.openai import _listed


class ItemIn(BaseModel):
    """A text, or a stored document named by `id` (a text with an id is the caller's own)."""

    text: StrictStr | None = None
    id: DocumentId = None

    @model_validator(mode="before")
    @classmethod
    def _text_alone(cls, data: Any) -> Any:
        return {"text": data} if isinstance(data, str) else data

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return None if v is None else check_text(v)

    @model_validator(mode="after")
    def _one(self) -> ItemIn:
        if self.text is None and self.id is None:
            raise ValueError('give a text, or the id of a stored document ({"id": "..."})')
        return self


class RecommendRequest(BaseModel):
    history: list[ItemIn] = Field(
        min_length=1, description="what the reader read, oldest first: texts or stored ids"
    )
    candidates: list[ItemIn] | None = Field(
        None,
        min_length=1,
        description="what to rank: texts or stored ids; default: the newest learned documents "
        "not in the history",
    )
    model: Unicode | None = Field(
        None, description="livelm@N: rank with kept version N; default: the live version"
    )
    method: Unicode = Field(
        DEFAULT_METHOD,
        description="pmi, pmi-mean, embed, tfidf, random, fused, or parts joined by + (fused "
        "by reciprocal rank)",
    )
    top_k: int | None = Field(10, ge=1, description="how many to return (null: all)")
    why: bool = Field(True, description="list the history items that raised each candidate")
    seed: int = Field(0, description="the random method's seed")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        parse_method(v)
        return v


class EvidenceOut(BaseModel):
    history: int = Field(description="the item's index in the request's history")
    id: str
    method: str
    value: float = Field(
        description="how much it raised the score: PMI of the candidate with this item alone "
        "(nats, or nats/token for pmi-mean), or a cosine similarity (embed, tfidf)"
    )


class RankedOut(BaseModel):
    rank: int
    id: str
    index: int | None = Field(description="its index in the request's candidates (if given)")
    text: str
    score: float = Field(description="the method's score (a fusion: its reciprocal rank sum)")
    scores: dict[str, float] = Field(description="each part's score")
    why: list[EvidenceOut]


class RecommendUsage(BaseModel):
    history: int = Field(description="history items")
    candidates: int = Field(description="candidates ranked")


class RecommendResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    version: int = Field(description="the version that ranked every candidate")
    method: str
    data: list[RankedOut]
    usage: RecommendUsage


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request: `input` is a string or a list of strings."""

    input: list[StrictStr] = Field(description="a string, or a list of strings")
    model: Unicode
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(
        None, description="must be the model's hidden size, if given"
    )
    user: StrictStr | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_list(cls, v: object) -> object:
        listed = _listed(v)
        if isinstance(listed, list) and listed and not all(isinstance(x, str) for x in listed):
            raise ValueError("give strings: token-id inputs are not supported")
        return listed

    @field_validator("input")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one string")
        for i, text in enumerate(v):
            try:
                check_text(text)
            except ValueError as e:
                raise ValueError(f"item {i}: {e}") from None
        return v


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of float32s")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
