"""Offline evaluation of `livelm.recommend` on the HuffPost news stream: readers simulated from
the stream's own structure, the live model against the static one, TF-IDF and random.

    nice -n 19 .venv/bin/python benchmarks/recommend.py      # 72 readers: 15 min here, 1 thread
    .venv/bin/python benchmarks/recommend.py --start 300 --segment 50 --segments 2 --readers 4

Protocol. The stream (`../shared/data/news-huffpost-2018-2022.jsonl`, in time order) is learned
by livelm's default learner (`--strategy online`, as `livelm replay` and `serve` run it) in
segments: before segment s (documents [c_s, c_s + segment), c_s = start + s * segment) the live
model has learned every document before c_s, and a serving copy of it (bf16 where the CPU runs
bf16, as the server's) ranks the readers whose target lies in segment s. The static model is the
same base model, never updated, served alike.

A reader is a key of the stream, in time order:
- `author`: a byline (`authors`; documents without one are nobody's);
- `category`: a section (`category`).
A reader's target is one of its documents in the segment with at least `--history` documents
of the same reader before it; its history is those last `--history` documents (oldest first),
and its candidates are the target and `--negatives` other documents from the target's day (then
the days around it, nearest first) that are not the reader's. Targets are sampled (seeded) up
to `--readers` per protocol and segment. Candidates are shuffled (seeded) before ranking.

Slices. Each reader falls, by a hash of its protocol and target id, in the `tune` slice or the
`report` slice (about half each). The choices the library makes by measurement (PMI summed or
per token; which fusion is `fused` and the default) are read off the tune slice only; the
report slice's figures are the ones to quote. "New entities" are the readers whose target
mentions a name (a capitalized word never written in lower case anywhere in the loaded stream)
that no document before `--prior` mentions and some learned document (before c_s) does: names
the stream brought after its start, which the live model has read and the static one may not.

Metrics: the target's rank r among the 1 + negatives candidates; hit@10 (r <= 10), nDCG@10
(1 / log2(1 + r) when r <= 10) and MRR (1 / r), averaged over readers. With 20 candidates a
random ranking scores hit@10 0.50, nDCG@10 ~0.25 and MRR ~0.18.

Methods: `random`; `tfidf` (fitted on the documents before c_s and the reader's texts); for
each model, `pmi`, `pmi-mean` and `embed` (see `livelm.recommend.config`); and reciprocal rank
fusions. Prints markdown tables (tune, then report, then paired live-minus-static and
live-minus-TF-IDF MRR differences with their standard errors) and writes them to `--out`, and
each reader's ranks to `--out` with `.readers.jsonl` (`--tables-from` prints the tables again
from that file).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import platform
import random
import re
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from livelm.document import Document
from livelm.learner.encoding import Encoder
from livelm.learner.prequential import batches
from livelm.model import autocast_dtype_for, load_model
from livelm.policy import build_learner, core_learner, parse_strategy
from livelm.recommend import Ranker, RecommendLimits, Scorer, Signals, TextStats, parse_method
from livelm.server.versions import serving_copy
from livelm.source.files import read_stream
from paths import NEWS, ROOT

PROTOCOLS = {"author": "authors", "category": "category"}
# Rows of the tables: (label, model, method). `tfidf` and `random` need no model.
ROWS: tuple[tuple[str, str | None, str], ...] = (
    ("random", None, "random"),
    ("tfidf", None, "tfidf"),
    ("static pmi", "static", "pmi"),
    ("static pmi-mean", "static", "pmi-mean"),
    ("static embed", "static", "embed"),
    ("live pmi", "live", "pmi"),
    ("live pmi-mean", "live", "pmi-mean"),
    ("live embed", "live", "embed"),
    ("static pmi+tfidf", "static", "pmi+tfidf"),
    ("static pmi-mean+tfidf", "static", "pmi-mean+tfidf"),
    ("static embed+tfidf", "static", "embed+tfidf"),
    ("static pmi+embed+tfidf", "static", "pmi+embed+tfidf"),
    ("live pmi+tfidf", "live", "pmi+tfidf"),
    ("live pmi-mean+tfidf", "live", "pmi-mean+tfidf"),
    ("live embed+tfidf", "live", "embed+tfidf"),
    ("live pmi+embed+tfidf", "live", "pmi+embed+tfidf"),
)
_NAME = re.compile(r"\b[A-Z][a-zA-Z'\u2019.-]*[a-zA-Z]\b")  # \u2019: a typographic apostrophe
_WORD = re.compile(r"\b[a-z][a-z'\u2019.-]*[a-z]\b")


@dataclass
class Reader:
    protocol: str
    key: str
    segment: int
    target: int  # stream index
    history: list[int]
    candidates: list[int]  # the target among them, shuffled
    slice: str  # tune or report
    fresh: bool  # the target names an entity new since --prior, learned before the checkpoint
    ranks: dict[str, int] = field(default_factory=dict)  # row label -> the target's rank


def _hash_unit(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def _day(doc: Document) -> str:
    return (doc.time or "")[:10]


def entity_index(docs: Sequence[Document]) -> list[set[str]]:
    """Each document's names: capitalized words that no document writes in lower case."""
    lower = {w for d in docs for w in _WORD.findall(d.text)}
    return [{w for w in _NAME.findall(d.text) if w.lower() not in lower} for d in docs]


