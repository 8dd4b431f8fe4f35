"""Documents to token chunks, each after the token that starts a document.

Every chunk starts with one boundary token, so that every token of the text is predicted exactly
once and a document's score does not depend on what came before it. A document longer than the
model's window is split into window-sized chunks; nothing is cut.

The boundary is the token the model's pretraining documents started with, not whatever the
tokenizer calls its BOS: SmolLM2-Instruct's BOS is `<|im_start|>`, a chat-turn marker that plain
text never follows in training (on 60 short news texts it raised the static loss from 5.82 to
6.38 nats/token, and learners then "gained" by learning the marker). `--boundary auto` (the
default) takes the first of these that is not a chat-turn marker:

1. the token the tokenizer itself puts before plain text (`tokenizer("x")` with its special
   tokens; `add_bos_token`): Llama's `<s>`, Gemma's `<bos>`, Llama 3's `<|begin_of_text|>`;
2. a document separator in the vocabulary: `<|endoftext|>` (GPT-2, SmolLM2, Qwen, Pythia, Phi),
   `<|end_of_text|>`;
3. the tokenizer's BOS;
4. the tokenizer's EOS.

A chat-turn marker is a special token named like one (`<|im_start|>`, `<start_of_turn>`,
`<|eot_id|>`, ...) or one that the chat template writes anywhere but at the very start of a
rendered conversation (a template's leading `<bos>` is a document start; its `<|im_start|>`
before every turn, or `</s>` after one, is not). `--boundary bos`, `eos` or a literal token
(`--boundary '<|endoftext|>'`) overrides the rule; the resolved token is recorded in
`metrics.json` and in every snapshot manifest.

>>> from tokenizers import Tokenizer, models
>>> from transformers import PreTrainedTokenizerFast
>>> vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3}
>>> tok = PreTrainedTokenizerFast(
...     tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")),
...     bos_token="<|im_start|>", eos_token="<|im_end|>",
...     additional_special_tokens=["<|endoftext|>"])
>>> resolve_boundary(tok)
Boundary(token='<|endoftext|>', id=0, rule='document separator')
>>> resolve_boundary(tok, "bos").token
'<|im_start|>'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document

log = logging.getLogger(__name__)

# Tokens that separate documents in pretraining data, by the names model families give them.
DOCUMENT_SEPARATORS = ("<|endoftext|>", "<|end_of_text|>")
# Parts of the names of chat-turn markers (ChatML, Gemma, Llama 3, Phi-3, Zephyr).
_MARKER_NAMES = ("im_start", "im_end", "_of_turn", "eot_id", "header_id")
_MARKER_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
# One user and one assistant turn: enough for a template to show its turn markers twice.
_PROBE_CHAT = [
    {"role": "user", "content": "Hello there."},
    {"role": "assistant", "content": "Hi."},
]


@dataclass(frozen=True)
class Boundary:
    """The token that starts every chunk, and which rule chose it."""

    token: str
    id: int
    # `given` (by --boundary bos, eos or TOKEN), else the step of the auto rule that chose it:
    # `tokenizer start`, `document separator`, `bos` or `eos`.
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "id": self.id, "rule": self.rule}


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    named = [t for t in tokenizer.all_special_tokens if isinstance(t, str)]
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return sorted(set(named) | set(added))


def chat_markers(tokenizer: PreTrainedTokenizerBase) -> frozenset[str]:
    """The special tokens that mark chat turns: by name, or by where the chat template puts
    them (anywhere but the very start of a rendered two-turn conversation)."""
    specials = _special_tokens(tokenizer)
    marked = {t for t in specials if any(n in t for n in _MARKER_NAMES) or t in _MARKER_TOKENS}
    rendered = ""
    if tokenizer.chat_template:
        try:
            rendered = str(tokenizer.apply_chat_template(_PROBE_CHAT, tokenize=False))
        except Exception as e:  # a template may refuse the probe; the names remain
            log.debug("the chat template did not render a probe conversation: %s", e)
    for token in specials:
        at = rendered.find(token, 1)  # past position 0: a leading token starts the document
        if at > 0:
            marked.add(token)
    return frozenset(marked)


def _prepended(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The one token the tokenizer puts before plain text by default, if it puts one."""
    plain: list[int] = tokenizer("a", add_special_tokens=False)["input_ids"]
    full: list[int] = tokenizer("a")["input_ids"]
    if len(full) > len(plain) and full[1 : 1 + len(plain)] == plain:  # an EOS may follow too
        return int(full[0])
    return None


def resolve_boundary(tokenizer: PreTrainedTokenizerBase, spec: str = "auto") -> Boundary:
    """The boundary token for `spec`: `auto` (the rule in the module docstring), `bos`, `eos`,
    or a literal token of the vocabulary."""
    vocab = tokenizer.get_vocab()
    if spec in ("bos", "eos"):
        token = tokenizer.bos_token if spec == "bos" else tokenizer.eos_token
        if not isinstance(token, str) or token not in vocab:
            raise ValueError(f"--boundary {spec}: this tokenizer has no {spec.upper()} token")
        return Boundary(token, int(vocab[token]), "given")
    if spec != "auto":
        if spec not in vocab:
            raise ValueError(
                f"--boundary {spec!r}: not a token of this tokenizer's vocabulary; "
                "use auto, bos, eos or one of its special tokens"
            )
        return Boundary(spec, int(vocab[spec]), "given")

    markers = chat_markers(tokenizer)
    ids_to_tokens = {i: t for t, i in vocab.items()}
    first = _prepended(tokenizer)
    candidates: list[tuple[str | None, str]] = [
        (None if first is None else ids_to_tokens.get(first), "tokenizer start"),
        *((sep, "document separator") for sep in DOCUMENT_SEPARATORS),
        (_str_or_none(tokenizer.bos_token), "bos"),
        (_str_or_none(tokenizer.eos_token), "eos"),
    ]
    for token, rule in candidates:
        if token is not None and token in vocab and token not in markers:
            return Boundary(token, int(vocab[token]), rule)
    raise ValueError(
        "--boundary auto: this tokenizer has no document separator, BOS or EOS token that is "
        f"not a chat-turn marker ({', '.join(sorted(markers)) or 'none'}); name the token "
        "documents start with, e.g. --boundary '<|endoftext|>'"
    )


def _str_or_none(token: object) -> str | None:
    return token if isinstance(token, str) and token else None


@dataclass(frozen=True)
class EncodedDocument:
    """A document and its chunks; `tokens` counts the predicted (text) tokens."""

    doc: Document
    chunks: tuple[tuple[int, ...], ...]

    @property
    def tokens(self) -> int:
        return sum(len(c) - 1 for c in self.chunks)


class Encoder:
    """Tokenizes documents into chunks of at most `max_tokens` ids, boundary token included.

    `boundary` is a `--boundary` spec (see the module docstring); `resolved` says which token
    it chose and why, and `boundary` then holds that token's id.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_tokens: int, boundary: str = "auto"
    ) -> None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, not {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.resolved = resolve_boundary(tokenizer, boundary)
        self.boundary = self.resolved.id

    def encode(self, doc: Document) -> EncodedDocument:
        ids: list[int] = self.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        width = self.max_tokens - 1
        chunks = tuple(
            (self.boundary, *ids[start : start + width]) for start in range(0, len(ids), width)
        )
        return EncodedDocument(doc=doc, chunks=chunks)
