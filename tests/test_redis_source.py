"""The Redis Streams source against a real redis-server: idempotent writes, consumer groups,
acknowledgement, reclaiming a dead consumer's entries, and malformed entries set aside."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livelm.document import Document
from livelm.source.queue import ConflictError
from livelm.source.redis_stream import RedisSpec, RedisStreamSource
from tests.redis_util import redis_server


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as u:
        yield u


def source(url: str, consumer: str, **options: str) -> RedisStreamSource:
    query = "&".join(f"{k}={v}" for k, v in {"stream": "docs", "group": "g", **options}.items())
    return RedisStreamSource(RedisSpec.parse(f"{url}?{query}", consumer=consumer))


def test_spec_parsing_says_what_is_wrong() -> None:
    spec = RedisSpec.parse("redis://h:1/2?stream=s&group=g&claim_idle_ms=50", consumer="c")
    assert (spec.url, spec.stream, spec.group, spec.consumer, spec.claim_idle_ms) == (
        "redis://h:1/2",
        "s",
        "g",
        "c",
        50,
    )
    with pytest.raises(ValueError, match="names no stream"):
        RedisSpec.parse("redis://h:1/0?group=g")
    with pytest.raises(ValueError, match="unknown option"):
        RedisSpec.parse("redis://h:1/0?stream=s&colour=red")
    with pytest.raises(ValueError, match="not a redis"):
        RedisSpec.parse("http://h:1/0?stream=s")


def test_writes_are_idempotent_and_conflicts_store_nothing(url: str) -> None:
    s = source(url, "w")
    assert s.add([Document("one", id="a"), Document("two", id="b")]) == ["added", "added"]
    assert s.add([Document("one", id="a"), Document("three", id="c")]) == ["duplicate", "added"]
    with pytest.raises(ConflictError):
        s.add([Document("four", id="d"), Document("not one", id="a")])
    got = s.read(10, block_ms=10)
    assert [d.doc.id for d in got] == ["a", "b", "c"]  # nothing of the refused request


def test_each_entry_goes_to_one_consumer_and_acked_entries_never_return(url: str) -> None:
    writer = source(url, "w")
    writer.add([Document(f"text {i}", id=str(i)) for i in range(10)])
    a, b = source(url, "a"), source(url, "b")
    first, second = a.read(6, block_ms=10), b.read(6, block_ms=10)
    ids = [d.doc.id for d in first + second]
    assert sorted(ids, key=int) == [str(i) for i in range(10)]
    assert a.pending() == 10
    assert a.ack([d.entry for d in first]) == 6 and b.ack([d.entry for d in second]) == 4
    assert a.pending() == 0
    assert source(url, "a").read(10, block_ms=10) == []  # a restart under the same name


def test_a_restarted_consumer_reads_back_its_own_pending_entries(url: str) -> None:
    source(url, "w").add([Document(f"text {i}", id=str(i)) for i in range(4)])
    read = source(url, "a").read(3, block_ms=10)  # then "crashes" without acknowledging
    again = source(url, "a").read(10, block_ms=10)
    assert [d.entry for d in again[:3]] == [d.entry for d in read]
    assert [d.doc.id for d in again] == ["0", "1", "2", "3"]


def test_a_dead_consumers_entries_are_reclaimed_after_the_idle_timeout(url: str) -> None:
    source(url, "w").add([Document(f"text {i}", id=str(i)) for i in range(3)])
    dead = source(url, "dead", claim_idle_ms="200")
    taken = dead.read(3, block_ms=10)
    live = source(url, "live", claim_idle_ms="200")
    assert live.read(3, block_ms=10) == []  # not idle long enough yet
    time.sleep(0.3)
    claimed = live.read(3, block_ms=10)
    assert [d.entry for d in claimed] == [d.entry for d in taken]
    live.ack([d.entry for d in claimed])
    assert live.pending() == 0


def test_a_holder_that_touches_its_entries_keeps_them(url: str) -> None:
    source(url, "w").add([Document("held text", id="h")])
    holder = source(url, "holder", claim_idle_ms="200")
    held = holder.read(1, block_ms=10)
    other = source(url, "other", claim_idle_ms="200")
    for _ in range(3):
        time.sleep(0.1)
        holder.touch([d.entry for d in held])
    assert other.read(1, block_ms=10) == []


def test_malformed_entries_are_set_aside_with_the_reason(url: str) -> None:
    s = source(url, "a")
    s.client.xadd("docs", {"doc": b"\xff\xfe not utf-8"})
    s.client.xadd("docs", {"doc": b'{"text": 3}'})
    s.client.xadd("docs", {"other": b"x"})
    s.add([Document("fine", id="ok")])
    got = s.read(10, block_ms=10)
    assert [d.doc.id for d in got] == ["ok"]
    rejected = s.client.xrange("docs:rejected")
    reasons = [fields[b"reason"].decode() for _, fields in rejected]
    assert len(reasons) == 3 and "UTF-8" in reasons[0] and "string 'text'" in reasons[1]
    assert "no 'doc' field" in reasons[2]
    assert s.pending() == 1  # the malformed ones are acknowledged, the good one is ours


def test_own_pending_entries_come_back_once_however_small_the_reads(url: str) -> None:
    source(url, "w").add([Document(f"text {i}", id=str(i)) for i in range(5)])
    source(url, "a").read(5, block_ms=10)  # read, never acknowledged: a crash
    again = source(url, "a")
    got = [d.doc.id for _ in range(4) for d in again.read(2, block_ms=10)]
    assert got == ["0", "1", "2", "3", "4"]


def test_livelm_ingest_adds_a_stream_file_once(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from livelm.cli.main import main

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"id": "d{i}", "text": "text {i}"}}\n' for i in range(7)))
    target = f"{url}?stream=docs&group=g"
    assert main(["ingest", str(path), "--to", target, "--batch", "3"]) == 0
    assert "7 added, 0 already there" in capsys.readouterr().err
    assert main(["ingest", str(path), "--to", target]) == 0
    assert "0 added, 7 already there" in capsys.readouterr().err
    assert source(url, "a").client.xlen("docs") == 7
    assert main(["ingest", str(path), "--to", "redis://127.0.0.1:1/0?stream=docs"]) == 2
    assert "livelm ingest: error" in capsys.readouterr().err  # no server there: a clear error
