"""The one learning loop under faults, with real parts: a Redis stream for the workers' paths, a
real tmpfs that fills up or turns read-only, real `livelm serve` processes."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from livelm.document import Document
from livelm.loop import CanaryGuard, LearningLoop, LoopSettings, QueueFeed, canary_documents
from livelm.model import load_model
from livelm.policy import build_learner
from livelm.source.queue import DocumentQueue
from livelm.source.redis_stream import RedisSpec, RedisStreamSource
from livelm.store import SnapshotStore, base_model_id, load_weights
from livelm.worker import WorkerSettings, build_worker
from tests.fs_util import fill, remount, tmpfs
from tests.redis_util import redis_server
from tests.server_util import TINY_LEARNER, ServeProcess, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")

POISON = "Poison qxzj QXZJ 0987!"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


def news(n: int, prefix: str = "d") -> list[Document]:
    return [
        Document(f"Day {i}: the council met and voted on the park.", id=f"{prefix}{i}")
        for i in range(n)
    ]


def worker(source: str, model: Path, store: Path) -> LearningLoop:
    settings = WorkerSettings(
        source=source,
        store=store,
        model=str(model),
        device="cpu",
        docs_per_step=8,
        block_ms=100,
        exit_when_idle_s=0.5,
    )
    return build_worker(settings)


def poison(loop: LearningLoop, others: list[Document]) -> None:
    """NaN in the embedding of a token that only POISON holds."""
    tok = loop.learner.encode
    used = {t for d in others for c in tok(d).chunks for t in c}
    token = next(t for t in tok(Document(POISON)).chunks[0][1:] if t not in used)
    with torch.no_grad():
        loop.learner.model.get_input_embeddings().weight[token] = math.nan


def rejected(writer: RedisStreamSource) -> dict[str, str]:
    """Rejected entry -> reason."""
    return {
        fields[b"entry"].decode(): fields[b"reason"].decode()
        for _, fields in writer.client.xrange("docs:rejected")
    }


def test_a_worker_isolates_a_poisoned_document_and_learns_the_rest(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = f"{redis_url}?stream=docs&group=g"
    writer = RedisStreamSource(RedisSpec.parse(source, consumer="writer"))
    good = news(6)
    writer.add([*good[:3], Document(POISON, id="bad"), *good[3:]])
    loop = worker(source, tiny_model_dir, tmp_path / "store")
    loop.bootstrap()
    poison(loop, good)
    loop.run()
    loop.close()

    store = SnapshotStore(tmp_path / "store")
    learned = [e for v in store.versions() for e in store.manifest(v).entries]
    reasons = rejected(writer)
    assert len(learned) == 6 and len(reasons) == 1, (learned, reasons)
    (reason,) = reasons.values()
    assert reason == "not learned: non-finite loss"
    assert set(learned).isdisjoint(reasons)
    assert writer.pending() == 0
    assert loop.rejected == 1 and loop.skipped_steps == 0


def test_a_worker_rejects_what_the_guard_refuses_and_goes_back_to_the_live_version(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = f"{redis_url}?stream=docs&group=g"
    writer = RedisStreamSource(RedisSpec.parse(source, consumer="writer"))
    writer.add(news(5))
    loop = worker(source, tiny_model_dir, tmp_path / "store")
    loop.bootstrap()
    assert loop.base_canary_loss is not None
    # As if the model had slowly climbed 1 nat/token above its base over earlier versions:
    # the next candidate, however small its own step, passes the cumulative limit.
    loop.base_canary_loss -= 1.0
    loop.run()
    loop.close()

    store = SnapshotStore(tmp_path / "store")
    assert store.versions() == [1]
    reasons = rejected(writer)
    assert len(reasons) == 5
    assert all("--guard-max-total-rise" in r for r in reasons.values()), reasons
    assert writer.pending() == 0
    # the learner went back to the live version's weights
    base = load_model(str(tiny_model_dir), device="cpu")
    ref = build_learner(base.model, base.tokenizer, loop.learner.config)
    load_weights(ref.model, store.path(1))
    ours = dict(loop.learner.model.named_parameters())
    for name, p in ref.model.named_parameters():
        assert torch.equal(p, ours[name]), name


def test_the_guard_catches_a_slow_climb_each_step_of_which_is_small(
    tiny_model_dir: Path,
) -> None:
    loaded = load_model(str(tiny_model_dir), device="cpu")
    learner = build_learner(loaded.model, loaded.tokenizer, TINY_LEARNER)
    guard = CanaryGuard(canary_documents(None), max_rise=1.0, max_total_rise=0.5)
    now = guard.loss(learner)
    assert guard.check(learner, live_loss=now - 0.4, base_loss=now - 0.4).refused is None
    verdict = guard.check(learner, live_loss=now - 0.3, base_loss=now - 0.6)
    assert verdict.refused is not None and "--guard-max-total-rise" in verdict.refused
    assert "--guard-max-rise" in str(guard.check(learner, now - 1.1, now - 1.1).refused)


def test_a_rollback_that_cannot_be_recorded_changes_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(tiny_model_dir), device="cpu")
    canary = canary_documents(None)
    queue = DocumentQueue(tmp_path / "queue.sqlite3")
    with tmpfs(tmp_path / "snapshots", "4m") as snapshots:
        store = SnapshotStore(snapshots)
        loop = LearningLoop(
            learner=build_learner(loaded.model, loaded.tokenizer, TINY_LEARNER),
            feed=QueueFeed(queue),
            store=store,
            guard=CanaryGuard(canary, 1.0),
            base_model=base_model_id(str(tiny_model_dir)),
            where="test",
            settings=LoopSettings(publish_every_steps=1, block_ms=50),
        )
        loop.bootstrap()
        loop.start()
        for doc in news(3):
            queue.put([doc])
            loop.notify()
            wait_for(lambda: queue.counts()["queued"] == 0, timeout=60)
        loop.stop()
        assert store.versions() == [1, 2, 3, 4] and loop.live is not None
        weights = {n: p.detach().clone() for n, p in loop.learner.model.named_parameters()}

        remount(snapshots, "ro")
        try:
            with pytest.raises(OSError):
                loop.rollback(2)
            assert store.live() == 4 and loop.live.version == 4
            for n, p in loop.learner.model.named_parameters():
                assert torch.equal(p, weights[n]), n
        finally:
            remount(snapshots, "rw")
        assert loop.rollback(2).version == 2
        assert store.live() == 2 and loop.live.version == 2
    queue.close()


def test_a_full_disk_stops_publishing_until_there_is_room_and_loses_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with tmpfs(data / "snapshots", "2m") as snapshots:
        server = ServeProcess(
            ["--model", str(tiny_model_dir), "--device", "cpu", "--data-dir", str(data)],
            tmp_path / "serve.log",
        )
        try:
            server.wait_ready()
            url = server.url
            filler = fill(snapshots)
            posted = httpx.post(f"{url}/v1/documents", json=[d.__dict__ for d in news(3)])
            assert posted.status_code == 202, posted.text

            def not_ready() -> str | None:
                r = httpx.get(f"{url}/readyz")
                return r.text if r.status_code == 503 else None

            why = wait_for(not_ready, timeout=60)
            assert "No space left on device" in why, why
            states = {httpx.get(f"{url}/v1/documents/d{i}").json()["state"] for i in range(3)}
            assert states == {"queued"}
            filler.unlink()

            def learned() -> bool:
                return all(
                    httpx.get(f"{url}/v1/documents/d{i}").json()["state"] == "learned"
                    for i in range(3)
                )

            wait_for(learned, timeout=60)
            assert httpx.get(f"{url}/readyz").status_code == 200

            live = httpx.get(f"{url}/v1/snapshots").json()["live"]
            remount(snapshots, "ro")
            try:
                back = httpx.post(f"{url}/v1/snapshots/1/rollback")
            finally:
                remount(snapshots, "rw")
            assert back.status_code == 503, back.text
            assert "nothing changed" in back.json()["error"]["message"]
            assert httpx.get(f"{url}/v1/snapshots").json()["live"] == live
        finally:
            server.kill()
        shutil.copytree(snapshots, tmp_path / "kept")  # the manifests, for the count below
    store = SnapshotStore(tmp_path / "kept")
    learned_seqs = [s for v in store.versions() for s in store.manifest(v).learned]
    assert sorted(learned_seqs) == [1, 2, 3]  # each once


def test_a_full_weight_replica_serves_what_the_learner_published(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    learner = ServeProcess(
        [*model, "--strategy", "online-full", "--data-dir", str(tmp_path / "data")],
        tmp_path / "learner.log",
    )
    replica = None
    try:
        learner.wait_ready()
        posted = httpx.post(f"{learner.url}/v1/documents", json={"id": "a", "text": "Flood."})
        assert posted.status_code == 202
        wait_for(
            lambda: httpx.get(f"{learner.url}/v1/documents/a").json()["state"] == "learned",
            timeout=60,
        )
        replica = ServeProcess(
            [*model, "--follow", str(tmp_path / "data" / "snapshots")], tmp_path / "replica.log"
        )
        replica.wait_ready()
        text = {"text": "The flood reached the old town."}
        ours = httpx.post(f"{learner.url}/v1/score", json=text).json()
        theirs = httpx.post(f"{replica.url}/v1/score", json=text).json()
        assert ours["version"] == theirs["version"] == 2
        assert theirs["documents"][0]["loss"] == pytest.approx(
            ours["documents"][0]["loss"], abs=1e-4
        )
        manifest = httpx.get(f"{replica.url}/v1/snapshots/2").json()
        assert manifest["kind"] == "full"
    finally:
        learner.kill()
        if replica is not None:
            replica.kill()


def test_steps_sized_in_tokens_leave_the_rest_for_the_next_step_and_lose_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(tiny_model_dir), device="cpu")
    config = TINY_LEARNER.replace(max_docs_per_step=8, step_tokens=40)
    queue = DocumentQueue(tmp_path / "queue.sqlite3")
    store = SnapshotStore(tmp_path / "snapshots", keep_last=1000)
    loop = LearningLoop(
        learner=build_learner(loaded.model, loaded.tokenizer, config),
        feed=QueueFeed(queue),
        store=store,
        guard=CanaryGuard(canary_documents(None), 1.0),
        base_model=base_model_id(str(tiny_model_dir)),
        where="test",
        settings=LoopSettings(publish_every_steps=1, block_ms=50),
    )
    loop.bootstrap()
    queue.put(news(12))
    loop.start()
    wait_for(lambda: queue.counts()["queued"] == 0, timeout=60)
    loop.stop()
    manifests = [store.manifest(v) for v in store.versions()[1:]]
    learned = [seq for m in manifests for seq in m.learned]
    assert sorted(learned) == list(range(1, 13))  # each once
    assert len(manifests) > 2  # 12 documents of ~14 tokens: several 40-token steps
    for before, m in zip([store.manifest(1), *manifests], manifests, strict=False):
        assert all(before.position < seq <= m.position for seq in m.learned)
    queue.close()
