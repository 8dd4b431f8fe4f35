"""Data-parallel learning under a real `torchrun` (gloo on CPU): both ranks end with equal
weights, equal to one process that took the same global batches, uneven batches included."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from livelm.document import Document
from livelm.learner import Learner
from livelm.model import load_model
from tests.ddp_steps import CONFIG, STEPS, TORCHRUN, poison, trainable

ROOT = Path(__file__).resolve().parents[1]


def test_two_ranks_take_the_same_update_as_one_process_on_the_global_batch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            *TORCHRUN,
            str(ROOT / "tests" / "ddp_steps.py"),
            str(tiny_model_dir),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0["weights"].keys() == rank1["weights"].keys() and rank0["weights"]
    for name, w in rank0["weights"].items():
        assert torch.equal(w, rank1["weights"][name]), name  # identical on every rank
    assert rank0["losses"] == rank1["losses"]
    # the poisoned document (rank 1, step 2) was set aside there, and only there
    assert rank1["rejected"][1] == ((1, "non-finite loss"),)
    assert not any(rank0["rejected"]) and not any(rank1["rejected"][i] for i in (0, 2, 3))

    loaded = load_model(str(tiny_model_dir), device="cpu")
    single = Learner(loaded.model, loaded.tokenizer, CONFIG)
    poison(single)
    before = trainable(single)
    losses = []
    for ours, theirs in STEPS:
        report = single.step([single.encode(Document(t)) for t in [*ours, *theirs]])
        losses.append(report.loss)
    assert any(not torch.equal(w, before[n]) for n, w in rank0["weights"].items())  # it learned
    # The same up to float rounding (the sums run in another order), which Adam's normalised
    # steps amplify for near-zero gradients: 5e-5 against updates of up to 4e-2.
    for name, w in rank0["weights"].items():
        torch.testing.assert_close(w, trainable(single)[name], rtol=1e-4, atol=5e-5)
    torch.testing.assert_close(torch.tensor(rank0["losses"]), torch.tensor(losses))
