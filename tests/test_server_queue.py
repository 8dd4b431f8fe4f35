"""The embedded SQLite queue: durable, idempotent, all-or-nothing, with states and positions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from livelm.document import Document
from livelm.source.queue import ConflictError, DocumentQueue


@pytest.fixture
def queue(tmp_path: Path) -> DocumentQueue:
    return DocumentQueue(tmp_path / "queue.sqlite3")


def test_accepted_means_on_disk(queue: DocumentQueue) -> None:
    journal = queue._db.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = queue._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (journal, synchronous) == ("wal", 2)  # 2: FULL, an fsync on every commit
    queue.put([Document("stored", id="a", time="2020-01-01", meta={"k": 1})])
    # Another connection (another process, after a crash) sees it: it was committed.
    other = sqlite3.connect(queue.path)
    assert other.execute("SELECT id, state, meta FROM documents").fetchall() == [
        ("a", "queued", '{"k": 1}')
    ]


def test_ids_make_resends_idempotent(queue: DocumentQueue) -> None:
    first = queue.put([Document("one", id="a"), Document("two", id="b")])
    again = queue.put([Document("two", id="b"), Document("three", id="c")])
    assert [(a.id, a.seq, a.duplicate) for a in first] == [("a", 1, False), ("b", 2, False)]
    assert [(a.id, a.seq, a.duplicate) for a in again] == [("b", 2, True), ("c", 3, False)]
    assert queue.counts() == {"queued": 3, "learned": 0, "rejected": 0}


def test_a_conflicting_resend_stores_nothing_of_its_request(queue: DocumentQueue) -> None:
    queue.put([Document("one", id="a")])
    with pytest.raises(ConflictError, match="'a'"):
        queue.put([Document("new", id="n"), Document("other text", id="a")])
    with pytest.raises(ConflictError, match="'x'"):
        queue.put([Document("x1", id="x"), Document("x2", id="x")])
    assert [row["id"] for row in queue.dump()] == ["a"]


def test_take_ack_and_reject(queue: DocumentQueue) -> None:
    queue.put([Document(f"doc {i}", id=f"d{i}") for i in range(5)])
    taken = queue.take(after=0, limit=3)
    assert [q.seq for q in taken] == [1, 2, 3]
    assert [q.seq for q in queue.take(after=3, limit=10)] == [4, 5]
    assert queue.ack([(1, 2.5), (2, 3.0)], version=7) == 2
    assert queue.reject([3], "too weird") == 1
    assert queue.ack([(3, 1.0)], version=8) == 0  # a final state is final
    assert [q.seq for q in queue.take(after=0, limit=10)] == [4, 5]
    learned = queue.status("d0")
    assert learned is not None and (learned.state, learned.version, learned.loss) == (
        "learned",
        7,
        2.5,
    )
    rejected = queue.status("d2")
    assert rejected is not None and (rejected.state, rejected.reason) == ("rejected", "too weird")
    assert queue.status("nope") is None
    assert queue.queued_after(4) == 1


def test_the_queue_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    DocumentQueue(path).put([Document("kept", id="k")])
    reopened = DocumentQueue(path)
    assert [q.doc.text for q in reopened.take(after=0, limit=5)] == ["kept"]
    assert reopened.put([Document("next", id="n")])[0].seq == 2
