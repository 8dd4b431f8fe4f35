"""Queue and store agree: run once at startup, before the learner resumes from the store.

The learner resumes after the newest version's `position`, and takes only queued documents past
it. A queue that lost its file (deleted, truncated to nothing, restored from an older backup)
restarts its numbering below that position, and every document it accepts then would stay
`queued` forever. `reconcile` finds this before the learner starts, and either re-bases the
queue (new documents are numbered after the store's position) or refuses to start.

What it decides, and why:

- **The store has no version yet**: the learner starts from position 0 and takes every queued
  document; the queue is bound to the store, nothing else changes.
- **The queue is empty** (new, deleted, truncated to nothing): nothing in it can be lost or
  learned twice, so it is re-based automatically, with a warning.
- **The queue is this store's (or predates store ids) and agrees document by document**: every
  queued document the store's versions list as learned is acknowledged (a version can only miss
  its acknowledgement by a crash, or in an older copy of the queue); if the queue's numbering is
  behind the store's position (an older copy whose documents were all learned), it is moved
  past it, with a warning that the documents accepted since that copy are unknown to the queue.
- **Otherwise it refuses** (`QueueStoreMismatch`, one line naming `--rebase-queue`): the queue
  belongs to another store, or it holds queued documents at or before the store's position that
  no held version lists: learned into a version retention has deleted, or rejected; the queue
  cannot tell which. An operator decides: `--rebase-queue` learns them (again) after the
  store's position; deleting the queue file drops them. Refusing costs a restart; guessing
  would either lose accepted documents or learn them twice without anyone knowing.

Call it once before the learning loop's bootstrap, which reads its position from the store
(the server's runtime does, for its queue; a Redis stream needs no such check).

>>> import tempfile, pathlib
>>> from livelm.store import SnapshotStore
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> reconcile(DocumentQueue(root / "queue.sqlite3"), SnapshotStore(root / "snapshots")) is None
True
"""

from __future__ import annotations

from livelm.source.queue import DocumentQueue
from livelm.store import SnapshotStore

REBASE_FLAG = "--rebase-queue"


class QueueStoreMismatch(RuntimeError):
    """The queue and the store disagree about documents; an operator must choose."""


def reconcile(queue: DocumentQueue, store: SnapshotStore, *, rebase: bool = False) -> str | None:
    """Make `queue` agree with `store` (see the module docstring for the rules).

    Returns a one-line warning describing what it changed, or None when the two agreed (or
    only needed binding). Raises `QueueStoreMismatch` when documents are in question and
    `rebase` is false.
    """
    store_id = store.identity()
    bound = queue.store_id()
    versions = store.versions()
    if not versions:
        if bound != store_id:
            queue.bind(store_id)
        if bound not in (None, store_id):
            return (
                f"{queue.path} fed another snapshot store; {store.root} is new and learns its "
                "queued documents from the start"
            )
        return None

    manifests = [store.manifest(v) for v in versions]
    position = max(m.position for m in manifests)
    same = bound in (None, store_id)  # None: a queue older than store ids, or a new one
    learned = {seq: m.version for m in manifests for seq in m.learned} if same else {}
    high = queue.high_water()

    if queue.size() == 0:
        if high >= position and bound == store_id:
            return None
        queue.rebase(store_id, position, {})
        if high >= position:
            return None
        return (
            f"{queue.path} is empty but {store.root} has learned up to position {position}; "
            f"the queue is re-based: new documents start at {position + 1}"
        )

    stuck = queue.queued_through(position)
    unknown = [seq for seq in stuck if seq not in learned]
    if same and not stuck and high >= position:
        if bound != store_id:
            queue.bind(store_id)
        return None  # the usual start: nothing to write
    problem: str | None = None
    if not same:
        problem = f"it feeds another snapshot store (id {bound}; {store.root} is {store_id})"
    elif unknown:
        problem = (
            f"it holds {len(unknown)} queued documents at or before the store's position "
            f"{position} (positions {unknown[0]}..{unknown[-1]}) that no held version lists as "
            "learned (an older copy of the queue?)"
        )
    if problem is not None and not rebase:
        raise QueueStoreMismatch(
            f"{queue.path} and {store.root} disagree: {problem}; start once with {REBASE_FLAG} "
            f"to learn its queued documents after position {position}, or delete "
            f"{queue.path} to start an empty queue"
        )

    acked, moved = queue.rebase(store_id, position, learned)
    if problem is not None:
        return (
            f"{REBASE_FLAG}: {queue.path} re-based after position {position}: "
            f"{acked} documents acknowledged from the store's versions, {moved} queued "
            "documents moved past it to be learned"
        )
    if high < position:
        return (
            f"{queue.path} ends at position {high}, before {store.root}'s {position} (an older "
            f"copy?); re-based: new documents start at {position + 1}, and {acked} documents "
            "were acknowledged from the store's versions; documents accepted after that copy "
            "are unknown to the queue, and one sent again is learned again"
        )
    if acked:
        return f"{acked} queued documents acknowledged from {store.root}'s versions"
    return None
