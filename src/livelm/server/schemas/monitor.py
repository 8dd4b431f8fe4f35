"""Response bodies of `/v1/monitor/*`: what the learner saw while it learned (the dashboard's
data). Every float is finite or null (JSON has no NaN)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SurpriseItem(BaseModel):
    id: str
    time: str | None = Field(description="the document's own time, if it has one")
    text: str = Field(description="its first 500 characters")
    meta: dict[str, Any]
    loss: float = Field(description="its prequential loss, nats per token")
    surprise: float = Field(description="the loss as a z-score against the stream's running loss")
    version: int = Field(description="the live version when the learner scored it")
    index: int = Field(description="its position among the documents this learner stepped on")
    at: float = Field(description="when it was scored, unix seconds")


class SurpriseList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SurpriseItem] = Field(description="most surprising first")


class TermItem(BaseModel):
    term: str
    score: float = Field(description="log of its recent share over its earlier share")
    recent: int = Field(description="recent documents that hold it")
    earlier: int = Field(description="earlier documents that held it")
    documents: list[str] = Field(description="ids of up to 5 recent documents holding it")


class TermList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TermItem] = Field(description="fastest rising first")


class DriftItem(BaseModel):
    """A drift event as the learner's detector reported it, and what it held."""

    model_config = ConfigDict(extra="allow")

    detector: str
    doc_index: int = Field(description="stream index (from 0) of the document that tripped it")
    doc_id: str
    time: str | None = Field(description="that document's own time, if it has one")
    signal: float | None = Field(description="the document's loss the detector watched (nats)")
    at: float = Field(description="when it was detected, unix seconds")
    version: int = Field(description="the live version at the time")


class DriftList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DriftItem] = Field(description="newest first")


class TimelinePoint(BaseModel):
    step: int
    docs: int = Field(description="documents the learner stepped on so far")
    time: str | None = Field(description="stream time of the step's last document, or null")
    at: float = Field(description="wall clock, unix seconds")
    stream_loss: float | None = Field(description="token-weighted loss of the step's documents")
    version: int = Field(description="the live version the step's documents were scored under")
    tokens: int


class TimelineVersion(BaseModel):
    version: int
    at: float = Field(description="when it was written, unix seconds")
    stream_loss: float | None
    canary_loss: float | None
    documents: int | None = None


EventKind = Literal["publish", "refused", "rollback", "drift"]


class TimelineEvent(BaseModel):
    kind: EventKind
    at: float
    version: int = Field(description="the version made live, or the live one at the time")
    docs: int = Field(description="publish/refused: documents in the candidate; else so far")
    detail: str


class Timeline(BaseModel):
    points: list[TimelinePoint] = Field(description="one per learning step, oldest first")
    versions: list[TimelineVersion] = Field(description="versions that went live, oldest first")
    events: list[TimelineEvent] = Field(description="oldest first")


class Stats(BaseModel):
    live_version: int
    live_age_s: float = Field(description="seconds since the live version was written")
    queue_depth: int = Field(description="documents waiting for the learner")
    docs_per_s: float = Field(description="documents stepped on per second, over the last minute")
    tokens_per_s: float = Field(description="tokens stepped on per second, over the last minute")
    learned_docs: int = Field(description="documents the learner stepped on since it started")
    published_docs: int = Field(description="... of which in published versions")
    learning: bool = Field(description="the learner runs, and has documents or just stepped")
    drift_events: int
    trouble: str | None = Field(description="why the learner is not ready, if it is not")
