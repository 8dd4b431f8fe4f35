"""The learner's settings swept over several real streams (issue "A learner that holds up").

    .venv/bin/python benchmarks/sweep.py --streams news,sotu,short,long --docs 300 \\
        --strategy 'online,online+lr=1e-3+step-tokens=256' [--slice tune|bench]

For each stream, one `livelm replay` process runs `static`, `seed` and the given strategies over
the same documents, with the same reference set before and after (forgetting), and the table
(perplexity, against static and seed, tokens/s, against seed, reference change) goes to stdout
and to `OUT/<stream>-<docs>-<slice>.md`, the replay's own files beside it.

Slices: `bench` is the first N documents of a stream, the benchmark's; `tune` starts further in
(see `TUNE_START`), so that settings chosen on it are not chosen on the benchmark. Seed's and
static's results do not depend on the swept strategies: `--reuse` takes them from an earlier
run of the same stream, slice and size instead of running them again.

Streams: `news` (HuffPost headlines with descriptions, ../shared/data), `sotu` (State of the
Union paragraphs, npm), and the corpora `benchmarks/streams.py` writes into `data/streams/`
(short texts, long articles, a book read as consecutive segments).

The reference set is the same for every stream and never fed: 60 documents, 20 each from the
held-out tails of news, State of the Union and the book (`reference()`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from paths import NEWS, ROOT

STREAMS_DIR = ROOT / "data" / "streams"
# Where the tuning slice of each stream starts: past any 3,000-document benchmark slice.
TUNE_START = 4000
BASELINES = ("static", "seed")


def stream_path(name: str) -> Path:
    if name == "news":
        return NEWS
    path = STREAMS_DIR / f"{name}.jsonl"
    if not path.exists():
        sys.exit(f"sweep: {path} is missing: run benchmarks/streams.py --out {STREAMS_DIR}")
    return path


def lines(path: Path) -> list[str]:
    with path.open() as f:
        return [line for line in f if line.strip()]


def sliced(name: str, docs: int, where: str, out: Path) -> Path:
    """The slice's documents as a JSONL file of their own."""
    all_lines = lines(stream_path(name))
    held_out = 20  # the tail feeds the reference set
    usable = all_lines[: len(all_lines) - held_out]
    start = 0 if where == "bench" else min(TUNE_START, max(0, len(usable) - docs))
    chosen = usable[start : start + docs]
    if len(chosen) < docs:
        print(f"sweep: {name} holds {len(chosen)} documents for the {where} slice", file=sys.stderr)
    path = out / f"{name}-{docs}-{where}.jsonl"
    path.write_text("".join(chosen))
    return path


def reference(out: Path) -> Path:
    """20 held-out documents each of news, State of the Union and the book, where they exist."""
    picked: list[str] = []
    for name in ("news", "sotu", "book"):
        try:
            path = stream_path(name)
        except SystemExit:
            continue
        picked += lines(path)[-20:]
    path = out / "reference.jsonl"
    path.write_text("".join(picked))
    return path


def run(
    stream: Path,
    strategies: list[str],
    docs: int,
    ref: Path,
    out: Path,
    side_by_side: bool,
    reference_every: int = 0,
) -> dict[str, Any]:
    command = [
        str(ROOT / ".venv" / "bin" / "livelm"),
        "replay",
        "-" if side_by_side else str(stream),
        "--strategy",
        ",".join(strategies),
        "--max-docs",
        str(docs),
        "--reference",
        str(ref),
        "--reference-every",
        str(reference_every),
        "--out",
        str(out),
        "--quiet",
    ]
    print("$", shlex.join(command), "<" if side_by_side else "", stream, file=sys.stderr)
    with stream.open() as stdin:
        subprocess.run(
            command,
            check=True,
            stdin=stdin if side_by_side else subprocess.DEVNULL,
            env=os.environ | {"TOKENIZERS_PARALLELISM": "false"},
        )
    result: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return result


def table(name: str, docs: int, where: str, metrics: dict[str, Any]) -> str:
    rows = metrics["strategies"]
    static, seed = rows.get("static"), rows.get("seed")
    head = (
        f"{name}, {where} slice, {metrics['docs']} documents, {metrics['tokens']} tokens\n\n"
        "| strategy | perplexity | vs static | vs seed | tokens/s | vs seed | reference change "
        "| along the run: mean, highest |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    body = []

    def ratio(value: float, base: dict[str, Any] | None, key: str) -> str:
        return f"{value / base[key]:.3f}x" if base else "-"

    for strategy, r in rows.items():
        before, after = r.get("reference_loss_before"), r.get("reference_loss_after")
        change = f"{100 * (after / before - 1):+.2f}%" if before and after else "-"
        along = [100 * (loss / before - 1) for _, loss in r.get("reference_curve") or [] if loss]
        curve = f"{sum(along) / len(along):+.2f}%, {max(along):+.2f}%" if along and before else "-"
        body.append(
            f"| {strategy} | {r['perplexity']:.2f} | {ratio(r['perplexity'], static, 'perplexity')}"
            f" | {ratio(r['perplexity'], seed, 'perplexity')} | {r['tokens_per_second']:.0f} | "
            f"{ratio(r['tokens_per_second'], seed, 'tokens_per_second')} | {change} | {curve} |"
        )
    return head + "\n".join(body) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="news,sotu,short,long")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--slice", choices=("tune", "bench"), default="tune")
    parser.add_argument("--strategy", default="online", help="the learning strategies to sweep")
    parser.add_argument("--reuse", action="store_true", help="static and seed from a past run")
    parser.add_argument(
        "--baselines", default="static,seed", help="run beside the swept strategies (or none)"
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="feed the slice on stdin, so that the strategies take each document in turn and "
        "anything else on the machine slows them alike (tokens/s ratios hold)",
    )
    parser.add_argument(
        "--reference-every",
        type=int,
        default=0,
        metavar="N",
        help="score the reference set every N documents too: the table gives the mean and the "
        "highest change along the run beside the change at its end",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sweep")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ref = reference(args.out)
    swept = [s for s in args.strategy.split(",") if s]
    for name in args.streams.split(","):
        stream = sliced(name, args.docs, args.slice, args.out)
        key = f"{name}-{args.docs}-{args.slice}"
        base_file = args.out / f"{key}-baselines.json"
        strategies = list(swept)
        baselines: dict[str, Any] = {}
        if args.reuse and base_file.exists():
            baselines = json.loads(base_file.read_text())
        else:
            wanted = [b for b in args.baselines.split(",") if b in BASELINES]
            strategies = [*wanted, *strategies]
        started = time.strftime("%Y-%m-%d %H:%M")
        metrics = run(
            stream,
            strategies,
            args.docs,
            ref,
            args.out / f"{key}-{int(time.time())}",
            args.side_by_side,
            args.reference_every,
        )
        found = {k: v for k, v in metrics["strategies"].items() if k in BASELINES}
        if found:
            base_file.write_text(json.dumps(found))
        metrics["strategies"] = {**baselines, **metrics["strategies"]}
        text = f"<!-- {started}, {' '.join(sys.argv)} -->\n" + table(
            name, args.docs, args.slice, metrics
        )
        print(text)
        with (args.out / f"{key}.md").open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
