"""Request and response bodies of the OpenAI-compatible routes (the subset livelm serves).

Fields clients commonly send that livelm does not use (`user`, `seed`, penalties, ...) are
accepted and ignored, as OpenAI-compatible servers do; fields whose meaning livelm cannot honour
(`n` > 1, token-id prompts) are refused with a 422 that names them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictStr, field_validator

from livelm.server.schemas.documents import Unicode, check_text, check_unicode

MAX_PROMPTS = 8
MAX_STOPS = 4


def _listed(v: object) -> object:
    """A single string stands for a list of one (OpenAI's `prompt` and `stop` take both)."""
    if v is None:
        return []
    return [v] if isinstance(v, str) else v


class _Sampling(BaseModel):
    model: Unicode
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 (or under 1e-5): greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="livelm returns one choice per prompt")
    stop: list[Unicode] = Field(
        default_factory=list, description="a string or up to 4; the text ends before one"
    )
    stream: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: object) -> object:
        return _listed(v)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_STOPS or not all(v):
            raise ValueError(f"give at most {MAX_STOPS} non-empty stop strings")
        return v


class CompletionRequest(_Sampling):
    prompt: list[StrictStr] = Field(description=f"a string, or 1 to {MAX_PROMPTS} strings")
    max_tokens: int = Field(16, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_list(cls, v: object) -> object:
        return _listed(v)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        return [check_text(p) for p in v]


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    @field_validator("content")
    @classmethod
    def _unicode(cls, v: str | list[TextPart]) -> str | list[TextPart]:
        # Checked after the union is decided, so that an error names one reading of it.
        for i, text in enumerate([v] if isinstance(v, str) else [p.text for p in v]):
            try:
                check_unicode(text)
            except ValueError as e:
                raise ValueError(str(e) if isinstance(v, str) else f"part {i}: {e}") from None
        return v

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def new_tokens(self, limit: int) -> int:
        """Tokens asked for; without a number, 256 or the server's limit (--max-new-tokens)."""
        return self.max_completion_tokens or self.max_tokens or min(256, limit)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = Field(None, description="the version that answered")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "livelm"
    version: int = Field(description="the version it answers with (livelm: the live one)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
