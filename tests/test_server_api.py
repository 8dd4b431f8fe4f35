"""The server learns while it serves: versions go live, scores follow, rollback, in-flight
requests keep their version, and every route answers."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from livelm.document import Document
from livelm.learner import Learner
from livelm.policy import PolicyLearner
from livelm.server import create_app
from livelm.server.inference import Sampling
from livelm.server.runtime import Runtime
from tests.server_util import greedy, tiny_settings, wait_done

TEXT = "The river floods the old town overnight, and the bridge is closed."


@pytest.fixture
def client(tiny_model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings(tiny_model_dir, tmp_path / "data"))) as c:
        yield c


def runtime_of(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def score(client: TestClient, text: str) -> tuple[float, int]:
    r = client.post("/v1/score", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["documents"][0]["loss"], body["version"]


def test_a_learned_document_changes_the_live_version_and_its_score_drops(
    client: TestClient,
) -> None:
    before, version = score(client, TEXT)
    assert version == 1 and client.get("/v1/models").json()["data"][0]["version"] == 1

    r = client.post("/v1/documents", json={"id": "flood", "text": TEXT, "time": "2024-05-01"})
    assert r.status_code == 202
    assert r.json()["documents"] == [
        {"id": "flood", "seq": 1, "state": "queued", "duplicate": False}
    ]
    status = wait_done(client, "flood")

    assert status["state"] == "learned" and status["version"] == 2
    assert status["loss"] == pytest.approx(before, abs=1e-4)  # scored before it was learned
    after, version = score(client, TEXT)
    assert version == 2
    assert after < before - 0.05
    assert client.get("/v1/models").json()["data"][0]["version"] == 2
    snapshot = client.get("/v1/snapshots/2").json()
    assert snapshot["parent"] == 1 and snapshot["live"] and snapshot["learned"] == [1]
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= set(
        snapshot["files"]
    )
    # Re-sending is idempotent: nothing new is stored, and the state says where it went.
    again = client.post("/v1/documents", json={"id": "flood", "text": TEXT}).json()
    assert again["accepted"] == 0 and again["documents"][0]["state"] == "learned"


def test_rollback_makes_the_older_version_live_and_generation_follows(
    client: TestClient,
) -> None:
    prompt = "The quick brown"
    original, version = greedy(client, prompt)
    assert version == 1
    docs = [{"id": f"fox-{i}", "text": "zebra zebra zebra " * 6} for i in range(4)]
    client.post("/v1/documents", json={"documents": docs})
    learned = [wait_done(client, d["id"]) for d in docs]
    newest = max(s["version"] for s in learned)
    changed, version = greedy(client, prompt)
    assert version == newest and changed != original

    r = client.post("/v1/snapshots/1/rollback")
    assert r.status_code == 200 and r.json()["live"] is True
    assert client.get("/v1/snapshots").json()["live"] == 1
    assert greedy(client, prompt) == (original, 1)

    # The learner continues from the version rolled back to.
    client.post("/v1/documents", json={"id": "after", "text": TEXT})
    status = wait_done(client, "after")
    assert client.get(f"/v1/snapshots/{status['version']}").json()["parent"] == 1
    assert status["version"] > newest


def test_an_in_flight_request_finishes_on_the_version_it_started_with(
    client: TestClient,
) -> None:
    runtime = runtime_of(client)
    started = runtime.live  # what a request holds from its start
    prompt_ids = runtime.prompt_ids("The quick brown", 12)
    sampling = Sampling(max_tokens=12, temperature=0)
    weights = {n: p.clone() for n, p in started.model.named_parameters()}

    def complete(version: object) -> str:
        return "".join(p.text for p in runtime.generate(prompt_ids, sampling, version))  # type: ignore[arg-type]

    first = complete(started)
    docs = [{"id": f"z-{i}", "text": "zebra zebra zebra " * 6} for i in range(4)]
    client.post("/v1/documents", json={"documents": docs})
    for d in docs:
        wait_done(client, d["id"])
    assert runtime.live.number > started.number
    assert complete(started) == first  # the old version still answers as it did
    assert complete(runtime.live) != first
    for name, p in started.model.named_parameters():  # learning never wrote into it
        assert torch.equal(p, weights[name]), name


def test_serving_scores_equal_the_learners_scores(client: TestClient) -> None:
    runtime = runtime_of(client)
    learner = runtime.learner.learner  # a policy learner, where the strategy has a policy
    assert isinstance(learner, Learner | PolicyLearner)
    texts = [TEXT, "Short.", "A much longer text " * 20]
    expected = learner.score([learner.encode(Document(t)) for t in texts])
    body = client.post("/v1/score", json=[{"text": t} for t in texts]).json()
    for got, want in zip(body["documents"], expected, strict=True):
        assert got["tokens"] == want.tokens
        assert got["loss"] == pytest.approx(want.loss, abs=1e-4)


def test_documents_report_their_state_and_health_and_metrics_answer(
    client: TestClient,
) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    r = client.post("/v1/documents", json=[{"text": "one"}, {"text": "two", "topic": "x"}])
    ids = [d["id"] for d in r.json()["documents"]]
    for doc_id in ids:
        assert wait_done(client, doc_id)["state"] == "learned"
    assert client.get("/v1/documents/nope").status_code == 404
    metrics = client.get("/metrics").text
    for name in (
        'livelm_documents{state="learned"} 2.0',
        "livelm_live_version",
        "livelm_learner_steps_total",
        "livelm_publish_seconds_bucket",
        "livelm_request_seconds_bucket",
        "livelm_drift_events_total 0.0",
        "livelm_publish_refused_total 0.0",
    ):
        assert name in metrics, name
    assert "/v1/snapshots/{version}/rollback" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_every_asset_from_the_server(client: TestClient, page: str) -> None:
    """/docs and /redoc work offline: each script and style they name is served by livelm."""
    html = client.get(page).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets), html
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset


def test_pins_survive_retention(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", keep_last=2)
    with TestClient(create_app(settings)) as client:
        client.post("/v1/documents", json={"id": "a", "text": "first text"})
        wait_done(client, "a")
        assert client.put("/v1/snapshots/2/pin").json()["pinned"] is True
        for i in range(3):
            client.post("/v1/documents", json={"id": f"b{i}", "text": f"text number {i}"})
            wait_done(client, f"b{i}")
        versions = [s["version"] for s in client.get("/v1/snapshots").json()["snapshots"]]
    newest = max(versions)
    assert set(versions) == {1, 2, newest - 1, newest}  # base and v2 pinned, last two kept


def test_surprise_is_a_z_score_against_the_stream(client: TestClient) -> None:
    first = client.post("/v1/score", json={"text": TEXT}).json()["documents"][0]
    assert first["surprise"] is None  # nothing learned yet to compare with
    docs = [{"id": f"n{i}", "text": f"The council met on day {i} to vote."} for i in range(24)]
    client.post("/v1/documents", json=docs)
    for d in docs:
        wait_done(client, d["id"])
    usual, odd = client.post(
        "/v1/score",
        json=[{"text": "The council met on day 30 to vote."}, {"text": "Qx7 ¤¤ ∑ zzkw"}],
    ).json()["documents"]
    assert usual["surprise"] is not None and odd["surprise"] is not None
    assert odd["surprise"] > usual["surprise"]
    assert usual["perplexity"] == pytest.approx(math.exp(usual["loss"]))


def test_the_servers_learner_runs_the_strategys_policies(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(
        tiny_model_dir, tmp_path / "data", strategy="online+replay=1+anchor=l2sp:0.1"
    )
    with TestClient(create_app(settings)) as client:
        learner = runtime_of(client).learner.learner
        assert isinstance(learner, PolicyLearner) and learner.policy.replay == 1.0
        for i in range(6):
            client.post("/v1/documents", json={"id": f"d{i}", "text": f"Day {i}: {TEXT}"})
            assert wait_done(client, f"d{i}")["state"] == "learned"
        assert learner.docs_seen == 6
        assert learner.replayed > 0  # replayed documents were learned from, never scored
        # anchored to the base weights: the anchor pulls with a positive penalty once they moved
        (anchor,) = learner.learner.regularizers
        assert float(anchor.penalty()) > 0