def simulate(
    docs: Sequence[Document], args: argparse.Namespace, checkpoints: Sequence[int]
) -> list[Reader]:
    """The readers of every protocol and segment (see the module docstring)."""
    names = entity_index(docs)
    first_seen: dict[str, int] = {}
    for i, found in enumerate(names):
        for name in found:
            first_seen.setdefault(name, i)
    by_day: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        by_day[_day(d)].append(i)
    days = sorted(by_day)
    day_at = {d: k for k, d in enumerate(days)}
    rng = random.Random(args.seed)
    readers: list[Reader] = []
    for protocol in args.protocols:
        field_name = PROTOCOLS[protocol]
        seen: dict[str, list[int]] = defaultdict(list)  # reader -> its documents so far
        eligible: dict[int, list[tuple[str, int, list[int]]]] = defaultdict(list)
        for i, d in enumerate(docs):
            key = str(d.meta.get(field_name) or "").strip()
            if not key:
                continue
            for s, c in enumerate(checkpoints):
                if c <= i < c + args.segment and len(seen[key]) >= args.history:
                    eligible[s].append((key, i, seen[key][-args.history :]))
            seen[key].append(i)
        for s, c in enumerate(checkpoints):
            picked = rng.sample(eligible[s], min(args.readers, len(eligible[s])))
            for key, target, history in sorted(picked, key=lambda p: p[1]):
                negatives: list[int] = []
                k = day_at[_day(docs[target])]
                for offset in range(len(days)):  # the target's day, then 1 day off, 2, ...
                    pool = [
                        j
                        for day in {days[x] for x in (k - offset, k + offset) if 0 <= x < len(days)}
                        for j in by_day[day]
                        if j != target and str(docs[j].meta.get(field_name) or "").strip() != key
                    ]
                    rng.shuffle(pool)
                    negatives += pool[: args.negatives - len(negatives)]
                    if len(negatives) >= args.negatives:
                        break
                candidates = [target, *negatives]
                rng.shuffle(candidates)
                fresh = any(
                    args.prior <= first_seen[n] < c and first_seen[n] != target
                    for n in names[target]
                )
                part = "tune" if _hash_unit(f"{protocol}:{docs[target].id}") < 0.5 else "report"
                readers.append(Reader(protocol, key, s, target, history, candidates, part, fresh))
    return readers


