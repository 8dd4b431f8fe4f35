"""`livelm replay`: run strategies over a stream file, prequentially, and report.

Each strategy gets its own copy of the base model and the whole stream; their figures are then
comparable document for document. Every strategy runs as a `PolicyLearner` (its policy may be
empty), so drift events and surprise scores come with every run: `metrics.json` lists the
drifts, `surprises.jsonl` the most surprising documents of each window per strategy, and
`emerging_terms.json` the words on the rise at the end of the stream.

With `save`, each learning strategy's final weights are written where `save_path` says, in the
format of a published version (`livelm.store.weights`): a LoRA learner's as a PEFT adapter
directory, a full-weight learner's as a model directory; with the tokenizer and `strategy.json`
(its name and config) beside them.
"""

from __future__ import annotations

import copy
import gc
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document
from livelm.learner import Learner, StepReport, Tally, batches
from livelm.model import LoadedModel
from livelm.policy import EmergingTerms, PolicyLearner, Strategy, TopSurprises, parse_strategies
from livelm.report import StrategyResult, build_metrics, plot_curves, write_html, write_metrics
from livelm.source.files import StreamFormat, StreamStats, read_stream
from livelm.store.weights import save_weights

__all__ = ["ReplayOptions", "parse_strategies", "reference_loss", "run_replay", "save_learned"]

StepCallback = Callable[[str, StepReport, Tally], None]


@dataclass(frozen=True)
class ReplayOptions:
    stream: str
    strategies: tuple[Strategy, ...]
    out: Path
    max_docs: int | None = None
    every: int = 1  # keep every n-th document: a thinned stream that still spans its whole time
    reference: str | None = None
    fisher: str | None = None  # EWC's documents; the reference documents when not given
    fmt: StreamFormat = "auto"
    skip_bad: bool = False
    surprise_window: int = 100  # surprises.jsonl lists the top documents of each such window
    surprise_top: int = 5
    recent_docs: int = 300  # emerging terms: these last documents against the earlier stream
    save: Path | None = None  # the final weights of each learning strategy go here (save_path)

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError("--strategy: name at least one strategy")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"--max-docs must be at least 1, not {self.max_docs}")
        if self.every < 1:
            raise ValueError(f"--every must be at least 1, not {self.every}")
        if self.surprise_window < 1 or self.surprise_top < 1:
            raise ValueError("--surprise-window and the top count must be at least 1")
        if self.recent_docs < 1:
            raise ValueError(f"--recent-docs must be at least 1, not {self.recent_docs}")
        if self.save is not None:
            if not any(s.learner.learns for s in self.strategies):
                raise ValueError(
                    "--save: no strategy named learns, so there are no weights to save"
                )
            if self.save.exists() and not self.save.is_dir():
                raise ValueError(f"--save {self.save}: exists and is not a directory")
            paths = [self.save_path(s) for s in self.strategies if s.learner.learns]
            if len(set(paths)) != len(paths):
                raise ValueError("--save: two strategies' names map to one directory; rename one")

    def save_path(self, strategy: Strategy) -> Path | None:
        """Where `strategy`'s weights go: `save` itself when it is the only strategy named,
        else `save/<name>` (characters a file name cannot hold, like `/`, become `_`); None
        without `save` or for a strategy that learns nothing."""
        if self.save is None or not strategy.learner.learns:
            return None
        if len(self.strategies) == 1:
            return self.save
        return self.save / re.sub(r"[^\w.+=:@-]", "_", strategy.name)


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
    """Run every strategy over the stream; write metrics.json, curve.png, report.html,
    surprises.jsonl and emerging_terms.json."""
    options.out.mkdir(parents=True, exist_ok=True)
    reference = list(read_stream(options.reference)) if options.reference else []
    fisher = list(read_stream(options.fisher)) if options.fisher else reference
    stats = StreamStats()
    # stdin can be read once only: keep it for the strategies after the first.
    buffered = list(_documents(options, stats)) if options.stream == "-" else None
    emerging = EmergingTerms(options.recent_docs)
    results: list[StrategyResult] = []
    surprises: list[dict[str, Any]] = []
    for strategy in options.strategies:
        learner = Learner(copy.deepcopy(base.model), base.tokenizer, strategy.learner)
        before = reference_loss(learner, reference) if reference else None
        stepper = PolicyLearner(learner, strategy.policy, reference=fisher)
        run_stats = StreamStats() if results or buffered is not None else stats
        docs = buffered if buffered is not None else _documents(options, run_stats)
        top = TopSurprises(options.surprise_window, options.surprise_top)
        tally = Tally()
        for batch in batches(stepper, docs):
            report = stepper.step(batch)
            for i, (encoded, score) in enumerate(zip(batch, report.scores, strict=True)):
                top.add(tally.docs + i, encoded.doc, score.loss, score.surprise)
                if not results:  # the words of the stream are the same for every strategy
                    emerging.update(encoded.doc.text)
            tally.add(report)
            if on_step is not None:
                on_step(strategy.name, report, tally)
        tally.stop()
        after = reference_loss(learner, reference) if reference else None
        if (directory := options.save_path(strategy)) is not None:
            save_learned(learner.model, base.tokenizer, strategy, directory)
        results.append(
            StrategyResult(
                strategy.name,
                tally,
                strategy.to_dict(),
                before,
                after,
                drift_events=[e.index for e in stepper.drift_events],
                drift=[e.to_dict() for e in stepper.drift_events],
                policy_stats={
                    "replayed_docs": stepper.replayed,
                    "rewarms": learner.rewarms,
                    "optimizer_resets": learner.optimizer_resets,
                    "webhook_failures": stepper.webhook_failures,
                },
                boundary=learner.encoder.resolved.to_dict(),
            )
        )
        surprises += [
            {"strategy": strategy.name, "window": [start, end], "rank": rank, **s.to_dict()}
            for start, end, found in top.windows()
            for rank, s in enumerate(found, start=1)
        ]
        del learner, stepper
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
    _write_text(options.out / "surprises.jsonl", "".join(json.dumps(s) + "\n" for s in surprises))
    _write_text(
        options.out / "emerging_terms.json", json.dumps(emerging.to_dict(), indent=2) + "\n"
    )
    plot_curves(options.out / "curve.png", results, f"{base.name} on {Path(options.stream).name}")
    write_html(options.out / "report.html", metrics, emerging.top(10))
    return metrics


def save_learned(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    strategy: Strategy,
    directory: Path,
) -> None:
    """A learner's weights (a PEFT adapter or a model directory), its tokenizer and
    `strategy.json` into `directory`, created if needed; files already there are replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory)
    tokenizer.save_pretrained(directory)
    described = {"name": strategy.name, "config": strategy.to_dict()}
    _write_text(directory / "strategy.json", json.dumps(described, indent=2, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Written to a temporary name, then renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
