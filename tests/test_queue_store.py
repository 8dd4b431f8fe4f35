"""Queue and store agree: a queue that lost its file, or is an older copy, or feeds another
store, is re-based or refused at startup, so that no accepted document stays queued forever.

The rules are checked on real SQLite files and store directories (fast); then on real
`livelm serve` processes: delete, truncate or restore the queue file between runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from livelm.document import Document
from livelm.source.queue import DocumentQueue
from livelm.source.reconcile import QueueStoreMismatch, reconcile
from livelm.source.storage import QueueFileError
from livelm.store import Manifest, SnapshotStore
from tests.server_util import SERVE, ServeProcess, wait_for

# -- the rules, on real files -------------------------------------------------------------------


def publish(store: SnapshotStore, position: int, learned: tuple[int, ...] = ()) -> int:
    """A version (no weights: the rules read manifests only) covering `position`."""
    version = store.next_version()
    manifest = Manifest(
        version=version,
        parent=store.newest(),
        kind="lora",
        base_model="tiny",
        position=position,
        learned=learned,
    )
    store.publish(manifest, lambda directory: None)
    return version


def docs(*ids: str) -> list[Document]:
    return [Document(f"text of {i}", id=i) for i in ids]


def test_the_store_identity_is_written_once_and_kept(tmp_path: Path) -> None:
    first = SnapshotStore(tmp_path / "s").identity()
    assert SnapshotStore(tmp_path / "s").identity() == first
    assert SnapshotStore(tmp_path / "other").identity() != first
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_a_new_queue_and_store_agree_and_are_bound(tmp_path: Path) -> None:
    queue, store = DocumentQueue(tmp_path / "q.sqlite3"), SnapshotStore(tmp_path / "s")
    assert reconcile(queue, store) is None
    assert queue.store_id() == store.identity()
    publish(store, 0)
    assert reconcile(queue, store) is None  # the usual restart


def test_an_empty_queue_behind_the_store_is_rebased_after_its_position(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s")
    publish(store, 0)
    publish(store, 7, learned=(5, 6, 7))
    queue = DocumentQueue(tmp_path / "q.sqlite3")  # the old one was deleted
    warning = reconcile(queue, store)
    assert warning is not None and "new documents start at 8" in warning
    assert [a.seq for a in queue.put(docs("a", "b"))] == [8, 9]
    assert queue.store_id() == store.identity()
    assert reconcile(queue, store) is None  # once re-based, it agrees


def test_a_truncated_queue_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = DocumentQueue(path)
    queue.put(docs(*(f"d{i}" for i in range(200))))
    queue.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)  # its header still says how long it was
    with pytest.raises(QueueFileError, match=r"malformed.*restore it from a backup, or move it"):
        DocumentQueue(path)
    with open(path, "r+b") as f:
        f.write(b"garbage" * 20)  # not even a header
    with pytest.raises(QueueFileError, match="not a database"):
        DocumentQueue(path)


def test_an_older_copy_whose_documents_were_all_learned_is_rebased(tmp_path: Path) -> None:
    store, path = SnapshotStore(tmp_path / "s"), tmp_path / "q.sqlite3"
    queue = DocumentQueue(path)
    reconcile(queue, store)
    publish(store, 0)
    queue.put(docs("a", "b"))
    queue.ack([(1, 1.0), (2, 1.0)], publish(store, 2, learned=(1, 2)))
    queue.close()
    shutil.copy(path, tmp_path / "backup.sqlite3")
    queue = DocumentQueue(path)
    queue.put(docs("c", "d"))
    queue.ack([(3, 1.0), (4, 1.0)], publish(store, 4, learned=(3, 4)))
    queue.close()
    shutil.copy(tmp_path / "backup.sqlite3", path)  # the restore
    queue = DocumentQueue(path)
    assert queue.high_water() == 2
    warning = reconcile(queue, store)
    assert warning is not None and "new documents start at 5" in warning
    assert queue.put(docs("e"))[0].seq == 5


def test_an_older_copy_with_documents_the_store_passed_is_refused_then_rebased(
    tmp_path: Path,
) -> None:
    store, path = SnapshotStore(tmp_path / "s", keep_last=1), tmp_path / "q.sqlite3"
    queue = DocumentQueue(path)
    reconcile(queue, store)
    store.pin(publish(store, 0))
    queue.put(docs("a", "b", "c"))
    queue.close()  # a copy of a closed queue: an open one keeps recent writes in its -wal file
    shutil.copy(path, tmp_path / "backup.sqlite3")  # a, b, c queued in the copy
    queue = DocumentQueue(path)
    queue.ack([(1, 1.0)], publish(store, 1, learned=(1,)))
    queue.ack([(2, 1.0), (3, 1.0)], publish(store, 3, learned=(2, 3)))
    store.retain()  # the version that learned `a` is gone
    queue.close()
    shutil.copy(tmp_path / "backup.sqlite3", path)
    queue = DocumentQueue(path)
    with pytest.raises(QueueStoreMismatch, match="--rebase-queue") as refused:
        reconcile(queue, store)
    assert "positions 1..1" in str(refused.value)
    assert queue.queued_through(3) == [1, 2, 3]  # a refusal changes nothing

    warning = reconcile(queue, store, rebase=True)
    assert warning is not None and "1 queued documents moved" in warning
    by_id = {row["id"]: row for row in queue.dump()}
    # b and c are in a held version: acknowledged with it. a's fate is unknown: learned again.
    assert (by_id["b"]["state"], by_id["b"]["version"]) == ("learned", 3)
    assert (by_id["a"]["state"], by_id["a"]["seq"]) == ("queued", 4)
    assert [q.doc.id for q in queue.take(after=3, limit=10)] == ["a"]
    assert queue.put(docs("d"))[0].seq == 5
    assert reconcile(queue, store) is None


def test_a_queue_of_another_store_is_refused_unless_rebased(tmp_path: Path) -> None:
    queue = DocumentQueue(tmp_path / "q.sqlite3")
    other, store = SnapshotStore(tmp_path / "other"), SnapshotStore(tmp_path / "s")
    reconcile(queue, other)
    queue.put(docs("a", "b"))
    publish(store, 0)
    publish(store, 5)
    with pytest.raises(QueueStoreMismatch, match="feeds another snapshot store"):
        reconcile(queue, store)
    reconcile(queue, store, rebase=True)
    assert [q.doc.id for q in queue.take(after=5, limit=10)] == ["a", "b"]
    assert queue.store_id() == store.identity()


def test_a_new_store_takes_over_a_queue_and_learns_what_it_holds(tmp_path: Path) -> None:
    queue = DocumentQueue(tmp_path / "q.sqlite3")
    reconcile(queue, SnapshotStore(tmp_path / "lost"))
    queue.put(docs("a"))
    store = SnapshotStore(tmp_path / "s")
    assert reconcile(queue, store) is not None  # said, not refused: it starts at position 0
    assert queue.store_id() == store.identity()


# -- real servers -------------------------------------------------------------------------------


def server_args(model_dir: Path, data: Path, *more: str) -> list[str]:
    args = ["--model", str(model_dir), "--data-dir", str(data), "--device", "cpu"]
    return [*args, "--lr", "0.01", "--publish-every-steps", "1", *more]


def post(url: str, doc_id: str) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/v1/documents",
        json={"documents": [{"id": doc_id, "text": f"The river {doc_id} rose after rain."}]},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    receipt: dict[str, Any] = r.json()["documents"][0]
    return receipt


def learned(url: str, doc_id: str) -> dict[str, Any]:
    """Wait until the document is no longer queued; return its status."""

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = httpx.get(f"{url}/v1/documents/{doc_id}", timeout=30).json()
        return None if status["state"] == "queued" else status

    result: dict[str, Any] = wait_for(done, timeout=120, every=0.1)
    return result


def ingest_and_stop(server: ServeProcess, *ids: str) -> list[int]:
    """Post documents one by one, wait for each to be learned, stop cleanly; their seqs."""
    server.wait_ready()
    seqs = []
    for doc_id in ids:
        seqs.append(post(server.url, doc_id)["seq"])
        assert learned(server.url, doc_id)["state"] == "learned"
    server.kill(signal.SIGTERM)
    return seqs


def refusal(args: list[str]) -> str:
    """Start a server that must refuse to start: its one line of error (checked to be one)."""
    run = subprocess.run(
        [*SERVE, *args, "--port", "0", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        # Library deprecation warnings are not the server's messages.
        env=os.environ
        | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    # transformers' progress bar ("Loading weights: ... it/s]") is not a message
    lines = [line for line in run.stderr.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("livelm serve: error: ")
    return lines[0]


def test_a_deleted_or_truncated_queue_is_rebased_and_learns_again(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    args = server_args(tiny_model_dir, data)
    assert ingest_and_stop(ServeProcess(args, log), "a", "b") == [1, 2]

    (data / "queue.sqlite3").unlink()  # deleted; the snapshots are kept
    server = ServeProcess(args, log)
    server.wait_ready()
    receipt = post(server.url, "c")
    assert receipt["seq"] == 3  # after the store's position, not 1
    status = learned(server.url, "c")
    assert status["state"] == "learned" and status["version"] > 1
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    server.kill(signal.SIGTERM)
    assert "new documents start at 3" in log.read_text()

    (data / "queue.sqlite3").write_bytes(b"")  # truncated to nothing
    server = ServeProcess(args, log)
    server.wait_ready()
    assert post(server.url, "d")["seq"] == 4
    assert learned(server.url, "d")["state"] == "learned"
    server.kill(signal.SIGTERM)

    # Cut in the middle: not a database. Refused, on one line that names the fix.
    queue_file = data / "queue.sqlite3"
    with open(queue_file, "r+b") as f:
        f.seek(0)
        f.write(b"\0" * 100)
    line = refusal(args)
    assert "not a readable document queue" in line and "move it away" in line


def test_an_older_queue_copy_is_refused_then_rebased_with_the_flag(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    args = server_args(tiny_model_dir, data, "--keep-last", "1")
    assert ingest_and_stop(ServeProcess(args, log), "a") == [1]
    # The backup holds `x`, queued: written while no server ran (as `livelm ingest` into a
    # stopped server's queue would be), then copied.
    queue = DocumentQueue(data / "queue.sqlite3")
    assert queue.put([Document("The bridge x opened.", id="x")])[0].seq == 2
    queue.close()
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(data / "queue.sqlite3", backup)
    # x is learned, then more, so that retention drops the version that learned x.
    assert ingest_and_stop(ServeProcess(args, log), "b", "c") == [3, 4]

    for suffix in ("", "-wal", "-shm"):
        Path(f"{data / 'queue.sqlite3'}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, data / "queue.sqlite3")
    line = refusal(args)
    assert "disagree" in line and "start once with --rebase-queue" in line

    server = ServeProcess([*args, "--rebase-queue"], log)
    server.wait_ready()
    status = learned(server.url, "x")  # learned again, after the store's position
    assert status["state"] == "learned" and status["seq"] == 5
    assert post(server.url, "d")["seq"] == 6
    assert learned(server.url, "d")["state"] == "learned"
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    server.kill(signal.SIGTERM)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
