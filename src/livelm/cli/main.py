"""`livelm`: one entry point, one sub-command per job.

Each command is a function of typed arguments; `main` only parses and maps errors to a clear
message and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from redis import RedisError
from tqdm import tqdm

from livelm.cli.learn import add_learn_parsers, run_ingest, run_learn
from livelm.cli.serve import add_serve_parser, run_serve
from livelm.learner import StepReport, Tally
from livelm.model import DEFAULT_MODEL, cache_root, load_model
from livelm.policy import known_strategies
from livelm.policy.options import LEARNER_OPTIONS, OPTIONS, POLICY_OPTIONS
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
    fisher: str | None = None,
    fmt: str = "auto",
    skip_bad: bool = False,
    device: str = "auto",
    quiet: bool = False,
    flags: Mapping[str, str] | None = None,
    surprise_window: int = 100,
    recent_docs: int = 300,
    save: Path | None = None,
    boundary: str = "auto",
) -> dict[str, object]:
    """`flags`: the option flags given (`{"lr": "1e-3", "replay": "0.25"}`), which apply
    to every learning strategy they fit; see `livelm.policy.strategy`. `save`: a directory for
    the learned weights (`ReplayOptions.save_path`). `boundary` (`--boundary`)
    applies to every strategy; see `livelm.learner.encoding`."""
    strategies = tuple(
        dataclasses.replace(s, learner=s.learner.replace(boundary=boundary))
        for s in parse_strategies(strategy, flags)
    )
    options = ReplayOptions(
        stream=stream,
        strategies=strategies,
        out=out,
        max_docs=max_docs,
        every=every,
        reference=reference,
        fisher=fisher,
        fmt=fmt,  # type: ignore[arg-type]  # argparse restricts the choices
        skip_bad=skip_bad,
        surprise_window=surprise_window,
        recent_docs=recent_docs,
        save=save,
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
        print(
            f"wrote {out}/metrics.json, curve.png, report.html, surprises.jsonl "
            "and emerging_terms.json"
        )
        for s in options.strategies:
            if (directory := options.save_path(s)) is not None:
                print(f"saved {s.name}'s weights to {directory}")
    return metrics


def _print_table(metrics: dict[str, object]) -> None:
    strategies = metrics["strategies"]
    assert isinstance(strategies, dict)
    width = max([14, *(len(name) + 2 for name in strategies)])
    print(
        f"{'strategy':<{width}}{'perplexity':>12}{'tokens/s':>10}{'ref before':>12}"
        f"{'ref after':>11}{'drifts':>8}"
    )
    for name, m in strategies.items():
        ref = [
            "-" if m[k] is None else f"{m[k]:.4f}"
            for k in ("reference_loss_before", "reference_loss_after")
        ]
        print(
            f"{name:<{width}}{m['perplexity']:>12.2f}{m['tokens_per_second']:>10.1f}"
            f"{ref[0]:>12}{ref[1]:>11}{len(m['drift_events']):>8}"
        )


def demo(*, model: str = DEFAULT_MODEL, out: Path = Path("runs/demo"), docs: int = 500) -> None:
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
        help="comma-separated specs, each a name with optional +key=value options, the flags "
        "below without their dashes (online+lr=1e-3+rank=8+replay=0.25); names: "
        + ", ".join(known_strategies()),
    )
    p.add_argument("--out", type=Path, default=Path("runs/replay"))
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--every", type=int, default=1, help="keep every n-th document")
    p.add_argument(
        "--reference", default=None, help="fixed documents scored before and after the stream"
    )
    p.add_argument(
        "--fisher", default=None, help="EWC's documents (default: the --reference documents)"
    )
    scope = "apply to every learning strategy named; a spec's own +key=value options win"
    groups = (
        (
            p.add_argument_group("learner flags", f"{scope}; LoRA flags to LoRA strategies"),
            LEARNER_OPTIONS,
        ),
        (p.add_argument_group("policy flags", scope), POLICY_OPTIONS),
    )
    for group, keys in groups:
        for key in keys:
            group.add_argument(
                f"--{key}", dest=f"option_{key}", metavar="X", help=OPTIONS[key].help
            )
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the final weights (a PEFT adapter, or a model directory for full-weight "
        "learners) with the tokenizer into DIR; with several strategies, DIR/<strategy>/",
    )
    p.add_argument(
        "--surprise-window",
        type=int,
        default=100,
        help="surprises.jsonl: the most surprising documents of each window of N",
    )
    p.add_argument(
        "--recent-docs",
        type=int,
        default=300,
        help="emerging_terms.json: the last N documents against the earlier stream",
    )
    p.add_argument(
        "--format", dest="fmt", default="auto", choices=["auto", "jsonl", "lines", "blocks"]
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and count malformed lines instead of stopping"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--boundary",
        default="auto",
        help="the token every document starts with: auto (the document separator or a real "
        "BOS, never a chat marker), bos, eos, or a token such as '<|endoftext|>' (default: auto)",
    )
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help="replay the State of the Union stream, static vs online")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--docs", type=int, default=500, help="paragraphs, spread over 1790-2021")

    add_serve_parser(sub)
    add_learn_parsers(sub)
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
                fisher=args.fisher,
                fmt=args.fmt,
                skip_bad=args.skip_bad,
                device=args.device,
                quiet=args.quiet,
                flags={
                    key: value
                    for key in OPTIONS
                    if (value := getattr(args, f"option_{key}")) is not None
                },
                save=args.save,
                surprise_window=args.surprise_window,
                recent_docs=args.recent_docs,
                boundary=args.boundary,
            )
        elif args.command == "demo":
            demo(model=args.model, out=args.out, docs=args.docs)
        elif args.command == "serve":
            run_serve(args)
        elif args.command == "learn":
            run_learn(args)
        elif args.command == "ingest":
            run_ingest(args)
    except (StreamError, ValueError, FileNotFoundError, RuntimeError, RedisError) as e:
        print(f"livelm {args.command}: error: {e}", file=sys.stderr)
        # Under torchrun a failed worker exits with status 1: seen here, a group whose worker
        # exited with status 2 was not restarted by the agent within a minute.
        return 1 if "TORCHELASTIC_RESTART_COUNT" in os.environ else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
