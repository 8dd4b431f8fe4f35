"""`livelm replay` and `livelm demo`: their flags, and the commands as typed functions.

Building the parser imports the strategy table and the options' configs, none of which import
torch; the model, the learners and the report load when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from livelm.model import DEFAULT_MODEL
from livelm.policy import known_strategies
from livelm.policy.options import LEARNER_OPTIONS, OPTIONS, POLICY_OPTIONS

if TYPE_CHECKING:
    from livelm.learner import StepReport, Tally
    from livelm.replay import ReplayOptions

REPORT_EVERY = 500


def add_replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="prequential evaluation of strategies over a stream")
    p.add_argument("stream", help="a JSONL or text file, or - for stdin (read as lines arrive)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a Hugging Face model directory, a hub id, a .gguf file or 'smollm2'",
    )
    p.add_argument(
        "--strategy",
        default="static,online",
        help="comma-separated specs, each a name with optional +key=value options, the flags "
        "below without their dashes (online+lr=1e-3+rank=8+replay=0.25); names: "
        + ", ".join(known_strategies()),
    )
    p.add_argument("--out", type=Path, default=Path("runs/replay"), help="the report's directory")
    p.add_argument("--max-docs", type=int, default=None, help="stop after N documents")
    p.add_argument("--every", type=int, default=1, help="keep every n-th document")
    p.add_argument(
        "--reference", default=None, help="fixed documents scored before and after the stream"
    )
    p.add_argument(
        "--reference-every",
        type=int,
        default=0,
        metavar="N",
        help="score the --reference documents every N documents too (metrics.json's "
        "reference_curve; not counted in tokens/s): forgetting moves with the last steps, and "
        "the reading at the end is one draw of it; 0: before and after only",
    )
    p.add_argument(
        "--fisher", default=None, help="EWC's documents (default: the --reference documents)"
    )
    p.add_argument(
        "--group-by",
        default=None,
        metavar="FIELD",
        help="break the loss down by the value of this metadata field (category, source, ...)",
    )
    p.add_argument(
        "--report-every",
        type=int,
        default=REPORT_EVERY,
        metavar="N",
        help="rewrite the report every N documents, so Ctrl-C keeps what was done; 0: at the "
        "end only",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="stream '-': step on the documents that have come once no line has come for this "
        "long (a partial step, and the report rewritten)",
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
        metavar="N",
        help="surprises.jsonl: the most surprising documents of each window of N",
    )
    p.add_argument(
        "--recent-docs",
        type=int,
        default=300,
        metavar="N",
        help="emerging_terms.json: the last N documents against the earlier stream",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        default="auto",
        choices=["auto", "jsonl", "lines", "blocks"],
        help="auto: JSONL for .jsonl files and input starting with '{', else blocks (files) "
        "or lines (stdin)",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip and count malformed lines instead of stopping"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--boundary",
        default="auto",
        help="the token every document starts with: auto (the document separator or a real "
        "BOS, never a chat marker), bos, eos, or a token such as '<|endoftext|>'",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars and no table")


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="replay the State of the Union stream, static vs online")
    p.add_argument("--model", default=DEFAULT_MODEL, help="as for replay")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="the report's directory")
    p.add_argument("--docs", type=int, default=500, help="paragraphs, spread over 1790-2021")


def replay(
    options: ReplayOptions,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, object]:
    """Replay `options.stream` with `model` and print (unless `quiet`) a bar per strategy and
    the results' table; the report goes to `options.out`."""
    from tqdm import tqdm

    from livelm.model import load_model
    from livelm.replay import run_replay

    if options.stream != "-":  # refused before the model loads; stdin is checked as it's read
        check_stream(options.stream, "stream", options.fmt, options.skip_bad)
    base = load_model(model, device=device)
    bars: dict[str, tqdm[None]] = {}

    def progress(name: str, report: StepReport, tally: Tally) -> None:
        if quiet:
            return
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(
                desc=f"{name:>12}",
                unit="doc",
                total=options.max_docs,
                leave=True,
                position=len(bars),
            )
        bar.update(len(report.scores))
        bar.set_postfix_str(f"{tally.tokens_per_second:.0f} tok/s, ppl {tally.perplexity:.2f}")

    try:
        metrics = run_replay(base, options, progress)
    finally:
        for bar in bars.values():
            bar.close()
    if not quiet:
        _print_table(metrics)
        print(
            f"wrote {options.out}/metrics.json, docs.jsonl, curve.png, report.html, "
            "surprises.jsonl and emerging_terms.json"
        )
        for s in options.strategies:
            if (directory := options.save_path(s)) is not None:
                print(f"saved {s.name}'s weights to {directory}")
    return metrics


def check_stream(path: str, flag: str, fmt: str = "auto", skip_bad: bool = True) -> None:
    """A stream file must hold a document with text: read up to the first one."""
    from livelm.source.files import StreamStats, read_stream

    stats = StreamStats()
    for _ in read_stream(path, fmt=fmt, skip_bad=skip_bad, stats=stats):  # type: ignore[arg-type]
        return
    raise ValueError(
        f"{flag} {path}: no document with text ({stats.empty} empty, {stats.bad} malformed)"
    )


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
        ppl = "-" if m["perplexity"] is None else f"{m['perplexity']:.2f}"
        print(
            f"{name:<{width}}{ppl:>12}{m['tokens_per_second']:>10.1f}"
            f"{ref[0]:>12}{ref[1]:>11}{len(m['drift_events']):>8}"
        )


def demo(*, model: str = DEFAULT_MODEL, out: Path = Path("runs/demo"), docs: int = 500) -> None:
    """Replay the State of the Union addresses (1790-2021), `static` against `online`."""
    from livelm.model import cache_root
    from livelm.replay import ReplayOptions, parse_strategies
    from livelm.source.sotu import write_sotu_stream

    stream, total = write_sotu_stream(cache_root() / "sotu.jsonl", cache_root() / "npm")
    every = max(1, total // docs)
    print(f"State of the Union: {total} paragraphs, 1790-2021; replaying every {every}th")
    options = ReplayOptions(
        stream=str(stream),
        strategies=parse_strategies("static,online"),
        out=out,
        every=every,
        max_docs=docs,
    )
    replay(options, model=model)


def run_replay_command(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """`replay` from parsed flags; `argv` is recorded in the report. `--boundary` and the
    option flags (`--lr 1e-3`) apply to every strategy they fit (`livelm.policy.strategy`)."""
    from livelm.replay import ReplayOptions, parse_strategies

    flags = {key: value for key in OPTIONS if (value := getattr(args, f"option_{key}")) is not None}
    strategies = tuple(
        dataclasses.replace(s, learner=s.learner.replace(boundary=args.boundary))
        for s in parse_strategies(args.strategy, flags)
    )
    options = ReplayOptions(
        stream=args.stream,
        strategies=strategies,
        out=args.out,
        max_docs=args.max_docs,
        every=args.every,
        reference=args.reference,
        reference_every=args.reference_every,
        fisher=args.fisher,
        fmt=args.fmt,
        skip_bad=args.skip_bad,
        surprise_window=args.surprise_window,
        recent_docs=args.recent_docs,
        save=args.save,
        group_by=args.group_by,
        report_every=args.report_every,
        idle_s=args.idle,
        command=shlex.join(["livelm", *argv]),
    )
    replay(options, model=args.model, device=args.device, quiet=args.quiet)
