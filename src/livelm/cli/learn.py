"""`livelm learn` (a learner worker on a Redis stream) and `livelm ingest` (a stream file into
one)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from livelm.model import DEFAULT_MODEL
from livelm.policy import Strategy, known_strategies, parse_strategy
from livelm.source.files import read_stream
from livelm.source.redis_stream import RedisSpec, RedisStreamSource
from livelm.worker import WorkerSettings, build_worker

SOURCE_HELP = "redis://host:port/db?stream=NAME&group=GROUP[&consumer=C][&claim_idle_ms=MS]"


def add_learn_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # The defaults, without building settings (whose loop settings import torch).
    d = {f.name: f.default for f in dataclasses.fields(WorkerSettings)}
    p = sub.add_parser(
        "learn",
        help="a learner worker on a Redis stream (data-parallel under torchrun)",
        description="Learn from a Redis stream and publish versions to a store that "
        "`livelm serve --follow STORE` replicas serve. Under `torchrun --nproc-per-node N -m "
        "livelm learn ...` the N ranks learn data-parallel and rank 0 publishes.",
    )
    p.add_argument("--source", required=True, help=SOURCE_HELP)
    p.add_argument("--store", type=Path, required=True, help="the snapshot directory")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--strategy", default="online", help=f"presets: {', '.join(known_strategies())}")
    p.add_argument("--device", default=d["device"])
    p.add_argument("--docs-per-step", type=int, default=None, help="per rank")
    p.add_argument("--publish-every-steps", type=int, default=d["publish_every_steps"])
    p.add_argument("--publish-every-s", type=float, default=d["publish_every_s"])
    p.add_argument("--keep-last", type=int, default=d["keep_last"])
    p.add_argument("--guard-max-rise", type=float, default=d["guard_max_rise"])
    p.add_argument("--guard-max-total-rise", type=float, default=d["guard_max_total_rise"])
    p.add_argument("--canary", type=Path, default=None)
    p.add_argument(
        "--boundary",
        default="auto",
        help="the token every document starts with: auto, bos, eos or a token (as serve's)",
    )
    p.add_argument("--block-ms", type=int, default=d["block_ms"])
    p.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="S",
        help="stop once the stream has been empty for S seconds (after publishing)",
    )
    p.add_argument("--max-steps", type=int, default=None)

    p = sub.add_parser("ingest", help="add a stream file's documents to a Redis stream")
    p.add_argument("stream", help="a JSONL or text file, or - for stdin")
    p.add_argument("--to", required=True, help=SOURCE_HELP)
    p.add_argument("--batch", type=int, default=500, help="documents per round trip")


def _strategy(spec: str, boundary: str) -> Strategy:
    """`--strategy` and `--boundary`, parsed once, here."""
    strategy = parse_strategy(spec)
    return dataclasses.replace(strategy, learner=strategy.learner.replace(boundary=boundary))


def run_learn(args: argparse.Namespace) -> None:
    from livelm.learner.distributed import init_from_env  # torch, which `--help` does without

    settings = WorkerSettings(
        source=args.source,
        store=args.store,
        model=args.model,
        strategy=_strategy(args.strategy, args.boundary),
        device=args.device,
        docs_per_step=args.docs_per_step,
        publish_every_steps=args.publish_every_steps,
        publish_every_s=args.publish_every_s,
        keep_last=args.keep_last,
        guard_max_rise=args.guard_max_rise,
        guard_max_total_rise=args.guard_max_total_rise,
        canary=args.canary,
        block_ms=args.block_ms,
        exit_when_idle_s=args.exit_when_idle,
        max_steps=args.max_steps,
    )
    sync = init_from_env()
    if sync is not None:  # which rank, and which start of it (torchrun restarts failed groups)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        print(f"livelm learn: rank {sync.rank} of {sync.world}, attempt {attempt}", file=sys.stderr)
    worker = build_worker(settings, sync)
    try:
        worker.bootstrap()
        worker.run()
        docs, tokens, seconds = worker.totals()
    finally:
        worker.close()
    if worker.rank == 0:
        ranks = 1 if sync is None else sync.world
        rate = f" ({tokens / seconds:.0f} tokens/s)" if seconds else ""
        print(
            f"{ranks} rank(s) learned {docs} documents and {tokens} tokens in {seconds:.2f} s"
            f"{rate}; live version {worker.live.version if worker.live else '-'}"
        )


def run_ingest(args: argparse.Namespace) -> None:
    source = RedisStreamSource(RedisSpec.parse(args.to, consumer="ingest"))
    counts = {"added": 0, "duplicate": 0, "conflict": 0}
    started = time.perf_counter()
    batch = []
    docs = read_stream(args.stream)
    for doc in docs:
        batch.append(doc)
        if len(batch) >= args.batch:
            for r in source.add(batch):
                counts[r] += 1
            batch = []
    if batch:
        for r in source.add(batch):
            counts[r] += 1
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    print(
        f"{counts['added']} added, {counts['duplicate']} already there, {counts['conflict']} "
        f"refused (their id holds another text) in {seconds:.2f} s "
        f"({total / seconds if seconds else 0:.0f} documents/s)",
        file=sys.stderr,
    )
    source.close()
