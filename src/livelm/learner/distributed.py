"""Data-parallel learning with PyTorch distributed: every rank takes the same update.

Under `torchrun`, each rank scores and learns its own documents; `Learner.step` then sums,
across ranks with `all_reduce` (gloo on CPU, NCCL on GPU), the step's token count (so every rank
divides by the global one), its loss and the gradients. Every rank applies the same summed
gradient with the same optimizer, so the weights stay identical, and equal to those of one
process that took the whole global batch. A rank with no documents in a step still takes part
(with zero gradients): uneven batches never hang the group.

This is what `DistributedDataParallel` does for a model's forward, done at the step instead: a
step accumulates several micro-batches and may have none on some rank, which DDP's per-forward
hooks would need `no_sync` and `join` to get through.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import PrefixStore
from torch.distributed.rendezvous import rendezvous


class GradientSync:
    """Sums across the ranks of the default process group."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized (run under torchrun)")
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(x) for x in t.cpu().tolist()]

    def gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every parameter's gradient by its sum over the ranks (None counts as 0)."""
        if not params:
            return
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in params
            ]
        ).to(self.device)
        dist.all_reduce(flat)
        at = 0
        for p in params:
            n = p.numel()
            p.grad = flat[at : at + n].view_as(p).to(p.device, p.dtype)
            at += n

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (on every rank)."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_from_env() -> GradientSync | None:
    """Join the process group that `torchrun` describes in the environment, or None when this
    process runs alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # The group's keys go under a prefix of their own per torchrun attempt: seen here,
        # ranks restarted after a `kill -9` otherwise read the dead ranks' addresses from the
        # agent's store and time out connecting to them.
        store, rank, world = next(rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        run = os.environ.get("TORCHELASTIC_RUN_ID", "")
        dist.init_process_group(
            backend=backend,
            store=PrefixStore(f"livelm/{run}/attempt{attempt}", store),
            rank=rank,
            world_size=world,
        )
    return GradientSync()
