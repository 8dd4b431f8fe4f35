"""Where the learning loop's documents come from, and how it acknowledges them.

The loop is the same for the server and the `learn` workers; only this differs:

- `QueueFeed`: the server's embedded SQLite queue. A document's key is its queue position
  (`seq`); a version's manifest records the positions it learned (`learned`) and the position
  it covers (`position`), and acknowledging marks them `learned` with the version.
- `StreamFeed`: a Redis stream read through a consumer group. A document's key is its entry id;
  a manifest records the entry ids (`entries`), and acknowledging is `XACK`.

Both finish, at start, the acknowledgement of the newest version (a crash may have come
between its write and its acknowledgement), and both give back, after the learner's weights
were replaced by a version's (a rollback), what was learned since that version's publish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livelm.document import Document
from livelm.source.queue import DocumentQueue
from livelm.source.reconcile import reconcile
from livelm.source.redis_stream import RedisStreamSource
from livelm.store import Manifest, SnapshotStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taken:
    """A document the loop took, with the key that acknowledges it."""

    key: int | str  # a queue position, or a stream entry id
    doc: Document


@dataclass(frozen=True)
class Learned:
    """A document learned into the pending version: its key, score and stream time."""

    key: int | str
    loss: float
    tokens: int
    time: str | None


class Feed(Protocol):
    def attach(self, store: SnapshotStore) -> None:
        """Before the loop resumes from `store` (rank 0): make sure what the feed holds can be
        learned after the store's newest version, or refuse with a message naming the fix."""
        ...

    def notify(self) -> None:
        """New documents may be there (or the loop is stopping): end a `wait`."""
        ...

    def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for documents to take; whether some may be there."""
        ...

    def take(self, limit: int, block_ms: int) -> list[Taken]: ...

    def hold(self, keys: Sequence[int | str]) -> None:
        """Keep documents learned but not yet published from being handed to another learner."""
        ...

    def ack(self, learned: Sequence[Learned], version: int) -> int: ...

    def reject(self, keys: Sequence[int | str], reason: str) -> int: ...

    def manifest_fields(
        self, learned: Sequence[Learned], carried: Sequence[int | str]
    ) -> dict[str, Any]:
        """What a version's manifest records of the documents it learned (`carried`: taken
        for the next step, not learned yet)."""
        ...

    def finish(self, newest: Manifest) -> int:
        """Acknowledge the newest version's documents (after a restart); how many were left."""
        ...

    def rewind(self, newest: Manifest | None) -> None:
        """The learner's weights went back to a version: take again what was learned since
        the last publish (`newest` is the newest version in the store)."""
        ...

    def backlog(self) -> int: ...

    def close(self) -> None: ...


class QueueFeed:
    """The server's SQLite queue: documents past `position` are still to be taken.

    `rebase`: a queue that disagrees with the store (see `livelm.source.reconcile`) is re-based
    rather than refused (`--rebase-queue`).
    """

    def __init__(self, queue: DocumentQueue, *, rebase: bool = False) -> None:
        self.queue = queue
        self.rebase = rebase
        self.position = 0  # every document at or before it was taken (learned or rejected)
        self._wake = threading.Event()

    def attach(self, store: SnapshotStore) -> None:
        # A lost or older queue would number new documents below the store's position, where
        # the learner never looks.
        warning = reconcile(self.queue, store, rebase=self.rebase)
        if warning is not None:
            log.warning("%s", warning)

    def notify(self) -> None:
        self._wake.set()

    def wait(self, timeout_s: float) -> bool:
        self._wake.clear()
        if self.queue.queued_after(self.position):
            return True
        self._wake.wait(timeout_s)
        return bool(self.queue.queued_after(self.position))

    def take(self, limit: int, block_ms: int) -> list[Taken]:
        batch = self.queue.take(after=self.position, limit=limit)
        if batch:
            self.position = max(self.position, batch[-1].seq)
        return [Taken(q.seq, q.doc) for q in batch]

    def hold(self, keys: Sequence[int | str]) -> None:
        pass  # one learner per queue: nobody else takes them

    def ack(self, learned: Sequence[Learned], version: int) -> int:
        return self.queue.ack(((int(x.key), x.loss) for x in learned), version)

    def reject(self, keys: Sequence[int | str], reason: str) -> int:
        return self.queue.reject([int(k) for k in keys], reason)

    def manifest_fields(
        self, learned: Sequence[Learned], carried: Sequence[int | str]
    ) -> dict[str, Any]:
        # The version covers every document up to its position: not those taken for the next
        # step (later in the stream than all it learned).
        position = min(int(k) for k in carried) - 1 if carried else self.position
        return {"position": position, "learned": tuple(int(x.key) for x in learned)}

    def finish(self, newest: Manifest) -> int:
        self.position = max(self.position, newest.position)
        return self.queue.ack(((seq, None) for seq in newest.learned), newest.version)

    def rewind(self, newest: Manifest | None) -> None:
        # Documents past the newest version's position and still queued are taken again.
        self.position = 0 if newest is None else newest.position

    def backlog(self) -> int:
        return self.queue.queued_after(self.position)

    def close(self) -> None:
        pass  # the queue is the server's: ingest writes to it too


class StreamFeed:
    """A Redis stream, read as one consumer of a group."""

    def __init__(self, source: RedisStreamSource) -> None:
        self.source = source

    def attach(self, store: SnapshotStore) -> None:
        pass  # a consumer group keeps its own place: pending entries are read back

    def notify(self) -> None:
        pass  # `take` blocks at most `block_ms` on the stream

    def wait(self, timeout_s: float) -> bool:
        return True  # `take` blocks on the stream itself

    def take(self, limit: int, block_ms: int) -> list[Taken]:
        return [Taken(d.entry, d.doc) for d in self.source.read(limit, block_ms=block_ms)]

    def hold(self, keys: Sequence[int | str]) -> None:
        # Held entries stay ours while we live, however long a publish takes to come.
        self.source.touch([str(k) for k in keys])

    def ack(self, learned: Sequence[Learned], version: int) -> int:
        return self.source.ack([str(x.key) for x in learned])

    def reject(self, keys: Sequence[int | str], reason: str) -> int:
        for key in keys:
            self.source.reject_entry(str(key), reason)
        return len(keys)

    def manifest_fields(
        self, learned: Sequence[Learned], carried: Sequence[int | str]
    ) -> dict[str, Any]:
        return {"position": 0, "entries": tuple(str(x.key) for x in learned)}

    def finish(self, newest: Manifest) -> int:
        return self.source.ack(list(newest.entries))

    def rewind(self, newest: Manifest | None) -> None:
        self.source.reread_pending()

    def backlog(self) -> int:
        return self.source.backlog()

    def close(self) -> None:
        self.source.close()
