"""Documents to token chunks.

Each chunk starts with a boundary token (the tokenizer's BOS, or EOS where it has none) so that
every token of the text is predicted exactly once and a document's score does not depend on what
came before it. A document longer than the model's window is split into window-sized chunks;
nothing is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document


@dataclass(frozen=True)
class EncodedDocument:
    """A document and its chunks; `tokens` counts the predicted (text) tokens."""

    doc: Document
    chunks: tuple[tuple[int, ...], ...]

    @property
    def tokens(self) -> int:
        return sum(len(c) - 1 for c in self.chunks)


class Encoder:
    """Tokenizes documents into chunks of at most `max_tokens` ids, boundary token included."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, not {max_tokens}")
        boundary = tokenizer.bos_token_id
        if boundary is None:
            boundary = tokenizer.eos_token_id
        if boundary is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start chunks")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.boundary = int(boundary)

    def encode(self, doc: Document) -> EncodedDocument:
        ids: list[int] = self.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        width = self.max_tokens - 1
        chunks = tuple(
            (self.boundary, *ids[start : start + width]) for start in range(0, len(ids), width)
        )
        return EncodedDocument(doc=doc, chunks=chunks)
