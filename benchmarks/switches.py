"""Drift detectors on real switches of source (issue 13 item 4, tried on real streams).

    .venv/bin/python benchmarks/switches.py [--reuse]      # ~40 min on one busy core

Each stream is 300 documents of one source, then 100 of another, both from the tuning slices
(`sweep.py`'s `TUNE_START` on, the book from segment 400), never the benchmark's. One
`livelm replay` runs `static` and `online` over it; the detectors then read each strategy's
per-document losses (`docs.jsonl`), the default way (the loss's residual against its trend)
and on the raw loss (`trend=0`). A detector without actions changes nothing in a learner, so
reading the losses afterwards gives the alarms a watching detector would have raised, at the
same documents. The table (the documents at which each detector fired; the switch is at 300)
goes to stdout and to `OUT/table.md`. `--reuse` reads the replays of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from livelm.policy.drift import DetectorConfig
from sweep import ROOT, TUNE_START, lines, stream_path

BEFORE, AFTER = 300, 100
# Where each source's documents start: its tuning slice, past the benchmark's; the book has
# only 679 segments, its benchmark slice the first 300.
STARTS = {"book": 400}
SWITCHES = (
    ("news", "short"),
    ("sotu", "news"),
    ("news", "sotu"),
    ("short", "news"),
    ("headlines", "book"),
)
DETECTORS = ("adwin", "page-hinkley", "kswin")


def documents(source: str, n: int) -> list[str]:
    start = STARTS.get(source, TUNE_START)
    docs = [json.loads(line) for line in lines(stream_path(source))[start : start + n]]
    return [json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs]


def replayed(first: str, second: str, out: Path, reuse: bool) -> Path:
    """The replay's `docs.jsonl` for the stream `first` then `second`."""
    name = f"{first}-then-{second}"
    docs = out / name / "docs.jsonl"
    if reuse and docs.exists():
        return docs
    stream = out / f"{name}.jsonl"
    stream.write_text("".join(documents(first, BEFORE) + documents(second, AFTER)))
    command = [
        str(ROOT / ".venv" / "bin" / "livelm"),
        "replay",
        str(stream),
        "--strategy",
        "static,online",
        "--out",
        str(out / name),
        "--quiet",
    ]
    subprocess.run(command, check=True)
    return docs


def alarms(spec: str, losses: list[float]) -> list[int]:
    detector = DetectorConfig.parse(spec).build()
    return [i for i, x in enumerate(losses) if detector.update(x).drift_detected]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "switches")
    parser.add_argument("--reuse", action="store_true", help="read an earlier run's replays")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    specs = [*DETECTORS, *(f"{d}:trend=0" for d in DETECTORS)]
    rows = [
        "| switch at 300 | strategy | loss before / after (nats) | ADWIN | Page-Hinkley | KSWIN "
        "| raw loss: ADWIN | Page-Hinkley | KSWIN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for first, second in SWITCHES:
        with replayed(first, second, args.out, args.reuse).open() as f:
            docs = [json.loads(line) for line in f]
        for strategy in ("static", "online"):
            losses = [d["loss"][strategy] for d in docs]
            before = statistics.mean(losses[BEFORE - 50 : BEFORE])
            after = statistics.mean(losses[BEFORE : BEFORE + 50])
            fired = [", ".join(map(str, alarms(s, losses))) or "-" for s in specs]
            rows.append(
                f"| {first} to {second} | {strategy} | {before:.2f} / {after:.2f} | "
                + " | ".join(fired)
                + " |"
            )
    table = "\n".join(rows)
    print(table)
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
