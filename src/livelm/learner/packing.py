"""Token chunks packed into rows without padding, and their per-chunk losses.

Short documents (headlines, posts) padded to the longest one in a batch waste about a third of a
step's work. Instead, chunks are packed first-fit-decreasing into rows of `row_tokens`; each
chunk's position ids restart at 0, and transformers turns those restarts into a block-diagonal
causal mask (no attention mask is passed), so no chunk sees another and a chunk's loss is the same
as alone. Rows go through the model in micro-batches of at most `token_budget` tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class Cancelled(Exception):
    """Scoring stopped because its caller asked it to (a client gone): raised between packed
    micro-batches by the server's scoring and by `livelm.recommend`."""


def never_cancelled() -> bool:
    """The `cancelled` callback of work nobody cancels."""
    return False


def count_nothing(tokens: int) -> None:
    """The `on_tokens` callback of work nobody counts."""


@dataclass(frozen=True)
class PackedBatch:
    """A micro-batch of packed rows.

    `owner[r, t]` is the chunk at row r, position t (-1 for the padding at a row's end);
    `positions` restart at 0 with every chunk (and run on through the padding).
    """

    ids: torch.Tensor  # (rows, width) long
    positions: torch.Tensor  # (rows, width) long
    owner: torch.Tensor  # (rows, width) long

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


def _rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: chunk indices per row, each row's lengths summing to at most
    `max(row_tokens, longest chunk)`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    capacity = max([row_tokens, *lengths])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack(
    chunks: Sequence[Sequence[int]], row_tokens: int, token_budget: int, pad_id: int
) -> Iterator[PackedBatch]:
    """Packed micro-batches covering every chunk once (each chunk needs >= 1 token)."""
    lengths = [len(c) for c in chunks]
    if any(n < 1 for n in lengths):
        raise ValueError("every chunk needs at least one token")
    rows = _rows(lengths, min(row_tokens, token_budget))
    fill = [sum(lengths[i] for i in row) for row in rows]
    per_batch = max(1, token_budget // max(fill, default=1))
    for start in range(0, len(rows), per_batch):
        group = rows[start : start + per_batch]
        width = max(fill[start : start + per_batch])
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).repeat(len(group), 1)
        owner = torch.full((len(group), width), -1, dtype=torch.long)
        for r, row in enumerate(group):
            at = 0
            for i in row:
                n = lengths[i]
                ids[r, at : at + n] = torch.tensor(chunks[i], dtype=torch.long)
                positions[r, at : at + n] = torch.arange(n)
                owner[r, at : at + n] = i
                at += n
            if at < width:
                positions[r, at:] = torch.arange(width - at)  # a separate, ignored sequence
        yield PackedBatch(ids=ids, positions=positions, owner=owner)


def token_nll(
    model: torch.nn.Module, batch: PackedBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The NLL (fp32, nats) of every predicted token in `batch`, and the chunk each belongs to.

    Position t predicts token t+1 when both belong to the same chunk. The output head and the
    softmax over the vocabulary run on those positions only: on a CPU the head's logits cost a
    fifth of a small model's step, and their backward through a boolean index another tenth.
    """
    ids = batch.ids.to(device)
    owner = batch.owner.to(device)
    positions = batch.positions.to(device)
    valid = (owner[:, :-1] >= 0) & (owner[:, :-1] == owner[:, 1:])
    targets = ids[:, 1:][valid]
    if _plain_head(model):
        hidden = model.get_decoder()(  # type: ignore[operator]
            input_ids=ids, position_ids=positions, use_cache=False
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][valid])  # type: ignore[operator]
    else:
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits = logits[:, :-1][valid]
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    return nll, owner[:, :-1][valid]


def _plain_head(model: torch.nn.Module) -> bool:
    """Whether the logits are just the output head on the decoder's last hidden state (GPT-2,
    Llama and most causal LMs); models that scale or cap their logits take the full forward."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder"):
        return False
    return not any(
        getattr(config, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