def served(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    return serving_copy(model, dtype)


def scorer_for(
    model: torch.nn.Module, encoder: Encoder, pad_id: int, memo: dict[tuple[int, ...], TextStats]
) -> Scorer:
    tokenizer = encoder.tokenizer

    def tokenize(text: str) -> list[int]:
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    return Scorer(
        model,
        tokenize,
        encoder.boundary,
        pad_id,
        max_tokens=encoder.max_tokens,
        token_budget=512,
        row_tokens=256,
        memo=memo,
    )


def evaluate(
    reader: Reader,
    docs: Sequence[Document],
    rankers: dict[str, Ranker],
    corpus: Sequence[str],
    seed: int,
) -> None:
    history = [docs[i] for i in reader.history]
    candidates = [docs[i] for i in reader.candidates]
    target = reader.candidates.index(reader.target)
    signals: dict[str, Signals] = {}
    signals["static"] = rankers["static"].signals(
        history, candidates, parse_method("pmi+embed+tfidf"), corpus
    )
    signals["live"] = rankers["live"].signals(history, candidates, parse_method("pmi+embed"))
    signals["live"].tfidf = signals["static"].tfidf
    for label, model, method in ROWS:
        ranked = rankers["static"].rank(signals[model or "static"], parse_method(method), seed)
        reader.ranks[label] = next(r.rank for r in ranked if r.index == target)


def metrics(ranks: Sequence[int]) -> tuple[float, float, float]:
    """hit@10, nDCG@10 and MRR of the target's ranks."""
    r = np.array(ranks, dtype=np.float64)
    hit = float(np.mean(r <= 10))
    ndcg = float(np.mean(np.where(r <= 10, 1.0 / np.log2(1.0 + r), 0.0)))
    return hit, ndcg, float(np.mean(1.0 / r))


def table(readers: Sequence[Reader], part: str, protocols: Sequence[str]) -> list[str]:
    chosen = [r for r in readers if r.slice == part]
    header = "| method |"
    rule = "|---|"
    groups: list[tuple[str, list[Reader]]] = []
    for p in protocols:
        mine = [r for r in chosen if r.protocol == p]
        groups.append((f"{p} (n={len(mine)})", mine))
        fresh = [r for r in mine if r.fresh]
        groups.append((f"{p}, new entities (n={len(fresh)})", fresh))
    for title, _ in groups:
        header += f" {title}: hit@10 | nDCG@10 | MRR |"
        rule += "---|---|---|"
    lines = [header, rule]
    for label, _, _ in ROWS:
        row = f"| {label} |"
        for _, group in groups:
            if group:
                hit, ndcg, mrr = metrics([r.ranks[label] for r in group])
                row += f" {hit:.3f} | {ndcg:.3f} | {mrr:.3f} |"
            else:
                row += " - | - | - |"
        lines.append(row)
    return lines


# Paired comparisons (first minus second), reader by reader.
COMPARISONS = (
    ("live pmi", "static pmi"),
    ("live embed", "static embed"),
    ("live embed+tfidf", "static embed+tfidf"),
    ("live pmi+embed+tfidf", "static pmi+embed+tfidf"),
    ("live embed+tfidf", "tfidf"),
    ("live pmi+embed+tfidf", "tfidf"),
)


def differences(readers: Sequence[Reader], part: str, protocols: Sequence[str]) -> list[str]:
    """MRR differences of `COMPARISONS` over the same readers: mean +- its standard error."""
    chosen = [r for r in readers if r.slice == part]
    groups: list[tuple[str, list[Reader]]] = []
    for p in protocols:
        mine = [r for r in chosen if r.protocol == p]
        groups += [(p, mine), (f"{p}, new entities", [r for r in mine if r.fresh])]
    lines = [
        "| MRR difference |" + "".join(f" {title} |" for title, _ in groups),
        "|---|" + "---|" * len(groups),
    ]
    for first, second in COMPARISONS:
        row = f"| {first} - {second} |"
        for _, group in groups:
            diff = np.array([1 / r.ranks[first] - 1 / r.ranks[second] for r in group])
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            row += f" {diff.mean():+.3f} ± {se:.3f} |" if len(diff) else " - |"
        lines.append(row)
    return lines


def best(readers: Sequence[Reader], part: str, fusions_only: bool = False) -> str:
    """The row with the highest MRR averaged over the protocols, on `part` (among the live
    model's fusions with `fusions_only`: the choice of what `fused` names)."""
    chosen = [r for r in readers if r.slice == part]
    protocols = sorted({r.protocol for r in chosen})

    def mean_mrr(label: str) -> float:
        return float(
            np.mean(
                [metrics([r.ranks[label] for r in chosen if r.protocol == p])[2] for p in protocols]
            )
        )

    labels = [
        label
        for label, model, method in ROWS
        if not fusions_only or (model == "live" and "+" in method)
    ]
    return max(labels, key=mean_mrr)


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", type=Path, default=NEWS)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--strategy", default="online", help="the live model's learner")
    parser.add_argument(
        "--start", type=int, default=1000, help="documents learned before the first segment"
    )
    parser.add_argument("--segment", type=int, default=200, help="documents per segment")
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--readers", type=int, default=12, help="per protocol and segment")
    parser.add_argument("--history", type=int, default=5, help="history items per reader")
    parser.add_argument("--negatives", type=int, default=19)
    parser.add_argument("--prior", type=int, default=500, help="names seen before this are old")
    parser.add_argument("--protocols", default="author,category")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recommend" / "news.md")
    parser.add_argument(
        "--tables-from",
        type=Path,
        default=None,
        help="print the tables of a finished run from its .readers.jsonl (nothing is ranked)",
    )
    args = parser.parse_args()
    if args.tables_from is not None:
        rerender(args.tables_from, args.out)
        return
    args.protocols = [p.strip() for p in args.protocols.split(",")]
    if unknown := [p for p in args.protocols if p not in PROTOCOLS]:
        parser.error(f"--protocols: unknown {unknown}; choose from {sorted(PROTOCOLS)}")
    if not 0 < args.prior <= args.start:
        parser.error("--prior must lie in (0, --start]")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    total = args.start + args.segments * args.segment
    docs = list(read_stream(args.stream))[:total]
    checkpoints = [args.start + s * args.segment for s in range(args.segments)]
    readers = simulate(docs, args, checkpoints)
    log(f"{len(docs)} documents, {len(readers)} readers", started)

    base = load_model(args.model, device="cpu")
    strategy = parse_strategy(args.strategy)
    learner = build_learner(
        copy.deepcopy(base.model), base.tokenizer, strategy.learner, strategy.policy
    )
    core = core_learner(learner)
    encoder = core.encoder
    pad_id = int(
        base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else encoder.boundary
    )
    dtype = autocast_dtype_for(torch.device("cpu"), strategy.learner.precision)
    limits = RecommendLimits()
    static = Ranker(scorer_for(served(base.model, dtype), encoder, pad_id, {}), limits)
    learned = 0
    learn_s = 0.0
    rank_s = 0.0
    learned_tokens = 0
    for s, c in enumerate(checkpoints):
        t0 = time.perf_counter()
        for batch in batches(learner, docs[learned:c]):
            learned_tokens += learner.step(batch).tokens
        learned = c
        learn_s += time.perf_counter() - t0
        live = Ranker(scorer_for(served(core.model, dtype), encoder, pad_id, {}), limits)
        rankers = {"static": static, "live": live}
        log(f"segment {s}: learned {c} documents ({learned_tokens} tokens)", started)
        corpus = [d.text for d in docs[:c]]
        t0 = time.perf_counter()
        mine = [r for r in readers if r.segment == s]
        for k, reader in enumerate(mine):
            evaluate(reader, docs, rankers, corpus, args.seed)
            if (k + 1) % 10 == 0:
                log(f"segment {s}: {k + 1}/{len(mine)} readers ranked", started)
        rank_s += time.perf_counter() - t0

    command = "benchmarks/recommend.py " + shlex.join(sys.argv[1:])
    header = (
        f"`{command}`: model {args.model}, live = `{args.strategy}` after each checkpoint "
        f"{checkpoints} of {args.stream.name} (segments of {args.segment}); {args.history} "
        f"history items, 1 target + {args.negatives} negatives; {len(readers)} readers. "
        f"{platform.machine()}, {args.threads} thread(s); learning {learn_s:.0f} s "
        f"({learned_tokens / max(learn_s, 1e-9):.0f} tokens/s), ranking {rank_s:.0f} s."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".readers.jsonl"), "w") as f:
        f.write(json.dumps({"run": header, "protocols": args.protocols}) + "\n")
        for r in readers:
            f.write(json.dumps(dataclasses.asdict(r) | {"target_id": docs[r.target].id}) + "\n")
    write_report(header, readers, args.protocols, args.out)
    log(f"done; written to {args.out}", started)


def write_report(
    header: str, readers: Sequence[Reader], protocols: Sequence[str], out: Path
) -> None:
    lines = [
        header,
        "",
        "Tune slice (choices are made here):",
        "",
        *table(readers, "tune", protocols),
        "",
        f"Best on the tune slice (MRR, mean over protocols): **{best(readers, 'tune')}**; "
        f"the live model's best fusion there (what `fused` names): "
        f"**{best(readers, 'tune', fusions_only=True)}**.",
        "",
        "Report slice:",
        "",
        *table(readers, "report", protocols),
        "",
        "Report slice, paired over the same readers (mean MRR difference ± its standard error):",
        "",
        *differences(readers, "report", protocols),
    ]
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


def rerender(path: Path, out: Path) -> None:
    """The tables again, from a run's `.readers.jsonl` (no model, no ranking)."""
    with open(path) as f:
        run = json.loads(f.readline())
        fields = {f.name for f in dataclasses.fields(Reader)}
        readers = [
            Reader(**{k: v for k, v in json.loads(line).items() if k in fields}) for line in f
        ]
    write_report(run["run"], readers, run["protocols"], out)


if __name__ == "__main__":
    main()
