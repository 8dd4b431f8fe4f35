"""Each kept version is a model: `/v1/models` lists `livelm@N` for every version the store keeps,
and a request that names one is answered by it, the same after newer versions went live; the
versions loaded for such requests stay within a small LRU."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from livelm.server import create_app
from livelm.server.pinned import PinnedVersions
from livelm.server.runtime import Runtime
from livelm.server.versions import ServingVersion
from livelm.store import Manifest
from tests.server_util import TINY_LEARNER, tiny_settings, wait_done, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The quick brown"
TEXT = "The river floods the old town overnight, and the bridge is closed."
ZEBRA = "zebra zebra zebra " * 6


def runtime_of(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def learn(client: TestClient, doc_id: str, text: str) -> int:
    """Send one document, wait until it is learned; the version that holds it (now live)."""
    r = client.post("/v1/documents", json={"id": doc_id, "text": text})
    assert r.status_code == 202, r.text
    status = wait_done(client, doc_id)
    assert status["state"] == "learned", status
    version: int = status["version"]
    wait_for(lambda: runtime_of(client).live.number == version)
    return version


def model_ids(client: TestClient) -> list[str]:
    return [m["id"] for m in client.get("/v1/models").json()["data"]]


def complete(client: TestClient, model: str, **extra: Any) -> tuple[str, int, dict[str, Any]]:
    """A greedy completion: its text, the version in its header, and the body."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, **extra}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return data["choices"][0]["text"], int(r.headers["X-Livelm-Version"]), data


def chat(client: TestClient, model: str) -> tuple[str, int]:
    messages = [{"role": "user", "content": "Tell me about the river."}]
    body = {"model": model, "messages": messages, "max_tokens": 10, "temperature": 0}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"], int(r.headers["X-Livelm-Version"])


def score(client: TestClient, body: dict[str, Any]) -> tuple[float, int, str]:
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return data["documents"][0]["loss"], data["version"], data["model"]


def streamed(client: TestClient, model: str) -> str:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])


@pytest.fixture
def client(tiny_model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", keep_last=2)
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_pinned_version_answers_as_it_did_when_live(client: TestClient) -> None:
    pinned = learn(client, "first", TEXT)
    assert pinned == 2
    # What version 2 answers while it is live.
    text, version, _ = complete(client, "livelm")
    chat_text, _ = chat(client, "livelm")
    loss, _, _ = score(client, {"text": ZEBRA})
    assert version == 2
    assert client.put("/v1/snapshots/2/pin").status_code == 200  # kept whatever the retention

    newer = [learn(client, f"z{i}", ZEBRA) for i in range(4)]
    assert newer == [3, 4, 5, 6]
    live_loss, live_version, _ = score(client, {"text": ZEBRA})
    assert live_version == 6 and live_loss < loss - 0.1  # the live version learned since
    assert complete(client, "livelm")[0] != text  # and answers otherwise

    # Named, version 2 answers as it did: text, chat, stream, and score.
    again, version, body = complete(client, "livelm@2")
    assert (again, version) == (text, 2)
    assert body["model"] == "livelm@2" and body["system_fingerprint"] == "livelm-v2"
    assert chat(client, "livelm@2") == (chat_text, 2)
    assert streamed(client, "livelm@2") == text
    pinned_loss, version, model = score(client, {"text": ZEBRA, "model": "livelm@2"})
    assert (version, model) == (2, "livelm@2")
    assert pinned_loss == pytest.approx(loss, abs=1e-5)
    listed = score(client, {"documents": [{"text": ZEBRA}], "model": "livelm@2"})
    assert listed[0] == pytest.approx(loss, abs=1e-5)
    # In memory, version 2 owns only its merged projections: every tensor LoRA does not touch
    # (embeddings, norms) is the live version's, itself the learner's frozen base.
    pinned_model = runtime_of(client).models.pinned.get(2).model
    live_ids = {id(p) for p in runtime_of(client).live.model.parameters()}
    own = {n for n, p in pinned_model.named_parameters() if id(p) not in live_ids}
    adapted = {f"{n}.weight" for n, _ in pinned_model.named_modules() if n.endswith("_proj")}
    assert own == adapted and len(adapted) == 14  # 7 projections in each of 2 layers
    assert not any("lora_" in n for n, _ in pinned_model.named_parameters())
    # Naming the live version is the live version; no model is the live version too.
    assert score(client, {"text": ZEBRA, "model": "livelm@6"})[:2] == (live_loss, 6)
    assert score(client, {"text": ZEBRA, "model": "livelm"})[:2] == (live_loss, 6)

    # /v1/models: the live one, then every kept version, newest first (v1 and v2 pinned,
    # the last two kept by retention, which runs just after the documents are acknowledged).
    wait_for(lambda: len(model_ids(client)) == 5)
    models = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["version"]) for m in models] == [
        ("livelm", 6),
        ("livelm@6", 6),
        ("livelm@5", 5),
        ("livelm@2", 2),
        ("livelm@1", 1),
    ]
    assert all(m["object"] == "model" and m["created"] > 0 for m in models)


