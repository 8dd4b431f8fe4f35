"""Run by `test_distributed` under `torchrun --nproc-per-node 2`: the online learner takes the
same global batches on two ranks, each rank its share; every rank saves its trainable weights.

    torchrun --standalone --nproc-per-node 2 tests/ddp_steps.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from livelm.document import Document
from livelm.learner import Learner, LearnerConfig, get_strategy
from livelm.learner.distributed import init_from_env
from livelm.model import load_model

# Two ranks on this machine, as the tests launch them.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
CONFIG: LearnerConfig = get_strategy("online").replace(
    lr=1e-2, warmup_steps=0, precision="fp32", max_docs_per_step=64
)
# A document whose loss is not finite (NaN in the embedding of a token only it holds): each rank
# sets it aside inside its own step, so the group takes the update one process would.
POISON = "Poison qxzj QXZJ 0987!"
# Global batches, as (rank 0's documents, rank 1's documents); rank 1 has none in step 3.
STEPS: list[tuple[list[str], list[str]]] = [
    (["Storm hits the coast.", "Markets rise."], ["The team wins the final.", "Rain again."]),
    (["Senate passes the budget bill after a long night."], ["Ice near the moon's pole.", POISON]),
    (["City council votes on bike lanes.", "A play about family."], []),
    (["Vaccine trial shows promise."], ["Rates held steady.", "Bridge closed overnight."]),
]


def poison(learner: Learner) -> None:
    clean = {
        t for step in STEPS for texts in step for x in texts if x != POISON for t in ids(learner, x)
    }
    token = next(t for t in ids(learner, POISON) if t not in clean)
    with torch.no_grad():
        learner.model.get_input_embeddings().weight[token] = float("nan")


def ids(learner: Learner, text: str) -> list[int]:
    return [t for c in learner.encode(Document(text)).chunks for t in c[1:]]


def trainable(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    sync = init_from_env()
    assert sync is not None and sync.world == 2
    loaded = load_model(model_dir, device="cpu")
    learner = Learner(loaded.model, loaded.tokenizer, CONFIG)
    learner.sync = sync
    poison(learner)
    losses, rejected = [], []
    for step in STEPS:
        report = learner.step([learner.encode(Document(t)) for t in step[sync.rank]])
        losses.append(report.loss)
        rejected.append(report.rejected)
    torch.save(
        {"weights": trainable(learner), "losses": losses, "rejected": rejected},
        out / f"rank{sync.rank}.pt",
    )


if __name__ == "__main__":
    main()
