"""Benchmark of the core learner (issue "livelm core").

    .venv/bin/python benchmarks/core.py            # 1,500 HuffPost documents, ~30 min here
    .venv/bin/python benchmarks/core.py --stream data/streams/sotu.jsonl --docs 300

Measures, in one run on this machine and with the default model: the prequential perplexity and
tokens/s of `static`, `seed` and `online` on the first 1,500 documents of
`../shared/data/news-huffpost-2018-2022.jsonl` (or of `--stream`); the machine's fp32 and bf16
matrix-multiply rates; and the training FLOP/s each learner achieves, as a fraction of the
ceiling of its precision. FLOPs are counted by `torch.utils.flop_counter` on the learner's real
steps, grouped as replay groups them (matmuls and attention, forward and backward, padding
included; not an anchor's penalty), per stream token, then multiplied by the tokens of the run.
Prints a markdown table and writes it to `runs/bench-core/table.md`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from livelm.learner import Learner, get_strategy
from livelm.learner.prequential import batches
from livelm.model import load_model
from livelm.replay import ReplayOptions, parse_strategies, run_replay
from livelm.source.files import read_stream
from paths import NEWS, ROOT


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    """Sustained FLOP/s of an n x n x n matmul in `dtype` on this CPU."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def flops_per_token(model_spec: str, strategy: str, stream: Path, docs: int = 64) -> float:
    """Counted FLOPs of the learner's steps over `docs` stream documents, per stream token."""
    base = load_model(model_spec)
    learner = Learner(copy.deepcopy(base.model), base.tokenizer, get_strategy(strategy))
    counter = FlopCounterMode(display=False)
    tokens = 0
    with counter:
        for step in batches(learner, read_stream(str(stream)), docs):  # the replay's steps
            tokens += learner.step(step).tokens
    return counter.get_total_flops() / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", type=Path, default=NEWS, help="a JSONL stream (default: news)")
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--strategy", default="static,seed,online")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-core")
    args = parser.parse_args()

    fp32 = matmul_rate(torch.float32)
    bf16 = matmul_rate(torch.bfloat16)
    options = ReplayOptions(
        stream=str(args.stream),
        strategies=parse_strategies(args.strategy),
        out=args.out,
        max_docs=args.docs,
    )
    metrics = run_replay(load_model(args.model), options)
    strategies = metrics["strategies"]
    assert isinstance(strategies, dict)

    static_ppl = strategies["static"]["perplexity"] if "static" in strategies else None
    seed_tps = strategies["seed"]["tokens_per_second"] if "seed" in strategies else None
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. "
        f"Matmul ceiling (2048^3): fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s.",
        f"Stream: first {metrics['docs']} documents of {args.stream.name}, "
        f"{metrics['tokens']} tokens; model {args.model}.",
        "",
        "| strategy | perplexity | vs static | tokens/s | vs seed | FLOP/token | "
        "achieved GFLOP/s | of ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in strategies.items():
        per_token = flops_per_token(args.model, name, args.stream)
        achieved = per_token * m["tokens_per_second"]
        precision = "fp32" if m["config"]["precision"] == "fp32" else "bf16"
        ceiling = fp32 if precision == "fp32" else bf16
        vs_static = f"{m['perplexity'] / static_ppl:.3f}x" if static_ppl else "-"
        vs_seed = f"{m['tokens_per_second'] / seed_tps:.1f}x" if seed_tps else "-"
        lines.append(
            f"| {name} | {m['perplexity']:.2f} | {vs_static} | {m['tokens_per_second']:.0f} | "
            f"{vs_seed} | {per_token / 1e6:.0f} M | {achieved / 1e9:.1f} | "
            f"{achieved / ceiling:.1%} ({precision}) |"
        )
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "rates.json").write_text(json.dumps({"fp32": fp32, "bf16": bf16}) + "\n")


if __name__ == "__main__":
    main()
