"""Scoring and generation on a serving version.

Scores use the learner's encoding (a boundary token, then the text in window-sized chunks) and
its loss (mean next-token cross-entropy, nats per token), so a document's score here is the
score the learner would give it under the same weights. Generation runs in the process's
engine (`livelm.server.engine`), batched with the other requests' generations; the engine
streams token ids back, and the caller reads text pieces as they come.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document
from livelm.learner import DocScore, EncodedDocument, Encoder
from livelm.learner.packing import Cancelled, pack, token_nll
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


def _never() -> bool:
    return False


def _ignore(tokens: int) -> None:
    pass


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


def score_documents(
    version: ServingVersion,
    docs: Sequence[EncodedDocument],
    pad_id: int,
    token_budget: int,
    row_tokens: int,
    *,
    cancelled: Callable[[], bool] = _never,
    on_tokens: Callable[[int], None] = _ignore,
) -> list[DocScore]:
    """Each document's mean NLL under `version`, its chunks packed as the learner packs them.

    `cancelled()` is asked before each micro-batch: once true, `Cancelled` is raised there, so a
    client that left stops its work within one micro-batch. `on_tokens` counts each one's tokens.
    """
    chunks = [c for d in docs for c in d.chunks]
    owner_doc = torch.tensor([i for i, d in enumerate(docs) for _ in d.chunks], dtype=torch.long)
    device = version.device
    sums = torch.zeros(len(docs), device=device)
    with torch.inference_mode():
        for batch in pack(chunks, row_tokens, token_budget, pad_id):
            if cancelled():
                raise Cancelled
            nll, owner = token_nll(version.model, batch, device)
            sums.index_add_(0, owner_doc.to(device)[owner], nll)
            on_tokens(int(nll.numel()))
    totals = sums.cpu().tolist()
    return [
        DocScore(id=d.doc.id, loss=totals[i] / d.tokens if d.tokens else math.nan, tokens=d.tokens)
        for i, d in enumerate(docs)
    ]


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
        on_tokens: Callable[[int], None] = _ignore,
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