def test_a_full_weight_servers_versions_are_models_too(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A full-weight learner's versions are whole models: a named one is loaded into a copy of
    the live serving model (LoRA's path loads into a copy of the adapters)."""
    learner = TINY_LEARNER.replace(update="full", lr=1e-3)
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", learner=learner)
    with TestClient(create_app(settings)) as client:
        text, _, _ = complete(client, "livelm")
        loss, _, _ = score(client, {"text": ZEBRA})
        for i in range(2):
            learn(client, f"z{i}", ZEBRA)
        assert score(client, {"text": ZEBRA})[0] < loss - 0.1
        assert complete(client, "livelm@1")[:2] == (text, 1)
        assert score(client, {"text": ZEBRA, "model": "livelm@1"})[0] == pytest.approx(
            loss, abs=1e-5
        )
        live = runtime_of(client).live.model
        pinned = runtime_of(client).models.pinned.get(1).model
        assert not {id(p) for p in pinned.parameters()} & {id(p) for p in live.parameters()}


def test_unknown_deleted_and_malformed_versions_are_refused(client: TestClient) -> None:
    for i in range(3):
        learn(client, f"d{i}", f"{TEXT} Day {i}.")  # versions 2 to 4; retention deletes 2
    # Retention runs just after a version's documents are acknowledged.
    kept = ["livelm", "livelm@4", "livelm@3", "livelm@1"]
    wait_for(lambda: model_ids(client) == kept)

    def refused(model: str, path: str = "/v1/completions") -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "prompt": PROMPT, "max_tokens": 4}
        if path == "/v1/score":
            body = {"model": model, "text": TEXT}
        elif path == "/v1/chat/completions":
            body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        r = client.post(path, json=body)
        error: dict[str, Any] = r.json()["error"]
        assert error["param"] == "model" and error["code"] == r.status_code, error
        assert model in error["message"], error
        return r.status_code, error

    for path in ("/v1/completions", "/v1/chat/completions", "/v1/score"):
        status, error = refused("livelm@2", path)  # deleted by retention
        assert status == 404 and "not in the store" in error["message"]
        assert refused("livelm@999", path)[0] == 404  # never published
        assert refused("gpt-4", path)[0] == 404  # another model
        assert refused("other@3", path)[0] == 404
        for bad in ("livelm@", "livelm@abc", "livelm@0", "livelm@-1", "livelm@v3", "livelm@1.5"):
            status, error = refused(bad, path)
            assert status == 400 and "positive whole number" in error["message"], bad
    assert runtime_of(client).models.pinned.loads == 0  # nothing was loaded for any of them


def test_the_versions_in_memory_stay_within_the_bound(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", pinned_versions=2)
    with TestClient(create_app(settings)) as client:
        for i in range(3):
            learn(client, f"d{i}", f"{ZEBRA} {i}")
        pinned = runtime_of(client).models.pinned
        assert runtime_of(client).live.number == 4
        answers = {v: complete(client, f"livelm@{v}")[:2] for v in (1, 2, 3)}
        assert all(version == v for v, (_, version) in answers.items())
        assert (pinned.loads, pinned.held()) == (3, [2, 3])  # v1, least recent, went first
        complete(client, "livelm@4")  # the live version: never loaded, never held
        assert (pinned.loads, pinned.held()) == (3, [2, 3])
        assert complete(client, "livelm@2")[:2] == answers[2]  # held: no load
        assert (pinned.loads, pinned.held()) == (3, [3, 2])
        assert complete(client, "livelm@1")[:2] == answers[1]  # loaded again, evicts v3
        assert (pinned.loads, pinned.held()) == (4, [2, 1])


def test_concurrent_requests_for_one_version_load_it_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", pinned_versions=1)
    with TestClient(create_app(settings)) as client:
        expected, _, _ = complete(client, "livelm")
        learn(client, "d", ZEBRA)
        results: list[tuple[str, int]] = []

        def ask() -> None:
            text, version, _ = complete(client, "livelm@1")
            results.append((text, version))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [(expected, 1)] * 4
        assert runtime_of(client).models.pinned.loads == 1


def test_one_load_serves_every_waiter_and_a_failed_load_keeps_nothing() -> None:
    """The LRU on its own, with a slow loader: waiters share one load; an error reaches every
    waiter and the next request tries again."""
    calls: list[int] = []
    fail = threading.Event()

    def load(version: int) -> ServingVersion:
        calls.append(version)
        time.sleep(0.2)
        if fail.is_set():
            raise FileNotFoundError(version)
        manifest = Manifest(version=version, parent=None, kind="lora", base_model="m", position=0)
        return ServingVersion(manifest, object())  # type: ignore[arg-type]

    versions = PinnedVersions(load, capacity=1)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(versions.get(7))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [7] and len(got) == 5 and all(g is got[0] for g in got)

    fail.set()
    errors: list[BaseException] = []

    def failing() -> None:
        try:
            versions.get(8)
        except FileNotFoundError as e:
            errors.append(e)

    threads = [threading.Thread(target=failing) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [7, 8] and len(errors) == 3 and versions.held() == [7]
    fail.clear()
    assert versions.get(8).number == 8 and versions.held() == [8]


def test_a_follow_replica_serves_kept_versions_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A `--follow` replica loads a named version the way it loads a live one, from the store."""
    data = tmp_path / "data"
    with TestClient(create_app(tiny_settings(tiny_model_dir, data))) as main:
        original, _, _ = complete(main, "livelm")
        loss, _, _ = score(main, {"text": ZEBRA})
        for i in range(2):
            learn(main, f"z{i}", ZEBRA)
        replica_settings = tiny_settings(
            tiny_model_dir, tmp_path / "unused", follow=data / "snapshots"
        )
        with TestClient(create_app(replica_settings)) as replica:
            assert runtime_of(replica).live.number == 3
            ids = [m["id"] for m in replica.get("/v1/models").json()["data"]]
            assert ids == ["livelm", "livelm@3", "livelm@2", "livelm@1"]
            assert complete(replica, "livelm@1")[:2] == (original, 1)
            pinned_loss, version, _ = score(replica, {"text": ZEBRA, "model": "livelm@1"})
            assert version == 1 and pinned_loss == pytest.approx(loss, abs=1e-5)
            assert score(replica, {"text": ZEBRA})[1] == 3  # the live one is still v3
            assert (
                replica.post(
                    "/v1/completions", json={"model": "livelm@9", "prompt": PROMPT}
                ).status_code
                == 404
            )
