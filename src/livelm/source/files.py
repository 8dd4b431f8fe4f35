"""Streams from files and stdin: JSONL, one document per line, or blank-line-separated blocks.

A malformed line stops the stream with its line number and reason, or, with `skip_bad`, is
counted and skipped. Documents whose text is empty are skipped and counted: they carry nothing
to learn. Every count lands in `StreamStats` so a report can say what was left out.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from livelm.document import Document

StreamFormat = Literal["auto", "jsonl", "lines", "blocks"]
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_MAX_REMEMBERED_ERRORS = 100


class StreamError(ValueError):
    """A line of a stream that is not a valid document."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass
class StreamStats:
    """What reading a stream yielded and what it left out."""

    documents: int = 0
    empty: int = 0
    bad: int = 0
    errors: list[str] = field(default_factory=list)  # the first few bad lines, for reports

    def record_bad(self, error: StreamError) -> None:
        self.bad += 1
        if len(self.errors) < _MAX_REMEMBERED_ERRORS:
            self.errors.append(str(error))


def parse_record(record: Any, source: str, line: int) -> Document:
    """Turn one decoded JSON value into a Document, or raise StreamError saying why not."""
    if not isinstance(record, dict):
        raise StreamError(source, line, f"expected a JSON object, got {type(record).__name__}")
    text = record.get("text")
    if not isinstance(text, str):
        got = "no 'text' field" if text is None else f"'text' is {type(text).__name__}"
        raise StreamError(source, line, f"{got}; expected a string")
    doc_id = record.get("id")
    if doc_id is not None and not isinstance(doc_id, (str, int)):
        raise StreamError(source, line, f"'id' must be a string or integer, not {doc_id!r}")
    time = record.get("time")
    if time is not None and not isinstance(time, str):
        raise StreamError(source, line, f"'time' must be a string, not {time!r}")
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise StreamError(source, line, "'meta' must be an object")
    extra = {k: v for k, v in record.items() if k not in {"id", "text", "time", "meta"}}
    return Document(
        text=text,
        id="" if doc_id is None else str(doc_id),
        time=time,
        meta={**extra, **(meta or {})},
    )


def _decode(raw: bytes, source: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StreamError(source, line, f"invalid UTF-8 at byte {e.start}") from None


def _jsonl(lines: Iterable[bytes], source: str) -> Iterator[tuple[int, Document | StreamError]]:
    for number, raw in enumerate(lines, start=1):
        try:
            text = _decode(raw, source, number)
            if not text.strip():
                continue  # blank lines between records are not documents
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                reason = f"malformed JSON: {e.msg} at column {e.colno}"
                raise StreamError(source, number, reason) from None
            yield number, parse_record(record, source, number)
        except StreamError as e:
            yield number, e


def _plain(
    lines: Iterable[bytes], source: str, blocks: bool
) -> Iterator[tuple[int, Document | StreamError]]:
    block: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        try:
            text = _decode(raw, source, number).rstrip("\r\n")
        except StreamError as e:
            yield number, e
            continue
        if not blocks:
            yield number, Document(text=text)
        elif text.strip():
            start = start or number
            block.append(text)
        elif block:
            yield start, Document(text="\n".join(block))
            block, start = [], 0
    if block:
        yield start, Document(text="\n".join(block))


def _resolve_format(path: str, fmt: StreamFormat, first: bytes) -> StreamFormat:
    if fmt != "auto":
        return fmt
    if path != "-" and Path(path).suffix.lower() in _JSONL_SUFFIXES:
        return "jsonl"
    if first.lstrip().startswith(b"{"):
        return "jsonl"
    return "lines" if path == "-" else "blocks"


def _open(path: str) -> io.BufferedReader:
    if path == "-":
        # A reader of its own on stdin's descriptor, not `sys.stdin.buffer`: a replay reads
        # stdin on a thread, and a thread blocked in `sys.stdin.buffer` when the interpreter
        # exits (Ctrl-C while `tail -f` feeds it) holds the lock that shutdown needs.
        try:
            return open(sys.stdin.fileno(), "rb", closefd=False)  # closed below
        except (AttributeError, io.UnsupportedOperation):  # stdin replaced by an in-memory file
            return cast(io.BufferedReader, sys.stdin.buffer)
    if not Path(path).is_file():
        raise FileNotFoundError(f"stream {path}: no such file")
    return open(path, "rb")


def read_stream(
    path: str | Path,
    *,
    fmt: StreamFormat = "auto",
    skip_bad: bool = False,
    stats: StreamStats | None = None,
) -> Iterator[Document]:
    """Yield the documents of a stream file, or of stdin for `-`.

    `auto` reads `.jsonl`/`.ndjson`/`.json` files, and any input whose first line starts with
    `{`, as JSONL; other files as blank-line-separated blocks and stdin as one document a line.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.jsonl"
    >>> _ = p.write_text('{"text": "hello"}\\n{"text": ""}\\n')
    >>> stats = StreamStats()
    >>> [d.text for d in read_stream(p, stats=stats)], stats.empty
    (['hello'], 1)
    """
    stats = stats if stats is not None else StreamStats()
    source = str(path)
    handle = _open(source)
    try:
        resolved = _resolve_format(source, fmt, handle.peek(4096)[:4096].split(b"\n", 1)[0])
        lines: Iterable[bytes] = iter(handle.readline, b"")
        records = (
            _jsonl(lines, source)
            if resolved == "jsonl"
            else _plain(lines, source, blocks=resolved == "blocks")
        )
        for _, item in records:
            if isinstance(item, StreamError):
                if not skip_bad:
                    raise item
                stats.record_bad(item)
            elif not item.text.strip():
                stats.empty += 1
            else:
                stats.documents += 1
                yield item
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()  # stdin's descriptor stays open (closefd=False)
