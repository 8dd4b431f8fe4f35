"""`/v1/monitor/*`: the learner's view as it learns (surprises, emerging terms, drift, timeline,
stats), read-key protected, bounded; and `--drift-webhook`, POSTing drift events to a real HTTP
endpoint from a thread of its own."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from livelm.server import ApiKey, ServerSettings, create_app
from livelm.server.webhook import WebhookSender
from tests.server_util import TINY_LEARNER, tiny_settings, wait_done, wait_for
from tests.streams_util import two_sources

pytestmark = pytest.mark.usefixtures("one_thread")

ROUTES = ("surprises", "terms", "drift", "timeline", "stats")
_RNG = random.Random(0)
MARKETS = [
    {
        "id": f"markets-{i}",
        "text": f"Markets rise as the central bank holds rates steady in week {i}.",
        "time": f"2020-{1 + i // 28:02d}-{1 + i % 28:02d}",
        "meta": {"source": "wire"},
    }
    for i in range(48)
]
# Then something else entirely: capitals and numbers, which weeks of markets did not teach.
VIRUS = [
    {
        "id": f"virus-{i}",
        "text": "VIRUS OUTBREAK: "
        + " ".join(str(_RNG.randint(0, 99999)) for _ in range(5))
        + " CASES, SCHOOLS SHUT",
        "time": f"2020-03-{i + 1:02d}",
        "meta": {"source": "wire"},
    }
    for i in range(12)
]


@pytest.fixture(scope="module")
def learned(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A server that learned 48 documents about markets, then 12 about a virus."""
    data = tmp_path_factory.mktemp("monitor") / "data"
    with TestClient(create_app(tiny_settings(tiny_model_dir, data, trend_docs=8))) as client:
        r = client.post("/v1/documents", json={"documents": MARKETS + VIRUS})
        assert r.status_code == 202, r.text
        assert wait_done(client, VIRUS[-1]["id"], timeout=120)["state"] == "learned"
        yield client


