"""`livelm replay`: run strategies over a stream file, prequentially, and report.

Each strategy gets its own copy of the base model and the whole stream; their figures are then
comparable document for document.
"""

from __future__ import annotations

import copy
import gc
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from livelm.document import Document
from livelm.learner import Learner, LearnerConfig, StepReport, Tally, get_strategy, prequential
from livelm.model import LoadedModel
from livelm.report import StrategyResult, build_metrics, plot_curves, write_html, write_metrics
from livelm.source.files import StreamFormat, StreamStats, read_stream

StepCallback = Callable[[str, StepReport, Tally], None]


@dataclass(frozen=True)
class ReplayOptions:
    stream: str
    strategies: tuple[tuple[str, LearnerConfig], ...]
    out: Path
    max_docs: int | None = None
    every: int = 1  # keep every n-th document: a thinned stream that still spans its whole time
    reference: str | None = None
    fmt: StreamFormat = "auto"
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError("--strategy: name at least one strategy")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"--max-docs must be at least 1, not {self.max_docs}")
        if self.every < 1:
            raise ValueError(f"--every must be at least 1, not {self.every}")


def parse_strategies(spec: str) -> tuple[tuple[str, LearnerConfig], ...]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"--strategy {spec!r} names a strategy twice")
    return tuple((name, get_strategy(name)) for name in names)


def _documents(options: ReplayOptions, stats: StreamStats) -> Iterator[Document]:
    docs: Iterable[Document] = read_stream(
        options.stream, fmt=options.fmt, skip_bad=options.skip_bad, stats=stats
    )
    docs = itertools.islice(docs, 0, None, options.every)
    return itertools.islice(docs, options.max_docs)


def reference_loss(learner: Learner, docs: Sequence[Document]) -> float:
    """Token-weighted loss of fixed documents under the learner's current weights."""
    scores = learner.score([learner.encode(d) for d in docs])
    tokens = sum(s.tokens for s in scores if s.tokens)
    if not tokens:
        return math.nan
    return sum(s.loss * s.tokens for s in scores if s.tokens) / tokens


def run_replay(
    base: LoadedModel, options: ReplayOptions, on_step: StepCallback | None = None
) -> dict[str, object]:
    """Run every strategy over the stream; write metrics.json, curve.png and report.html."""
    options.out.mkdir(parents=True, exist_ok=True)
    reference = list(read_stream(options.reference)) if options.reference else []
    stats = StreamStats()
    # stdin can be read once only: keep it for the strategies after the first.
    buffered = list(_documents(options, stats)) if options.stream == "-" else None
    results: list[StrategyResult] = []
    for name, config in options.strategies:
        learner = Learner(copy.deepcopy(base.model), base.tokenizer, config)
        before = reference_loss(learner, reference) if reference else None
        run_stats = StreamStats() if results or buffered is not None else stats
        docs = buffered if buffered is not None else _documents(options, run_stats)
        tally = Tally()
        for report in prequential(learner, docs):
            tally.add(report)
            if on_step is not None:
                on_step(name, report, tally)
        tally.stop()
        after = reference_loss(learner, reference) if reference else None
        results.append(StrategyResult(name, tally, config.to_dict(), before, after))
        del learner
        gc.collect()

    metrics = build_metrics(
        base.name,
        options.stream,
        results,
        {
            "documents": stats.documents,
            "empty": stats.empty,
            "bad": stats.bad,
            "errors": stats.errors[:10],
        },
    )
    write_metrics(options.out / "metrics.json", metrics)
    plot_curves(options.out / "curve.png", results, f"{base.name} on {Path(options.stream).name}")
    write_html(options.out / "report.html", metrics)
    return metrics
