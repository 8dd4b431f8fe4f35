"""Stream files: JSONL, lines, blocks, stdin; bad lines, empty and invalid documents."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from livelm.document import Document, content_id
from livelm.source.files import StreamError, StreamStats, read_stream


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_jsonl_fields_ids_and_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.jsonl",
        b'{"id": "a", "time": "2020-01-01", "text": "one", "category": "WORLD"}\n'
        b'{"id": 7, "text": "two", "meta": {"k": 1}}\n'
        b"\n"
        b'{"text": "three"}\n',
    )
    docs = list(read_stream(path))
    assert [d.text for d in docs] == ["one", "two", "three"]
    assert docs[0] == Document("one", "a", "2020-01-01", {"category": "WORLD"})
    assert docs[1].id == "7" and docs[1].meta == {"k": 1}
    assert docs[2].id == content_id("three")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"text": "unterminated', "malformed JSON"),
        (b'["text"]', "expected a JSON object"),
        (b'{"title": "no text"}', "no 'text' field"),
        (b'{"text": 42}', "'text' is int"),
        (b'{"text": "x", "time": 5}', "'time' must be a string"),
        (b'{"text": "caf\xe9"}', "invalid UTF-8"),
    ],
)
def test_a_bad_line_fails_with_its_number_and_reason(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    path = write(tmp_path, "s.jsonl", b'{"text": "fine"}\n' + line + b'\n{"text": "after"}\n')
    with pytest.raises(StreamError, match=reason) as info:
        list(read_stream(path))
    assert info.value.line == 2
    assert f"{path}:2:" in str(info.value)


def test_skip_bad_skips_and_counts_bad_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "s.jsonl", b'{"text": "a"}\nnot json\n{"text": 1}\n{"text": "b"}\n')
    stats = StreamStats()
    docs = list(read_stream(path, skip_bad=True, stats=stats))
    assert [d.text for d in docs] == ["a", "b"]
    assert (stats.documents, stats.bad) == (2, 2)
    assert stats.errors[0].startswith(f"{path}:2:")


def test_empty_texts_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "s.jsonl", b'{"text": ""}\n{"text": "  \\n "}\n{"text": "real"}\n')
    stats = StreamStats()
    assert [d.text for d in read_stream(path, stats=stats)] == ["real"]
    assert stats.empty == 2 and stats.documents == 1


def test_plain_text_blocks_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "s.txt", b"first para\nstill first\n\n\nsecond\n\n")
    assert [d.text for d in read_stream(path)] == ["first para\nstill first", "second"]
    stats = StreamStats()
    assert [d.text for d in read_stream(path, fmt="lines", stats=stats)] == [
        "first para",
        "still first",
        "second",
    ]
    assert stats.empty == 3


def test_invalid_utf8_in_plain_text_is_a_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path, "s.txt", b"good\n\xff\xfebad\nalso good\n")
    stats = StreamStats()
    docs = list(read_stream(path, fmt="lines", skip_bad=True, stats=stats))
    assert [d.text for d in docs] == ["good", "also good"] and stats.bad == 1


def test_stdin_jsonl_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(b'{"text": "from stdin"}\n')))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert [d.text for d in read_stream("-")] == ["from stdin"]


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(read_stream(tmp_path / "nope.jsonl"))
