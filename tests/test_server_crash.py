"""Nothing lost: `kill -9` a real `livelm serve` at random moments while documents flow in;
after each restart every accepted document is learned exactly once, and every version loads.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from pathlib import Path

import httpx
from peft import PeftModel
from transformers import AutoModelForCausalLM

from livelm.source.queue import DocumentQueue
from livelm.store import SnapshotStore
from tests.server_util import ServeProcess, wait_for

ROUNDS = 10
_WORDS = ["river", "town", "bridge", "storm", "vote", "market", "court", "school", "rain"]


def spawn_server(model_dir: Path, data_dir: Path, log: Path) -> ServeProcess:
    """It waits up to a minute for the data directory (`--lock-wait`), so the next round's
    server is started while this round's serves: its seconds of imports overlap the round, and
    it takes over the moment the kill releases the lock."""
    args = ["--model", str(model_dir), "--data-dir", str(data_dir), "--device", "cpu"]
    args += ["--lr", "0.01", "--publish-every-steps", "1"]
    args += ["--keep-last", "100000"]  # keep every version, to check them all
    args += ["--lock-wait", "60"]
    return ServeProcess(args, log)


class Poster(threading.Thread):
    """Posts small batches of new documents until the server dies; remembers what it accepted.

    Now and then it re-sends a document accepted before (perhaps in an earlier round): a
    re-send must never be stored or learned twice.
    """

    def __init__(self, url: str, prefix: str, rng: random.Random, accepted: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.prefix, self.rng, self.accepted = url, prefix, rng, accepted
        self.refused: str | None = None  # a response other than 202, for the test to report

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for n in range(10_000):
                batch = [
                    {
                        "id": f"{self.prefix}-{n}-{k}",
                        "text": " ".join(self.rng.choices(_WORDS, k=9)),
                    }
                    for k in range(self.rng.randint(1, 4))
                ]
                if self.accepted and self.rng.random() < 0.2:
                    old = self.rng.choice(sorted(self.accepted))
                    batch.append({"id": old, "text": self.accepted[old]})
                try:
                    r = client.post("/v1/documents", json={"documents": batch})
                except httpx.HTTPError:
                    return  # killed
                if r.status_code != 202:
                    self.refused = f"{r.status_code}: {r.text}"
                    return
                self.accepted.update({d["id"]: d["text"] for d in batch})


def test_kill_9_at_random_moments_loses_nothing_and_learns_everything_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    seed = int(os.environ.get("LIVELM_CRASH_SEED", time.time()))
    rng = random.Random(seed)
    data, log = tmp_path / "data", tmp_path / "server.log"
    accepted: dict[str, str] = {}
    spawned: list[ServeProcess] = []

    def spawn() -> ServeProcess:
        spawned.append(spawn_server(tiny_model_dir, data, log))
        return spawned[-1]

    try:
        server = spawn()
        for round_ in range(ROUNDS):
            if rng.random() < 0.2:  # sometimes while it loads, acknowledges and bootstraps
                time.sleep(rng.uniform(0.0, 1.0))
                server.kill()
                following = spawn()
            else:
                server.wait_ready()  # so it holds the data directory: the next one waits
                following = spawn()  # imports now, takes over after the kill
                poster = Poster(server.url, f"r{round_}", rng, accepted)
                poster.start()
                time.sleep(rng.uniform(0.2, 3.0))
                server.kill()
                poster.join(30)
                assert poster.refused is None, poster.refused
            server = following
        server.wait_ready()

        def drained() -> bool:
            metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
            return 'livelm_documents{state="queued"} 0.0' in metrics

        # At least 20 documents a second (the tiny model learns far faster alone), 120 s at least.
        try:
            wait_for(drained, timeout=max(120.0, len(accepted) / 20), every=0.1)
        except AssertionError as e:
            context = f"{len(accepted)} accepted; seed {seed}, log {log}"
            raise AssertionError(f"{e} ({context})") from None
    finally:
        for process in spawned:
            process.kill()
    check_exactly_once(data, accepted, tiny_model_dir, f"seed {seed}, log {log}")


def check_exactly_once(data: Path, accepted: dict[str, str], model_dir: Path, context: str) -> None:
    rows = {row["id"]: row for row in DocumentQueue(data / "queue.sqlite3").dump()}
    store = SnapshotStore(data / "snapshots", keep_last=100_000)
    versions = store.versions()
    manifests = {v: store.manifest(v) for v in versions}
    assert accepted, context
    assert set(accepted) <= set(rows), f"accepted documents lost ({context})"
    assert all(row["state"] == "learned" for row in rows.values()), context

    # Each stored document is in exactly one version's manifest, the one the queue names.
    times = collections.Counter(seq for m in manifests.values() for seq in m.learned)
    assert times and max(times.values()) == 1, f"a document learned twice ({context})"
    assert set(times) == {row["seq"] for row in rows.values()}, context
    for row in rows.values():
        assert row["seq"] in manifests[row["version"]].learned, (row, context)

    # One lineage (no rollbacks here), covering the stream in order.
    assert versions == list(range(1, len(versions) + 1)), context
    for v in versions[1:]:
        m = manifests[v]
        assert m.parent == v - 1, context
        assert m.position >= manifests[v - 1].position, context
        assert all(manifests[v - 1].position < seq <= m.position for seq in m.learned), context

    # Every published version is a loadable PEFT adapter.
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), store.path(1), adapter_name="v1"
    )
    for v in versions[1:]:
        model.load_adapter(store.path(v), adapter_name="check")
        model.delete_adapter("check")  # PEFT's loading slows with every adapter held
