"""Replay's static and seed figures checked against plain transformers, computed by hand.

    .venv/bin/python benchmarks/verify.py STREAM.jsonl --docs 40

Runs `livelm replay --strategy static,seed` on the first N documents of STREAM, then computes
the same two numbers with nothing of livelm but the model's location: each document as
`<|endoftext|>` + its text, the mean cross-entropy of every text token (fp32); for the seed,
each document scored before one plain SGD step `θ ← θ - η∇L(θ; x)` (η = 1e-4, fp32) on it.
Prints both and their difference; they should agree to the precision the learners use
(seed exactly; static scores with bf16 weights, which measured 0.03 nats/token above fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from livelm.model import load_model


def by_hand(path: Path, texts: list[str], learn: bool) -> tuple[float, int]:
    """Token-weighted mean loss of the documents, read in order, with or without SGD steps."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.train(learn)
    start = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    total, tokens = 0.0, 0
    for text in texts:
        ids = [start, *tokenizer(text, add_special_tokens=False)["input_ids"]][:1024]
        x = torch.tensor([ids])
        with torch.set_grad_enabled(learn):
            logits = model(x).logits[0, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits, x[0, 1:])
        total += loss.item() * (len(ids) - 1)
        tokens += len(ids) - 1
        if learn:
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 1e-4 * p.grad
                        p.grad = None
    return total / tokens, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stream", type=Path)
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    texts = []
    with args.stream.open() as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) == args.docs:
                break
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "livelm", "replay", str(args.stream), "--strategy"]
        command += ["static,seed", "--max-docs", str(args.docs), "--out", out, "--quiet"]
        command += ["--model", args.model]
        subprocess.run(command, check=True)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    path = load_model(args.model).path
    assert path is not None
    print(f"{args.docs} documents of {args.stream.name}, {metrics['tokens']} tokens (replay)")
    print("| strategy | replay loss | by hand | difference | by-hand tokens |")
    print("|---|---|---|---|---|")
    for name, learn in (("static", False), ("seed", True)):
        replay = metrics["strategies"][name]["prequential_loss"]
        hand, tokens = by_hand(path, texts, learn)
        print(f"| {name} | {replay:.4f} | {hand:.4f} | {replay - hand:+.4f} | {tokens} |")
        assert math.isfinite(hand)


if __name__ == "__main__":
    main()
