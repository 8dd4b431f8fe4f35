"""`livelm replay`: run strategies over a stream, prequentially, and report as it goes.

Every strategy gets its own copy of the base model and the whole stream, so their figures are
comparable document for document. Every strategy runs as a `PolicyLearner` (its policy may be
empty), so drift events and surprise scores come with every run: `metrics.json` lists the
drifts, `surprises.jsonl` the most surprising documents of each window per strategy, and
`emerging_terms.json` the words on the rise at the end of the stream.

How the strategies share the stream:

- a stream file is read once per strategy, **one strategy after another**: one model copy in
  memory at a time, and each strategy's tokens/s is its own wall clock, end to end;
- stdin (`-`) can be read once only, and lazily: the strategies run **side by side**, each
  document going to each strategy in turn (every strategy holds its own model copy). A strategy
  steps as soon as it holds a full step, or once no line has come for `idle_s` seconds, so
  `tail -f feed.jsonl | livelm replay -` learns as lines arrive. Each strategy's tokens/s
  counts the time of its own steps.

The report (`livelm.report.write_report`) is rewritten every `report_every` documents and at the
end. A partial report covers what was scored so far: side by side, the same documents for every
strategy; one after another, the strategies done in full, the running one up to its position,
and none of those not started (named under `progress` in `metrics.json`). Stopped by Ctrl-C, the
replay writes the report once more and raises `ReplayInterrupted`, which says where it stopped.

With `save`, each learning strategy's final weights are written where `save_path` says, in the
format of a published version (`livelm.store.weights`): a LoRA learner's as a PEFT adapter
directory, a full-weight learner's as a model directory; with the tokenizer and `strategy.json`
(its name and config) beside them.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livelm import __version__
from livelm.document import Document
from livelm.model import LoadedModel
from livelm.policy import EmergingTerms, Strategy, parse_strategies
from livelm.replay_lane import Lane, StepCallback, reference_loss, save_learned
from livelm.report import DocRecord, ReportInput, StrategyResult, write_report
from livelm.source.arrivals import arrivals
from livelm.source.files import StreamFormat, StreamStats, read_stream

__all__ = [
    "ReplayInterrupted",
    "ReplayOptions",
    "parse_strategies",
    "reference_loss",
    "run_replay",
    "save_learned",
]


@dataclass(frozen=True)
class ReplayOptions:
    stream: str
    strategies: tuple[Strategy, ...]
    out: Path
    max_docs: int | None = None
    every: int = 1  # keep every n-th document: a thinned stream that still spans its whole time
    reference: str | None = None
    # Score the reference set every this many documents too, not only before and after: a
    # learner's forgetting moves with its last steps, and one reading at the end is one draw.
    reference_every: int = 0
    fisher: str | None = None  # EWC's documents; the reference documents when not given
    fmt: StreamFormat = "auto"
    skip_bad: bool = False
    surprise_window: int = 100  # surprises.jsonl lists the top documents of each such window
    surprise_top: int = 5
    recent_docs: int = 300  # emerging terms: these last documents against the earlier stream
    save: Path | None = None  # the final weights of each learning strategy go here (save_path)
    group_by: str | None = None  # a metadata field: the report breaks the loss down by its value
    report_every: int = 500  # rewrite the report every this many documents; 0: at the end only
    idle_s: float = 1.0  # stdin: step on what has come once no line came for this long
    command: str | None = None  # the command line that started the replay, for the report

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
        if self.reference_every < 0:
            raise ValueError(f"--reference-every must be 0 or more, not {self.reference_every}")
        if self.reference_every and self.reference is None:
            raise ValueError("--reference-every: name the documents with --reference")
        if self.report_every < 0:
            raise ValueError(
                f"--report-every must be 0 (at the end only) or more, not {self.report_every}"
            )
        if self.group_by is not None and not self.group_by.strip():
            raise ValueError("--group-by: name a metadata field, such as category")
        if not self.idle_s > 0:
            raise ValueError(f"idle_s must be positive, not {self.idle_s}")
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise ValueError("--strategy: a strategy is named twice")
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

    @property
    def side_by_side(self) -> bool:
        """Whether the strategies share one reading of the stream (stdin), or take turns."""
        return self.stream == "-"

    def save_path(self, strategy: Strategy) -> Path | None:
        """Where `strategy`'s weights go: `save` itself when it is the only strategy named,
        else `save/<name>` (characters a file name cannot hold, like `/`, become `_`); None
        without `save` or for a strategy that learns nothing."""
        if self.save is None or not strategy.learner.learns:
            return None
        if len(self.strategies) == 1:
            return self.save
        return self.save / re.sub(r"[^\w.+=:@-]", "_", strategy.name)

    def described(self) -> dict[str, Any]:
        """The options as the report shows them."""
        return {
            "stream": self.stream,
            "strategies": [s.name for s in self.strategies],
            "run": "side by side" if self.side_by_side else "one after another",
            "max_docs": self.max_docs,
            "every": self.every,
            "reference": self.reference,
            "reference_every": self.reference_every,
            "fisher": self.fisher,
            "format": self.fmt,
            "skip_bad": self.skip_bad,
            "group_by": self.group_by,
            "surprise_window": self.surprise_window,
            "surprise_top": self.surprise_top,
            "recent_docs": self.recent_docs,
            "report_every": self.report_every,
            "save": None if self.save is None else str(self.save),
        }


class ReplayInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the replay; the report was written for the documents scored so far.
    Its message says where it stopped, in one line."""


