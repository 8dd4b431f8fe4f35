"""Beyond one process, all with real processes: learners on a Redis stream (data-parallel under
torchrun, one of them killed with `kill -9`) learn every document exactly once; `--follow`
replicas serve what the learner publishes and pass a rollback on to each other; a published
LoRA version loads with PEFT as it is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel

from livelm.document import Document
from livelm.learner import Learner, get_strategy
from livelm.model import load_model
from livelm.source.redis_stream import RedisSpec, RedisStreamSource
from livelm.store import SnapshotStore, save_weights
from tests.ddp_steps import TORCHRUN
from tests.redis_util import redis_server
from tests.server_util import ServeProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
WORDS = ["river", "town", "bridge", "storm", "vote", "market", "court", "school", "rain"]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


def documents(prefix: str, n: int) -> list[Document]:
    return [
        Document(f"{prefix} {i}: the {WORDS[i % 9]} by the {WORDS[i * 5 % 9]}.", id=f"{prefix}{i}")
        for i in range(n)
    ]


def learned_chain(store: SnapshotStore) -> list[str]:
    """The entries of every version from the live one back to the base."""
    entries: list[str] = []
    version = store.live()
    while version is not None:
        manifest = store.manifest(version)
        entries += manifest.entries
        version = manifest.parent
    return entries


def learn_command(source: str, store: Path, model: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "livelm",
        "learn",
        "--source",
        source,
        "--store",
        str(store),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--docs-per-step",
        "2",
        "--keep-last",
        "100000",
        *extra,
    ]


def test_two_ranks_learn_every_document_once_across_a_kill_9(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = f"{redis_url}?stream=docs&group=learners"
    writer = RedisStreamSource(RedisSpec.parse(source, consumer="writer"))
    writer.add(documents("a", 40))
    store_dir, log = tmp_path / "store", tmp_path / "learn.log"
    torchrun = [*TORCHRUN, "--max-restarts", "3"]
    args = learn_command(
        source, store_dir, tiny_model_dir, "--publish-every-steps", "2", "--exit-when-idle", "4"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*torchrun, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,  # its ranks die with it, whatever happens here
        )
    store = SnapshotStore(store_dir)
    try:
        wait_for(lambda: len(store.versions()) >= 3, timeout=240, every=0.05)
        ranks = wait_for(lambda: _children(proc.pid), timeout=30)
        os.kill(ranks[-1], signal.SIGKILL)  # one learner dies mid-stream
        writer.add(documents("b", 30))  # the stream goes on
        assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    all_entries = [e.decode() for e, _ in writer.client.xrange("docs")]
    counts = Counter(learned_chain(store))
    assert sorted(counts) == sorted(all_entries), log.read_text()[-3000:]
    assert set(counts.values()) == {1}  # each exactly once
    assert writer.pending() == 0
    assert "attempt 1" in log.read_text()  # the group was restarted after the kill


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def test_replicas_follow_the_learner_and_a_rollback_reaches_every_one(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = f"{redis_url}?stream=docs&group=learners"
    store_dir = tmp_path / "store"
    command = learn_command(source, store_dir, tiny_model_dir, "--publish-every-steps", "1")
    with open(tmp_path / "learn.log", "wb") as log:
        learner = subprocess.Popen(
            [sys.executable, *command, "--block-ms", "100"], stderr=log, env=ENV
        )
    follow = ["--model", str(tiny_model_dir), "--device", "cpu", "--follow", str(store_dir)]
    replicas = [
        ServeProcess([*follow, "--source", source], tmp_path / f"replica{i}.log") for i in range(2)
    ]
    try:
        for r in replicas:
            r.wait_ready()

        def versions() -> list[int]:
            return [httpx.get(f"{r.url}/v1/models").json()["data"][0]["version"] for r in replicas]

        assert versions() == [1, 1]
        posted = httpx.post(
            f"{replicas[0].url}/v1/documents", json={"id": "n1", "text": "Flood in the old town."}
        )
        assert posted.status_code == 202, posted.text
        started = time.monotonic()
        wait_for(lambda: versions() == [2, 2], timeout=60, every=0.05)
        assert time.monotonic() - started < 60
        snapshot = httpx.get(f"{replicas[1].url}/v1/snapshots/2").json()
        assert snapshot["parent"] == 1

        back = httpx.post(f"{replicas[1].url}/v1/snapshots/1/rollback")
        assert back.status_code == 200, back.text
        wait_for(lambda: versions() == [1, 1], timeout=30, every=0.05)
        # The learner continues from the version rolled back to.
        httpx.post(
            f"{replicas[1].url}/v1/documents", json={"id": "n2", "text": "The bridge reopens."}
        )
        wait_for(lambda: versions() == [3, 3], timeout=60, every=0.05)
        assert httpx.get(f"{replicas[0].url}/v1/snapshots/3").json()["parent"] == 1
        late = ServeProcess(follow, tmp_path / "late.log")  # starts after it all: the newest
        late.wait_ready()
        assert httpx.get(f"{late.url}/v1/models").json()["data"][0]["version"] == 3
        late.kill()
    finally:
        for r in replicas:
            r.kill()
        learner.kill()
        learner.wait()


def test_a_published_lora_version_loads_with_peft_and_gives_the_same_logits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(tiny_model_dir), device="cpu")
    config = get_strategy("online").replace(lr=1e-2, warmup_steps=0, precision="fp32")
    learner = Learner(loaded.model, loaded.tokenizer, config)
    for text in ["Storm hits the coast.", "Markets rise after the vote."]:
        learner.step([learner.encode(Document(text))])
    save_weights(learner.model, tmp_path)
    ids = torch.tensor([learner.encode(Document("The storm and the vote.")).chunks[0]])
    with torch.no_grad():
        ours = learner.model(input_ids=ids).logits
        base = load_model(str(tiny_model_dir), device="cpu").model
        peft = PeftModel.from_pretrained(base, tmp_path).eval()
        theirs = peft(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), peft.disable_adapter():
        assert not torch.allclose(peft(input_ids=ids).logits, ours, atol=1e-4)  # it learned