def test_surprises_rank_the_recent_documents_most_surprising_first(learned: TestClient) -> None:
    r = learned.get("/v1/monitor/surprises", params={"limit": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 5
    first = body["data"][0]
    assert set(first) >= {"id", "time", "text", "meta", "loss", "surprise", "version"}
    surprises = [d["surprise"] for d in body["data"]]
    assert surprises == sorted(surprises, reverse=True)
    # The virus is what the model did not expect after weeks of markets.
    assert first["id"].startswith("virus-") and first["surprise"] > 1
    assert first["meta"] == {"source": "wire"} and first["time"].startswith("2020-03-")
    assert first["text"] in {d["text"] for d in VIRUS} and first["version"] >= 1
    # Scores start once the running statistics have seen 20 documents: 40 are ranked, the
    # markets' last.
    ranked = learned.get("/v1/monitor/surprises?limit=100").json()["data"]
    assert len(ranked) == 40 and all(d["id"].startswith("virus-") for d in ranked[:12])


def test_emerging_terms_name_the_new_word_and_the_documents_holding_it(
    learned: TestClient,
) -> None:
    body = learned.get("/v1/monitor/terms").json()
    assert body["object"] == "list"
    virus = next(t for t in body["data"] if t["term"] == "virus")
    assert set(virus) >= {"term", "score", "recent", "earlier", "documents"}
    assert virus["recent"] == 8 and virus["earlier"] == 4 and virus["score"] > 0
    assert virus["documents"] == [f"virus-{i}" for i in (11, 10, 9, 8, 7)]  # newest first, 5
    assert all(t["term"] not in {"markets", "rates"} for t in body["data"])  # falling words
    assert len(learned.get("/v1/monitor/terms?limit=2").json()["data"]) == 2


def test_without_a_detector_there_are_no_drift_events(learned: TestClient) -> None:
    assert learned.get("/v1/monitor/drift").json() == {"object": "list", "data": []}


def test_the_timeline_has_a_point_per_step_and_the_versions_and_events(
    learned: TestClient,
) -> None:
    body = learned.get("/v1/monitor/timeline").json()
    points, versions, events = body["points"], body["versions"], body["events"]
    assert points and set(points[0]) >= {"step", "docs", "time", "at", "stream_loss", "version"}
    assert points[-1]["docs"] == 60 and points[-1]["time"] == "2020-03-12"
    assert [p["docs"] for p in points] == sorted(p["docs"] for p in points)
    assert all(isinstance(p["stream_loss"], float) and p["at"] > 1.6e9 for p in points)
    assert versions[0]["version"] == 1 and versions[-1]["version"] >= 2
    assert set(versions[-1]) >= {"version", "at", "stream_loss", "canary_loss"}
    assert isinstance(versions[-1]["stream_loss"], float) and versions[0]["stream_loss"] is None
    publishes = [e for e in events if e["kind"] == "publish"]
    assert publishes and set(publishes[0]) >= {"kind", "at", "version", "docs", "detail"}
    assert sum(e["docs"] for e in publishes) == 60
    assert len(learned.get("/v1/monitor/timeline?limit=1").json()["points"]) == 1


def test_stats_say_what_is_live_and_how_fast_it_learns(learned: TestClient) -> None:
    stats = learned.get("/v1/monitor/stats").json()
    live = learned.get("/v1/snapshots").json()["live"]
    assert stats["live_version"] == live >= 2
    assert stats["queue_depth"] == 0 and stats["learned_docs"] == 60
    assert stats["published_docs"] == 60
    assert stats["docs_per_s"] > 0 and stats["tokens_per_s"] > stats["docs_per_s"]
    assert 0 <= stats["live_age_s"] < 600 and isinstance(stats["learning"], bool)


def test_a_rollback_shows_on_the_timeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    with TestClient(create_app(tiny_settings(tiny_model_dir, tmp_path / "data"))) as client:
        client.post("/v1/documents", json={"documents": VIRUS[:3]})
        wait_done(client, VIRUS[2]["id"])
        assert client.post("/v1/snapshots/1/rollback").status_code == 200
        events = client.get("/v1/monitor/timeline").json()["events"]
        assert {e["kind"] for e in events} == {"publish", "rollback"}
        assert events[-1]["kind"] == "rollback" and events[-1]["version"] == 1
        assert events[0]["kind"] == "publish" and events[0]["version"] == 2
        assert client.get("/v1/monitor/stats").json()["live_version"] == 1


def test_a_refused_candidate_shows_on_the_timeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    # As in test_server_guard: a reckless learner whose every candidate the guard refuses.
    reckless = TINY_LEARNER.replace(
        update="full", optimizer="sgd", lr=100.0, clip_norm=None, step_tokens=None
    )  # the four documents in one step, one candidate
    # Unanchored: an anchor's pull on weights thrown that far is itself non-finite,
    # and those documents are rejected before any candidate reaches the guard.
    settings = tiny_settings(
        tiny_model_dir,
        tmp_path / "data",
        learner=reckless,
        guard_max_rise=0.5,
        strategy="online+anchor=none",
    )
    with TestClient(create_app(settings)) as client:
        poison = [{"id": f"poison-{i}", "text": "zzzz " * 40} for i in range(4)]
        client.post("/v1/documents", json={"documents": poison})
        assert wait_done(client, "poison-3")["state"] == "rejected"
        events = client.get("/v1/monitor/timeline").json()["events"]
        refused = [e for e in events if e["kind"] == "refused"]
        assert refused and "canary loss" in refused[0]["detail"]
        assert refused[0]["version"] == 1 and sum(e["docs"] for e in refused) == 4
        versions = client.get("/v1/monitor/timeline").json()["versions"]
        assert [v["version"] for v in versions] == [1]  # nothing went live after the base


@pytest.mark.parametrize(
    ("route", "limit"),
    [(r, bad) for r in ROUTES[:3] for bad in ("0", "101", "x")]
    + [("timeline", "0"), ("timeline", "2001")],
)
def test_a_limit_out_of_range_is_a_422_naming_it(
    learned: TestClient, route: str, limit: str
) -> None:
    r = learned.get(f"/v1/monitor/{route}", params={"limit": limit})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "query.limit" and "limit" in error["message"]


def test_with_keys_the_routes_need_the_read_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    keys = (ApiKey("reader-key-1", "read"), ApiKey("writer-key-1", "write"))
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", api_keys=keys)
    with TestClient(create_app(settings)) as client:
        for route in ROUTES:
            assert client.get(f"/v1/monitor/{route}").status_code == 401, route
            bad = {"Authorization": "Bearer not-a-key-at-all"}
            assert client.get(f"/v1/monitor/{route}", headers=bad).status_code == 401, route
            for key in ("reader-key-1", "writer-key-1"):
                auth = {"Authorization": f"Bearer {key}"}
                assert client.get(f"/v1/monitor/{route}", headers=auth).status_code == 200


# -- the drift webhook ----------------------------------------------------------------------


@contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on a free loopback port that records the JSON bodies POSTed to it;
    it answers with `statuses` in turn (then 200)."""
    received: list[dict[str, Any]] = []
    answers = list(statuses or [])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = answers.pop(0) if answers else 200
            if status == 200:
                assert self.headers["Content-Type"] == "application/json"
                received.append(json.loads(body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/drift?token=secret", received
    finally:
        server.shutdown()
        server.server_close()


SWITCH_AT = 100  # the stream turns from word salad into numbers here
TOPICS = "the a storm market team city council bank vote rises falls after wins night"


def test_a_drift_reaches_the_webhook_and_the_monitor(tiny_model_dir: Path, tmp_path: Path) -> None:
    with receiver() as (url, received):
        settings = tiny_settings(
            tiny_model_dir,
            tmp_path / "data",
            strategy="online+detector=adwin:up",
            drift_webhook=url,
        )
        assert "secret" not in repr(settings)  # a webhook's token stays out of logs
        with TestClient(create_app(settings)) as client:
            docs = [
                {"id": d.id, "text": d.text} for d in two_sources(SWITCH_AT + 60, SWITCH_AT, TOPICS)
            ]
            client.post("/v1/documents", json={"documents": docs})
            wait_done(client, docs[-1]["id"], timeout=120)
            wait_for(lambda: received)
            event = received[0]
            assert event["detector"].startswith("adwin") and event["doc_id"] == "d{}".format(
                event["doc_index"]
            )
            assert event["doc_index"] >= SWITCH_AT  # the switch, not the learning curve
            assert set(event) >= {"detector", "doc_index", "doc_id", "time", "signal", "state"}
            drift = client.get("/v1/monitor/drift").json()["data"]
            assert drift[-1] == event  # the route lists what was posted, newest first
            events = client.get("/v1/monitor/timeline").json()["events"]
            assert any(e["kind"] == "drift" and e["docs"] == event["doc_index"] + 1 for e in events)
            assert client.get("/v1/monitor/stats").json()["drift_events"] == len(drift)
            assert "livelm_webhook_failures_total 0.0" in client.get("/metrics").text


def test_the_webhook_retries_then_counts_what_it_could_not_deliver() -> None:
    with receiver(statuses=[503, 500]) as (url, received):
        failures: list[int] = []
        sender = WebhookSender(url, on_failure=lambda: failures.append(1), backoff_s=0.01)
        sender.send({"detector": "adwin", "doc_index": 7})
        wait_for(lambda: received)
        assert received == [{"detector": "adwin", "doc_index": 7}] and not failures
        sender.close()
    with receiver(statuses=[500] * 10) as (url, received):
        sender = WebhookSender(url, on_failure=lambda: failures.append(1), backoff_s=0.01)
        sender.send({"detector": "adwin", "doc_index": 8})
        wait_for(lambda: failures)
        assert sender.failed == 1 and sender.delivered == 0 and not received
        sender.close()


def test_the_webhook_needs_a_detector_and_an_http_url(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="no drift detector"):
        ServerSettings(model=str(tiny_model_dir), drift_webhook="http://127.0.0.1:9/x")
    with pytest.raises(ValueError, match="--drift-webhook must be an http"):
        ServerSettings(strategy="online+detector=adwin", drift_webhook="file:///etc/passwd")
