"""`livelm`: one entry point, one sub-command per job.

Each command is a function of typed arguments; `main` only parses and maps errors to a clear
message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from livelm.learner import STRATEGIES, StepReport, Tally
from livelm.model import DEFAULT_MODEL, cache_root, load_model
from livelm.replay import ReplayOptions, parse_strategies, run_replay
from livelm.source.files import StreamError
from livelm.source.sotu import write_sotu_stream


def replay(
    stream: str,
    *,
    model: str = DEFAULT_MODEL,
    strategy: str = "static,online",
    out: Path = Path("runs/replay"),
    max_docs: int | None = None,
    every: int = 1,
    reference: str | None = None,
    fmt: str = "auto",
    skip_bad: bool = False,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, object]:
    options = ReplayOptions(
        stream=stream,
        strategies=parse_strategies(strategy),
        out=out,
        max_docs=max_docs,
        every=every,
        reference=reference,
        fmt=fmt,  # type: ignore[arg-type]  # argparse restricts the choices
        skip_bad=skip_bad,
    )
    base = load_model(model, device=device)
    bars: dict[str, tqdm[None]] = {}

    def progress(name: str, report: StepReport, tally: Tally) -> None:
        if quiet:
            return
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(desc=f"{name:>12}", unit="doc", total=max_docs, leave=True)
        bar.update(len(report.scores))
        bar.set_postfix_str(f"{tally.tokens_per_second:.0f} tok/s, ppl {tally.perplexity:.2f}")

    metrics = run_replay(base, options, progress)
    for bar in bars.values():
        bar.close()
    if not quiet:
        _print_table(metrics)
        print(f"wrote {out}/metrics.json, curve.png and report.html")
    return metrics


def _print_table(metrics: dict[str, object]) -> None:
    strategies = metrics["strategies"]
    assert isinstance(strategies, dict)
    print(f"{'strategy':<14}{'perplexity':>12}{'tokens/s':>10}{'ref before':>12}{'ref after':>11}")
    for name, m in strategies.items():
        ref = [
            "-" if m[k] is None else f"{m[k]:.4f}"
            for k in ("reference_loss_before", "reference_loss_after")
        ]
        print(
            f"{name:<14}{m['perplexity']:>12.2f}{m['tokens_per_second']:>10.1f}"
            f"{ref[0]:>12}{ref[1]:>11}"
        )


def demo(*, model: str = DEFAULT_MODEL, out: Path = Path("runs/demo"), docs: int = 750) -> None:
    """Replay the State of the Union addresses (1790-2021), `static` against `online`."""
    stream, total = write_sotu_stream(cache_root() / "sotu.jsonl", cache_root() / "npm")
    every = max(1, total // docs)
    print(f"State of the Union: {total} paragraphs, 1790-2021; replaying every {every}th")
    replay(str(stream), model=model, strategy="static,online", out=out, every=every, max_docs=docs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livelm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="prequential evaluation of strategies over a stream")
    p.add_argument("stream", help="a JSONL or text file, or - for stdin")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="HF directory, hub id, .gguf file or 'smollm2' (default)",
    )
    p.add_argument(
        "--strategy",
        default="static,online",
        help=f"comma-separated; known: {', '.join(STRATEGIES)}",
    )
    p.add_argument("--out", type=Path, default=Path("runs/replay"))
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--every", type=int, default=1, help="keep every n-th document")
    p.add_argument(
        "--reference", default=None, help="fixed documents scored before and after the stream"
    )
    p.add_argument(
        "--format", dest="fmt", default="auto", choices=["auto", "jsonl", "lines", "blocks"]
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and count malformed lines instead of stopping"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help="replay the State of the Union stream, static vs online")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--docs", type=int, default=750, help="paragraphs, spread over 1790-2021")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "replay":
            replay(
                args.stream,
                model=args.model,
                strategy=args.strategy,
                out=args.out,
                max_docs=args.max_docs,
                every=args.every,
                reference=args.reference,
                fmt=args.fmt,
                skip_bad=args.skip_bad,
                device=args.device,
                quiet=args.quiet,
            )
        elif args.command == "demo":
            demo(model=args.model, out=args.out, docs=args.docs)
    except (StreamError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"livelm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
