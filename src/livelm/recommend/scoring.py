"""The model's side of a ranking: texts' losses and pooled hidden states, and candidates' losses
after a shared prefix.

`Scorer.stats` runs texts as the learner encodes documents (the boundary token, then the text
in chunks of the model's window), packed without padding by `livelm.learner.packing.pack` into
micro-batches of at most `token_budget` tokens; one decoder pass gives each text's summed NLL
(the learner's loss, times its tokens) and its embedding (the mean of the last hidden states
over its text tokens; the boundary token's, the same for every text, is left out).

`Scorer.conditional` scores candidates after one prefix (a reader's history): the prefix runs
once and its key/value cache is repeated over a micro-batch of candidates, right-padded (a
causal model never attends to the padding that follows a token, so no mask is needed), whose
positions continue the prefix's. A history of P tokens and C candidates of L tokens then cost
P + C * L tokens of forward work, not C * (P + L) as packing each (history, candidate) pair
would; with a 200-token history and 40-token headlines, a fifth. This needs a model whose cache
is a plain per-layer key/value cache (Llama, GPT-2, Qwen, SmolLM2 ...).

Both check `cancelled()` before each micro-batch and raise `Cancelled` once it is true.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from livelm.learner.packing import Cancelled, _plain_head, count_nothing, never_cancelled, pack


@dataclass(frozen=True)
class TextStats:
    """One text under one model: its summed NLL over `tokens` predicted tokens (nats), and its
    pooled last hidden state (fp32, not normalized)."""

    nll: float
    tokens: int
    embedding: torch.Tensor  # (hidden,)


def _cache_argument(model: torch.nn.Module) -> str:
    """The name the model's forward gives its key/value cache: `cache` (transformers 5) or
    `past_key_values` (4.x)."""
    names = inspect.signature(model.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


class Scorer:
    """A frozen causal LM and the learner's encoding of texts, for ranking.

    `tokenize` turns a text into token ids without special tokens; `boundary` is the token every
    document starts with (`livelm.learner.encoding`); `max_tokens` the chunk length, boundary
    included. `memo`, when given, keeps each text's `TextStats` by its token ids, for a caller
    that ranks many readers under one model (the benchmark); the server passes none.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenize: Callable[[str], list[int]],
        boundary: int,
        pad_id: int,
        *,
        max_tokens: int = 1024,
        token_budget: int = 512,
        row_tokens: int = 256,
        memo: dict[tuple[int, ...], TextStats] | None = None,
        cancelled: Callable[[], bool] = never_cancelled,
        on_tokens: Callable[[int], None] = count_nothing,
    ) -> None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, not {max_tokens}")
        self.model = model
        self.tokenize = tokenize
        self.boundary = boundary
        self.pad_id = pad_id
        self.max_tokens = max_tokens
        self.token_budget = max(token_budget, 2)
        self.row_tokens = row_tokens
        self.memo = memo
        self.cancelled = cancelled
        self.on_tokens = on_tokens
        self.device = next(model.parameters()).device
        self._cache_name = _cache_argument(model)
        self._plain = _plain_head(model)

    @property
    def hidden_size(self) -> int:
        """The width of the model's hidden states: its embeddings' dimensions."""
        embeddings = self.model.get_input_embeddings()  # type: ignore[operator]
        return int(embeddings.weight.shape[1])

    def _check(self) -> None:
        if self.cancelled():
            raise Cancelled

    # -- texts alone ----------------------------------------------------------------------------

    def stats(self, texts: Sequence[Sequence[int]]) -> list[TextStats]:
        """Each text's (token ids, no boundary) summed NLL and embedding, in packed batches."""
        keys = [tuple(t) for t in texts]
        if any(not k for k in keys):
            raise ValueError("every text needs at least one token")
        found = {} if self.memo is None else {k: self.memo[k] for k in keys if k in self.memo}
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        if todo:
            found.update(zip(todo, self._run(todo), strict=True))
            if self.memo is not None:
                self.memo.update((k, found[k]) for k in todo)
        return [found[k] for k in keys]

    def _run(self, texts: Sequence[tuple[int, ...]]) -> list[TextStats]:
        width = self.max_tokens - 1
        chunks: list[tuple[int, ...]] = []
        owner: list[int] = []  # the text of each chunk
        for i, ids in enumerate(texts):
            for start in range(0, len(ids), width):
                chunks.append((self.boundary, *ids[start : start + width]))
                owner.append(i)
        hidden_size = self.hidden_size
        nll = torch.zeros(len(texts), dtype=torch.float64)
        pooled = torch.zeros(len(texts), hidden_size, dtype=torch.float64)
        owner_of = torch.tensor(owner, dtype=torch.long)
        with torch.inference_mode():
            for batch in pack(chunks, self.row_tokens, self.token_budget, self.pad_id):
                self._check()
                tokens = batch.ids.to(self.device)
                positions = batch.positions.to(self.device)
                chunk = batch.owner.to(self.device)  # (rows, width): chunk index, -1 padding
                hidden = self.model.get_decoder()(  # type: ignore[operator]
                    input_ids=tokens, position_ids=positions, use_cache=False
                ).last_hidden_state  # (rows, width, hidden)
                # Text tokens: a chunk's positions after its boundary token (position 0).
                text = (chunk >= 0) & (positions > 0)
                text_owner = owner_of.to(self.device)[chunk[text]]
                pooled.index_add_(0, text_owner.cpu(), hidden[text].double().cpu())
                # Predicted tokens: t predicts t + 1 within one chunk.
                valid = (chunk[:, :-1] >= 0) & (chunk[:, :-1] == chunk[:, 1:])
                if self._plain:
                    head = self.model.get_output_embeddings()  # type: ignore[operator]
                    logits = head(hidden[:, :-1][valid])
                else:
                    logits = self.model(
                        input_ids=tokens, position_ids=positions, use_cache=False
                    ).logits[:, :-1][valid]
                token_nll = F.cross_entropy(logits.float(), tokens[:, 1:][valid], reduction="none")
                nll.index_add_(0, owner_of[chunk[:, :-1][valid].cpu()], token_nll.double().cpu())
                self.on_tokens(int(batch.tokens))
        counts = [len(t) for t in texts]
        return [
            TextStats(float(nll[i]), counts[i], (pooled[i] / counts[i]).float())
            for i in range(len(texts))
        ]

    def embed(self, texts: Sequence[Sequence[int]]) -> torch.Tensor:
        """The texts' pooled hidden states, L2-normalized: (texts, hidden) fp32."""
        vectors = torch.stack([s.embedding for s in self.stats(texts)])
        return F.normalize(vectors, dim=-1)

    # -- candidates after a prefix ------------------------------------------------------------

    def conditional(
        self, prefix: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        """Each candidate's summed NLL (nats) after `prefix` (which starts with the boundary
        token); every candidate token is predicted, the first one by the prefix's last
        position. The prefix and one candidate must fit the model's window together."""
        if not prefix or any(len(c) == 0 for c in candidates):
            raise ValueError("the prefix and every candidate need at least one token")
        if not candidates:
            return []
        from transformers import DynamicCache

        model = self.model
        prefix_len = len(prefix)
        totals = [0.0] * len(candidates)
        with torch.inference_mode():
            self._check()
            cache = DynamicCache(config=getattr(model, "config", None))
            ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
            # The last position by index (see `livelm.server.engine`'s prefill: a slice would
            # make torch copy the whole output head).
            last = torch.tensor([prefix_len - 1], device=self.device)
            out = model(
                input_ids=ids, use_cache=True, logits_to_keep=last, **{self._cache_name: cache}
            )
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (vocab,)
            self.on_tokens(prefix_len)
            # Longest first, so each micro-batch holds candidates of like length.
            order = sorted(range(len(candidates)), key=lambda i: -len(candidates[i]))
            start = 0
            while start < len(order):
                self._check()
                width = len(candidates[order[start]])
                rows = max(1, self.token_budget // width)
                group = order[start : start + rows]
                start += len(group)
                batch = torch.full((len(group), width), self.pad_id, dtype=torch.long)
                lengths = torch.tensor([len(candidates[i]) for i in group])
                for r, i in enumerate(group):
                    batch[r, : len(candidates[i])] = torch.tensor(candidates[i])
                batch = batch.to(self.device)
                positions = (torch.arange(width) + prefix_len).repeat(len(group), 1)
                shared = copy.deepcopy(cache)  # the model appends to it; the prefix's stays
                shared.batch_repeat_interleave(len(group))
                logits = model(
                    input_ids=batch,
                    position_ids=positions.to(self.device),
                    use_cache=True,
                    **{self._cache_name: shared},
                ).logits  # (rows, width, vocab)
                # Position t predicts token t + 1, for t + 1 inside the candidate.
                inside = (torch.arange(width - 1)[None, :] + 1 < lengths[:, None]).to(self.device)
                token_nll = torch.zeros(len(group), max(width - 1, 0), device=self.device)
                if width > 1:
                    token_nll[inside] = F.cross_entropy(
                        logits[:, :-1][inside].float(), batch[:, 1:][inside], reduction="none"
                    )
                sums = token_nll.sum(dim=1) - first[batch[:, 0]]
                for r, i in enumerate(group):
                    totals[i] = float(sums[r])
                self.on_tokens(int(lengths.sum()))
        return totals