def _documents(options: ReplayOptions, stats: StreamStats) -> Iterator[Document]:
    docs: Iterable[Document] = read_stream(
        options.stream, fmt=options.fmt, skip_bad=options.skip_bad, stats=stats
    )
    docs = itertools.islice(docs, 0, None, options.every)
    return itertools.islice(docs, options.max_docs)


class _Replay:
    """The strategies over the stream, and the report written as they go."""

    def __init__(
        self, base: LoadedModel, options: ReplayOptions, on_step: StepCallback | None
    ) -> None:
        self.base = base
        self.options = options
        self.on_step = on_step
        self.reference = list(read_stream(options.reference)) if options.reference else []
        self.fisher = list(read_stream(options.fisher)) if options.fisher else self.reference
        self.stats = StreamStats()
        self.records: list[DocRecord] = []
        self.emerging = EmergingTerms(options.recent_docs)
        self.done: list[tuple[StrategyResult, list[dict[str, Any]]]] = []  # finished strategies
        self.running: list[Lane] = []
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.written_at = 0  # documents scored when the report was last written
        self.baseline = next((s.name for s in options.strategies if not s.learner.learns), None)

    # -- the two ways to run -------------------------------------------------------------------

    def in_turn(self) -> None:
        """A stream file: each strategy over the whole file, one after another."""
        for k, strategy in enumerate(self.options.strategies):
            lane = self._lane(strategy)
            self.written_at = 0
            stats = self.stats if k == 0 else StreamStats()
            for doc in _documents(self.options, stats):
                if k == 0:
                    self._see(doc)
                lane.add(doc)
                self._maybe_write(lane.tally.docs)
            if k == 0:
                self._check_not_empty()
            lane.finish()
            self.done.append((lane.result("complete"), lane.surprises()))
            self.running = []
            del lane
            gc.collect()

    def side_by_side(self) -> None:
        """stdin: one lazy reading of the stream, each document to every strategy in turn."""
        lanes = [self._lane(s) for s in self.options.strategies]
        for doc in arrivals(_documents(self.options, self.stats), self.options.idle_s):
            if doc is None:  # the stream paused: learn from what came, and show it
                for lane in lanes:
                    lane.flush()
                scored = min(lane.tally.docs for lane in lanes)
                if scored > self.written_at and self.options.report_every:
                    self.write("running")
                    self.written_at = scored
                continue
            self._see(doc)
            for lane in lanes:
                lane.add(doc)
            self._maybe_write(min(lane.tally.docs for lane in lanes))
        self._check_not_empty()
        for lane in lanes:
            lane.finish()
        self.done = [(lane.result("complete"), lane.surprises()) for lane in lanes]
        self.running = []

    # -- helpers ---------------------------------------------------------------------------------

    def _lane(self, strategy: Strategy) -> Lane:
        lane = Lane(self.base, strategy, self.options, self.reference, self.fisher, self.on_step)
        self.running.append(lane)
        return lane

    def _see(self, doc: Document) -> None:
        """A document read for the first time: its record, and its words for emerging terms."""
        self.records.append(DocRecord.of(len(self.records), doc, self.options.group_by))
        self.emerging.update(doc.text)

    def _check_not_empty(self) -> None:
        if not self.stats.documents:
            raise ValueError(
                f"stream {self.options.stream}: no document with text ({self.stats.empty} "
                f"empty, {self.stats.bad} malformed): nothing to replay"
            )

    def _maybe_write(self, scored: int) -> None:
        every = self.options.report_every
        if every and scored // every > self.written_at // every:
            started = time.perf_counter()
            self.write("running")
            self.written_at = scored
            if not self.options.side_by_side:
                for lane in self.running:
                    lane.paused_s += time.perf_counter() - started

    def where(self) -> str:
        """Where the replay is, in words, for the report and the interrupted line."""
        names = [s.name for s in self.options.strategies]
        if not self.running:
            return f"all {len(names)} strategies done"
        if self.options.side_by_side:
            scored = min(lane.tally.docs for lane in self.running)
            return f"document {scored} (the strategies side by side)"
        lane = self.running[0]
        k = names.index(lane.strategy.name) + 1
        return f"document {lane.tally.docs} of strategy {lane.strategy.name} ({k} of {len(names)})"

    def covered(self) -> str:
        """What a partial report covers, in words."""
        if self.options.side_by_side:
            docs = [lane.tally.docs for lane in self.running] or [
                r.tally.docs for r, _ in self.done
            ]
            more = " (some a few more)" if max(docs) > min(docs) else ""
            return f"the first {min(docs)} documents for every strategy{more}"
        started = [r.name for r, _ in self.done] + [lane.strategy.name for lane in self.running]
        pending = [s.name for s in self.options.strategies if s.name not in started]
        parts = [f"{r.name} {r.tally.docs}" for r, _ in self.done]
        parts += [f"{lane.strategy.name} {lane.tally.docs}" for lane in self.running]
        text = "documents scored: " + ", ".join(parts)
        return text + (f"; not started: {', '.join(pending)}" if pending else "")

    def write(self, status: str) -> dict[str, Any]:
        finished = {r.name for r, _ in self.done}
        running = [lane for lane in self.running if lane.strategy.name not in finished]
        results = [r for r, _ in self.done] + [lane.result(status) for lane in running]
        surprises = [s for _, found in self.done for s in found]
        surprises += [s for lane in running for s in lane.surprises()]
        started = {r.name for r in results}
        note = None
        if status == "running":
            note = f"Running, at {self.where()}; this report covers {self.covered()}."
        elif status == "interrupted":
            note = f"Interrupted at {self.where()}; this report covers {self.covered()}."
        extra = {
            "status": status,
            "progress": {
                "documents_read": len(self.records),
                "strategies_pending": [
                    s.name for s in self.options.strategies if s.name not in started
                ],
                "note": note,
            },
            "command": self.options.command,
            "options": self.options.described(),
            "livelm_version": __version__,
            "started": self.started,
        }
        return write_report(
            self.options.out,
            ReportInput(
                model=self.base.name,
                stream=self.options.stream,
                results=results,
                records=self.records,
                stream_stats={
                    "documents": self.stats.documents,
                    "empty": self.stats.empty,
                    "bad": self.stats.bad,
                    "errors": self.stats.errors[:10],
                },
                surprises=surprises,
                emerging=self.emerging,
                group_by=self.options.group_by,
                baseline=self.baseline,
                extra=extra,
            ),
        )


@contextlib.contextmanager
def _no_second_interrupt() -> Iterator[None]:
    """While the report of an interrupted replay is written, a second Ctrl-C waits (it would
    leave the report half rewritten). Signals can be set from the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_replay(
    base: LoadedModel, options: ReplayOptions, on_step: StepCallback | None = None
) -> dict[str, object]:
    """Run every strategy over the stream; write metrics.json, docs.jsonl, curve.png,
    report.html, surprises.jsonl and emerging_terms.json as it goes and at the end.

    Raises `ReplayInterrupted` (a KeyboardInterrupt) when stopped by Ctrl-C, after writing the
    report of what was scored; ValueError for a stream without any document that has text.
    """
    options.out.mkdir(parents=True, exist_ok=True)
    replay = _Replay(base, options, on_step)
    try:
        if options.side_by_side:
            replay.side_by_side()
        else:
            replay.in_turn()
    except KeyboardInterrupt:
        with _no_second_interrupt():
            where, covered = replay.where(), replay.covered()
            if replay.records:
                replay.write("interrupted")
                covered = f"{options.out}/report.html covers {covered}"
            else:
                covered = "no document was scored, so no report was written"
        raise ReplayInterrupted(f"interrupted at {where}; {covered}") from None
    return replay.write("complete")
