"""The embedded document queue: one SQLite file, durable on every accept, nothing to install.

Each accepted document gets a row with a `seq` (its position in the stream, increasing in
commit order) and a state:

- `queued`: stored, not yet in a published version;
- `learned`: the version that first holds its update is durable (`version` says which);
- `rejected`: it will never be learned (`reason` says why).

"Accepted" means on disk: the database runs in WAL mode with `synchronous=FULL`, so a commit
returns only after the log is fsynced, and a `kill -9` (or a power cut) right after an accept
loses nothing. Ids make re-sends idempotent: a document whose id is already stored is not stored
again, and one whose id is stored with a different text is a conflict, refused as a whole
request so that nothing is half-stored.

Writes are serialized by SQLite; one connection, shared by the request threads and the learner
thread behind a lock, is enough for the rates a single learner can absorb.

A write the disk refuses (full, read-only, an I/O error) raises `StorageUnavailable` (see
`livelm.source.storage`) after its transaction is rolled back: the API answers 503 and nothing
of the request is stored. `storage_problem` says whether the queue can store now, for the
readiness check.

The `meta` table records the snapshot store the queue feeds (its id, see
`SnapshotStore.identity`); `livelm.source.reconcile` checks the two agree at startup.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from livelm.document import Document
from livelm.source.storage import QueueFileError, StorageUnavailable, storage_reason

State = Literal["queued", "learned", "rejected"]
STATES: tuple[State, ...] = ("queued", "learned", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    digest      TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    time        TEXT,
    meta        TEXT    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'learned', 'rejected')),
    version     INTEGER,
    loss        REAL,
    reason      TEXT,
    accepted_at REAL    NOT NULL,
    done_at     REAL
);
CREATE INDEX IF NOT EXISTS documents_state_seq ON documents (state, seq);
CREATE TABLE IF NOT EXISTS meta (
    key         TEXT    PRIMARY KEY,
    value       TEXT    NOT NULL
);
"""

# Below this much free space the queue reports itself unable to store: a document may be up to
# 32k characters (~128 KB of UTF-8 at worst), and the write-ahead log grows by whole pages.
MIN_FREE_BYTES = 64 << 10


class ConflictError(ValueError):
    """A document id that is already stored with a different text."""

    def __init__(self, doc_id: str) -> None:
        super().__init__(
            f"document {doc_id!r} is already stored with a different text; ids must be unique "
            "per text (send a new id for a new text)"
        )
        self.doc_id = doc_id


@dataclass(frozen=True)
class Accepted:
    """What `put` did with one document."""

    id: str
    seq: int
    state: State
    duplicate: bool  # already stored before this request: nothing was written


@dataclass(frozen=True)
class QueuedDocument:
    """A document as the learner takes it: the stored document and its stream position."""

    seq: int
    doc: Document


