"""Scoring and generation on a serving version.

Scores use the learner's encoding (a boundary token, then the text in window-sized chunks) and
its loss (mean next-token cross-entropy, nats per token), so a document's score here is the
score the learner would give it under the same weights. Scores and generations run in the
process's engine (`livelm.server.engine`), packed and batched with the other requests'; the
engine streams token ids back, and the caller reads text pieces as they come.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document
from livelm.learner import EncodedDocument, Encoder
from livelm.learner.packing import count_nothing
from livelm.server.engine import END, Engine
from livelm.server.engine import Sampling as Sampling  # the routes' import
from livelm.server.versions import ServingVersion


class Codec:
    """The serving threads' tokenizer, used one call at a time (a fast tokenizer is not
    re-entrant); the learner thread has its own."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_tokens: int, boundary: str = "auto"
    ) -> None:
        self.tokenizer = tokenizer
        # The learner's chunking and boundary token (`LearnerConfig.boundary`), for scores.
        self.encoder = Encoder(tokenizer, max_tokens, boundary)
        self._lock = threading.Lock()

    def document(self, doc: Document) -> EncodedDocument:
        with self._lock:
            return self.encoder.encode(doc)

    def encode(self, text: str) -> list[int]:
        with self._lock:
            ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The model's chat template, or plain `role: content` lines where it has none."""
        if self.has_chat_template:
            with self._lock:
                rendered = self.tokenizer.apply_chat_template(
                    list(messages), tokenize=False, add_generation_prompt=True
                )
            return str(rendered)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])


class TokenLimitError(Exception):
    """Documents 0 to `index` already hold `tokens` predicted tokens, past `limit`."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"documents 0 to {index} hold {tokens} tokens, past {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


def encode_within(codec: Codec, docs: Sequence[Document], limit: int) -> list[EncodedDocument]:
    """The documents encoded for scoring; `TokenLimitError` as soon as they pass `limit`
    predicted tokens, so a request past it costs the tokenizing of `limit` tokens, not all."""
    encoded: list[EncodedDocument] = []
    total = 0
    for i, doc in enumerate(docs):
        encoded.append(codec.document(doc))
        total += encoded[-1].tokens
        if total > limit:
            raise TokenLimitError(i, total, limit)
    return encoded


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Piece:
    """New text; the last piece of a generation carries its finish reason."""

    text: str
    finish_reason: FinishReason | None = None


class Generation:
    """A generation running in the engine; iterate it for `Piece`s.

    `cancel()` (a client gone, a stop string seen) ends it at the engine's next step.
    """

    def __init__(
        self,
        engine: Engine,
        version: ServingVersion,
        codec: Codec,
        prompt_ids: list[int],
        sampling: Sampling,
        on_tokens: Callable[[int], None] = count_nothing,
    ) -> None:
        self.version = version
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self._codec = codec
        self._sampling = sampling
        self._eos = set(engine.eos_ids)
        self._sequence = engine.submit(version, prompt_ids, sampling, on_tokens)
        self._tokens = self._sequence.tokens

    def cancel(self) -> None:
        self._sequence.cancel()

    def __iter__(self) -> Iterator[Piece]:
        stops = self._sampling.stop
        # Text that could still become a stop string is held back until it cannot.
        hold = max((len(s) for s in stops), default=1) - 1
        tokens: list[int] = []
        sent = 0
        reason: FinishReason = "length"
        try:
            while True:
                item = self._tokens.get()
                if item is END:
                    break
                if isinstance(item, BaseException):
                    raise item
                tokens.append(item)
                self.completion_tokens = len(tokens)
                if item in self._eos:
                    reason = "stop"
                text = self._codec.decode(tokens)
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    self.cancel()
                    yield Piece(text[sent:cut], "stop")
                    return
                ready = len(text) - hold
                if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    ready = min(ready, len(text) - 1)
                if ready > sent:
                    yield Piece(text[sent:ready])
                    sent = ready
            if len(tokens) < self._sampling.max_tokens:
                reason = "stop"
            yield Piece(self._codec.decode(tokens)[sent:], reason)
        finally:
            self.cancel()
