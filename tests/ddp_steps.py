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
# Global batches, as (rank 0's documents, rank 1's documents); rank 1 has none in step 3.
STEPS: list[tuple[list[str], list[str]]] = [
    (["Storm hits the coast.", "Markets rise."], ["The team wins the final.", "Rain again."]),
    (["Senate passes the budget bill after a long night."], ["Ice near the moon's pole."]),
    (["City council votes on bike lanes.", "A play about family."], []),
    (["Vaccine trial shows promise."], ["Rates held steady.", "Bridge closed overnight."]),
]


def trainable(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    sync = init_from_env()
    assert sync is not None and sync.world == 2
    loaded = load_model(model_dir, device="cpu")
    learner = Learner(loaded.model, loaded.tokenizer, CONFIG)
    learner.sync = sync
    losses = []
    for step in STEPS:
        report = learner.step([learner.encode(Document(t)) for t in step[sync.rank]])
        losses.append(report.loss)
    torch.save({"weights": trainable(learner), "losses": losses}, out / f"rank{sync.rank}.pt")


if __name__ == "__main__":
    main()