@dataclass(frozen=True)
class DocumentStatus:
    id: str
    seq: int
    state: State
    version: int | None  # the version that first holds its update (learned only)
    loss: float | None  # its prequential loss when it was learned (nats per token)
    reason: str | None  # why it was rejected
    time: str | None
    accepted_at: float
    done_at: float | None


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DocumentQueue:
    """A durable, idempotent document queue in one SQLite file.

    >>> import tempfile, pathlib
    >>> q = DocumentQueue(pathlib.Path(tempfile.mkdtemp()) / "queue.sqlite3")
    >>> [a.duplicate for a in q.put([Document("one", id="a"), Document("one", id="a")])]
    [False, True]
    >>> [d.doc.id for d in q.take(after=0, limit=10)]
    ['a']
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._failed: str | None = None  # why the last write failed, until one succeeds
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")  # a commit is fsynced on return
                self._db.execute("PRAGMA busy_timeout=10000")
                self._db.executescript(_SCHEMA)
            except BaseException:
                self._db.close()
                raise
        except (sqlite3.Error, OSError) as e:
            reason = storage_reason(e)
            if reason is not None:
                raise StorageUnavailable(path, reason) from None
            if isinstance(e, sqlite3.DatabaseError):  # "file is not a database", "malformed"
                raise QueueFileError(path, str(e)) from None
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is durable when this exits, or none of it.

        The COMMIT is inside the guarded block: on a full disk it is the commit that fails,
        and its transaction must still be rolled back, or the next BEGIN would fail too.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                # SQLite may have rolled back already (it does on some I/O and full errors).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                reason = storage_reason(e)
                if reason is None:
                    raise
                self._failed = reason
                raise StorageUnavailable(self.path, reason) from None
            self._failed = None

    def put(self, docs: Sequence[Document]) -> list[Accepted]:
        """Store documents in one transaction; durable when this returns.

        Raises ConflictError (and stores nothing) if an id is already stored, or repeated in
        `docs`, with a different text.
        """
        now = time.time()
        results: list[Accepted] = []
        seen: dict[str, str] = {}
        with self._transaction() as db:
            for doc in docs:
                digest = text_digest(doc.text)
                if seen.get(doc.id, digest) != digest:
                    raise ConflictError(doc.id)
                seen[doc.id] = digest
                row = db.execute(
                    "SELECT seq, digest, state FROM documents WHERE id = ?", (doc.id,)
                ).fetchone()
                if row is not None:
                    if row[1] != digest:
                        raise ConflictError(doc.id)
                    results.append(Accepted(doc.id, row[0], row[2], duplicate=True))
                    continue
                cursor = db.execute(
                    "INSERT INTO documents (id, digest, text, time, meta, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (doc.id, digest, doc.text, doc.time, json.dumps(doc.meta), now),
                )
                assert cursor.lastrowid is not None
                results.append(Accepted(doc.id, cursor.lastrowid, "queued", duplicate=False))
        return results

    def take(self, *, after: int, limit: int) -> list[QueuedDocument]:
        """The first `limit` queued documents past position `after`, in stream order.

        Taking changes nothing: a document stays queued until `ack` or `reject`, so one taken
        by a learner that then crashes is taken again after the restart.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, text, time, meta FROM documents "
                "WHERE state = 'queued' AND seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [
            QueuedDocument(seq, _document(doc_id, text, t, meta))
            for seq, doc_id, text, t, meta in rows
        ]

    def ack(self, learned: Iterable[tuple[int, float | None]], version: int) -> int:
        """Mark `(seq, loss)` documents learned in `version`; already-final ones are left as
        they are. Returns how many changed."""
        now = time.time()
        rows = [(version, loss, now, seq) for seq, loss in learned]
        with self._transaction() as db:
            changed = 0
            for row in rows:
                changed += db.execute(
                    "UPDATE documents SET state = 'learned', version = ?, loss = ?, done_at = ? "
                    "WHERE seq = ? AND state = 'queued'",
                    row,
                ).rowcount
        return changed

    def reject(self, seqs: Iterable[int], reason: str) -> int:
        """Mark queued documents rejected, with the reason; returns how many changed."""
        now = time.time()
        with self._transaction() as db:
            changed = 0
            for seq in seqs:
                changed += db.execute(
                    "UPDATE documents SET state = 'rejected', reason = ?, done_at = ? "
                    "WHERE seq = ? AND state = 'queued'",
                    (reason, now, seq),
                ).rowcount
        return changed

    def status(self, doc_id: str) -> DocumentStatus | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, seq, state, version, loss, reason, time, accepted_at, done_at "
                "FROM documents WHERE id = ?",
                (doc_id,),
            ).fetchone()
        return None if row is None else DocumentStatus(*row)

    def documents(self, ids: Iterable[str]) -> dict[str, Document]:
        """The stored documents with these ids, in any state, by id (ids not stored are left
        out): what `/v1/recommend` ranks when a request names documents by id."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Document] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                part = wanted[start : start + 500]
                rows = self._db.execute(
                    "SELECT id, text, time, meta FROM documents "
                    f"WHERE id IN ({', '.join('?' * len(part))})",
                    part,
                ).fetchall()
                found.update((row[0], _document(*row)) for row in rows)
        return found

    def newest(self, limit: int, state: State = "learned") -> list[Document]:
        """The last `limit` documents in `state`, newest first (by stream position)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, text, time, meta FROM documents WHERE state = ? "
                "ORDER BY seq DESC LIMIT ?",
                (state, limit),
            ).fetchall()
        return [_document(*row) for row in rows]

    def counts(self) -> dict[State, int]:
        """Documents per state."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM documents GROUP BY state"
            ).fetchall()
        found: dict[str, int] = dict(rows)
        return {state: found.get(state, 0) for state in STATES}

    def queued_after(self, position: int) -> int:
        """How many queued documents lie past `position`."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM documents WHERE state = 'queued' AND seq > ?", (position,)
            ).fetchone()
        return int(row[0])

    # -- storage --------------------------------------------------------------------------------

    def storage_problem(self) -> str | None:
        """Why the queue cannot store a document now (one line), or None when it can.

        Looks at the file system (read-only, free space) and, after a write failed, tries a small
        durable write of its own: a disk that has room again clears the failure without waiting
        for a client to risk a document on it.
        """
        directory = self.path.parent
        try:
            fs = os.statvfs(directory)
        except OSError as e:
            return f"the document queue's directory {directory} cannot be read: {e.strerror}"
        if fs.f_flag & os.ST_RDONLY:
            return f"the document queue's file system is read-only ({directory})"
        free = fs.f_bavail * fs.f_frsize
        if free < MIN_FREE_BYTES:
            return f"the document queue's disk is full ({free} bytes free in {directory})"
        if self._failed is not None:
            try:
                with self._transaction() as db:
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)",
                        (str(time.time()),),
                    )
            except StorageUnavailable as e:
                return str(e)
        return None

    # -- the store it feeds ---------------------------------------------------------------------

    def store_id(self) -> str | None:
        """The id of the snapshot store this queue feeds; None before it was bound to one."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'store'").fetchone()
        return None if row is None else str(row[0])

    def high_water(self) -> int:
        """The highest position ever given out: the next document gets the one after it."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'documents'"
            ).fetchone()
        return 0 if row is None else int(row[0])

    def size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def queued_through(self, position: int) -> list[int]:
        """The queued documents at or before `position`: a learner past it never takes them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM documents WHERE state = 'queued' AND seq <= ? ORDER BY seq",
                (position,),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def rebase(self, store_id: str, position: int, learned: dict[int, int]) -> tuple[int, int]:
        """Make the queue feed `store_id` from `position` on, in one transaction.

        Queued documents that the store's versions list as learned (`learned`: seq -> version)
        are acknowledged; the other queued documents at or before `position` are moved past it,
        in their order, so that the learner takes them; new documents are numbered after it.
        Returns (acknowledged, moved).
        """
        now = time.time()
        with self._transaction() as db:
            acked = 0
            for seq, version in sorted(learned.items()):
                acked += db.execute(
                    "UPDATE documents SET state = 'learned', version = ?, done_at = ? "
                    "WHERE seq = ? AND state = 'queued'",
                    (version, now, seq),
                ).rowcount
            stuck = db.execute(
                "SELECT seq, id, digest, text, time, meta, accepted_at FROM documents "
                "WHERE state = 'queued' AND seq <= ? ORDER BY seq",
                (position,),
            ).fetchall()
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'documents'").fetchone()
            high = max(position, 0 if row is None else int(row[0]))
            # AUTOINCREMENT numbers after sqlite_sequence's value: set it, and the next INSERT
            # (a moved document now, or a new one later) gets high + 1.
            if row is None:
                db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('documents', ?)", (high,)
                )
            else:
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'documents'", (high,))
            for seq, *fields in stuck:
                db.execute("DELETE FROM documents WHERE seq = ?", (seq,))
                db.execute(
                    "INSERT INTO documents (id, digest, text, time, meta, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    fields,
                )
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('store', ?)", (store_id,))
        return acked, len(stuck)

    def bind(self, store_id: str) -> None:
        """Record the snapshot store this queue feeds."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('store', ?)", (store_id,))

    def dump(self) -> list[dict[str, Any]]:
        """Every row but the text, in stream order (for checks and tests)."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT seq, id, state, version, loss, reason FROM documents ORDER BY seq"
            )
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _document(doc_id: str, text: str, t: str | None, meta: str) -> Document:
    """A document from its row's `id, text, time, meta` columns."""
    return Document(text=text, id=doc_id, time=t, meta=json.loads(meta))
