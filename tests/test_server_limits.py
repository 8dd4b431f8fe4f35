"""Bounded work per request, and a 4xx (never a 500) for every bad input.

A score request is capped in tokens before any model work; a client that leaves stops its
work; a client too slow to send its body gets a 408; inputs that once reached the model or the
database as lone surrogates or subnormal temperatures get a 4xx; an error no handler knew still
answers in the API's error shape, logged on one line that request data cannot forge.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from livelm.logsafe import printable
from livelm.server import create_app
from tests.server_util import ServeProcess, tiny_settings, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The default limits (a 4 MB body, 32,768-character documents), but --max-new-tokens 32."""
    settings = tiny_settings(
        tiny_model_dir, tmp_path_factory.mktemp("limits") / "data", max_new_tokens=32
    )
    app = create_app(settings)

    def fail(text: str) -> None:  # a bug no handler knows, carrying request text
        raise RuntimeError(f"cannot handle {text}")

    app.add_api_route("/test/fail", fail)
    with TestClient(app) as c:
        yield c


def served(metrics_text: str, name: str, **labels: str) -> float:
    """A counter's value in Prometheus text (0 before its first increment)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}_total\{{{re.escape(wanted)}\}} (\S+)$", metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


# -- 4xx for every bad input ------------------------------------------------------------------

SURROGATE = '"\\ud800"'  # JSON's escape for a lone UTF-16 surrogate
BAD: list[tuple[str, str, int, str]] = [
    (CHAT, f'{{"model": "livelm", "messages": [{{"role": "user", "content": {SURROGATE}}}]}}',
     422, "messages.0.content: not valid Unicode"),
    (CHAT, f'{{"model": "livelm", "messages": [{{"role": "user", "content": '
     f'[{{"type": "text", "text": {SURROGATE}}}]}}]}}', 422, "part 0: not valid Unicode"),
    ("/v1/documents", f'{{"text": "ok", "id": {SURROGATE}}}', 422, "documents.0.id: not valid"),
    ("/v1/score", f'{{"text": "ok", "id": {SURROGATE}}}', 422, "documents.0.id: not valid"),
    ("/v1/documents", f'{{"text": "ok", "meta": {{"a": {SURROGATE}}}}}', 422, "meta.a: not valid"),
    ("/v1/documents", '{"text": "ok", "meta": {"a": NaN}}', 422, "not a JSON number"),
    ("/v1/completions", f'{{"model": "livelm", "prompt": "Hi", "stop": [{SURROGATE}]}}', 422,
     "stop.0: not valid Unicode"),
    ("/v1/completions", f'{{"model": {SURROGATE}, "prompt": "Hi"}}', 422, "model: not valid"),
    ("/v1/documents", '{"text": "ok", "time": "2020-01-01\\nINFO forged"}', 422,
     "documents.0.time: the time has a control character"),
    ("/v1/documents", '{"text": "ok", "id": "a\\u001b[31mb"}', 422, "control character"),
    ("/v1/score", '{"text": "ok", "id": ' + "9" * 300 + "}", 422, "1 to 256 characters"),
    ("/v1/documents", '{"text": "ok", "id": ' + "9" * 5000 + "}", 400, "cannot be read as JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "phrase"), BAD, ids=[b[3] for b in BAD])
def test_bad_input_is_a_4xx_in_the_error_shape(
    client: TestClient, path: str, body: str, status: int, phrase: str
) -> None:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert phrase in error["message"] and error["code"] == status
    assert client.post("/v1/score", json={"text": "still serving"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/completions", CHAT])
def test_a_vanishing_temperature_decodes_greedily(client: TestClient, path: str) -> None:
    def text(temperature: float) -> str:
        body: dict[str, Any] = {"model": "livelm", "max_tokens": 6, "temperature": temperature}
        if path == CHAT:
            body["messages"] = [{"role": "user", "content": "Storm hits"}]
        else:
            body["prompt"] = "Storm hits"
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return str(choice["text"] if path != CHAT else choice["message"]["content"])

    greedy = text(0.0)
    for temperature in (1e-39, 5e-324, 1e-6):  # subnormal in fp32, the smallest double, tiny
        assert text(temperature) == greedy


def test_chat_without_max_tokens_fits_a_lower_max_new_tokens(client: TestClient) -> None:
    body = {"model": "livelm", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
    r = client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["completion_tokens"] <= 32


def test_an_unhandled_error_is_a_500_in_the_error_shape_logged_on_one_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="livelm"):
        r = client.get("/test/fail", params={"text": "x\nINFO version 99 live: forged"})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == 500 and error["type"] == "server_error"
    assert "RuntimeError" in error["message"] and "forged" not in error["message"]
    [record] = [r for r in caplog.records if "unhandled" in r.getMessage()]
    message = record.getMessage()
    assert "x\\x0aINFO version 99 live: forged" in message.splitlines()[0]
    assert not any(line.startswith("INFO") for line in message.splitlines())


def test_printable_escapes_what_would_break_or_disguise_a_line() -> None:
    assert (
        printable("2020\n2021\r\x1b[2J\u202e\u2028") == "2020\\x0a2021\\x0d\\x1b[2J\\u202e\\u2028"
    )
    assert printable("a\\x0ab") == "a\\\\x0ab"  # an escape in the log is never the client's text
    assert printable("Café 東京 🚀") == "Café 東京 🚀"
    assert printable("\ud800") == "\\ud800"


# -- bounded work -------------------------------------------------------------------------------


def test_a_4mb_score_request_is_refused_before_any_model_work(client: TestClient) -> None:
    text = ("The senate passed the budget after a long night of debate. " * 600)[:32_000]
    docs = [{"id": f"long-{i}", "text": text} for i in range(126)]
    body = json.dumps({"documents": docs}).encode()
    assert 4_000_000 < len(body) <= 4 << 20  # within --max-request-bytes: the cap must hold
    before = served(client.get("/metrics").text, "livelm_served_tokens", kind="scored")
    started = time.monotonic()
    r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    seconds = time.monotonic() - started
    assert r.status_code == 413, r.text[:300]
    error = r.json()["error"]
    assert "--max-score-tokens" in error["message"] and "16384" in error["message"]
    assert error["param"] == "documents" and error["type"] == "request_too_large"
    assert seconds < 10, f"refused after {seconds:.1f} s"  # unbounded, it took ~100 s
    assert served(client.get("/metrics").text, "livelm_served_tokens", kind="scored") == before
    fits = {"text": text[:12_000]}  # ~8,300 tokens of the tiny model's
    ok = client.post("/v1/score", json=fits)
    assert ok.status_code == 200 and ok.json()["documents"][0]["tokens"] > 8_000


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`livelm serve` with one model slot, one generation at a time, score requests of up to 4M
    tokens, a 1 s body time."""
    tmp = tmp_path_factory.mktemp("limits-serve")
    flags = ["--max-score-tokens", "4000000", "--body-timeout-s", "1", "--max-inflight", "1"]
    flags += ["--max-batch", "1"]
    model = ["--model", str(tiny_model_dir), "--data-dir", str(tmp / "data"), "--device", "cpu"]
    proc = ServeProcess([*model, *flags], tmp / "serve.log")
    try:
        proc.wait_ready()
        yield proc.url
    finally:
        proc.kill()


def _metric(url: str, name: str, **labels: str) -> float:
    return served(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _post(url: str, path: str, body: bytes) -> socket.socket:
    """A raw POST, sent in full; its answer is left unread."""
    sock = _connect(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _big_score(url: str) -> socket.socket:
    """A score request of ~1.8M tokens: about a minute of the tiny model's work."""
    text = ("Markets rise after the central bank holds rates steady. " * 600)[:32_000]
    body = json.dumps([{"text": f"{i} {text}"} for i in range(64)]).encode()
    before = _metric(url, "livelm_served_tokens", kind="scored")
    sock = _post(url, "/v1/score", body)
    wait_for(lambda: _metric(url, "livelm_served_tokens", kind="scored") > before, timeout=60)
    return sock


def test_scoring_stops_when_the_client_disconnects(server: str) -> None:
    scored = _metric(server, "livelm_served_tokens", kind="scored")
    cancelled = _metric(server, "livelm_requests_cancelled", route="score")
    sock = _big_score(server)
    time.sleep(0.5)
    sock.close()  # unread data in its buffer: the kernel resets the connection at once
    wait_for(
        lambda: _metric(server, "livelm_requests_cancelled", route="score") == cancelled + 1,
        timeout=20,
    )
    stopped = _metric(server, "livelm_served_tokens", kind="scored")
    time.sleep(1.0)
    assert _metric(server, "livelm_served_tokens", kind="scored") == stopped  # no more work
    assert stopped - scored < 1_000_000  # of ~1.8M asked for
    started = time.monotonic()  # and the one model slot is free again
    r = httpx.post(f"{server}/v1/score", json={"text": "next"}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - started < 5


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_generation_stops_when_the_client_disconnects(server: str, stream: bool) -> None:
    """A completion of 8 x 100 tokens runs one sequence at a time (`--max-batch 1`), each
    decode step after a micro-batch of a long score; its client leaves after a second; its
    generation stops there instead of running on."""
    generated = _metric(server, "livelm_served_tokens", kind="generated")
    cancelled = _metric(server, "livelm_requests_cancelled", route="completions")
    scores_cancelled = _metric(server, "livelm_requests_cancelled", route="score")
    blocker = _big_score(server)
    body = {"model": "livelm", "prompt": ["Hi"] * 8, "max_tokens": 100, "stream": stream}
    sock = _post(server, "/v1/completions", json.dumps(body).encode())
    time.sleep(1.0)  # generating, one token a score micro-batch
    sock.close()
    if not stream:  # a stream ends when its next token finds the client gone
        wait_for(
            lambda: (
                _metric(server, "livelm_requests_cancelled", route="completions") == cancelled + 1
            ),
            timeout=20,
        )
    time.sleep(0.5)
    stopped = _metric(server, "livelm_served_tokens", kind="generated")
    blocker.close()
    wait_for(
        lambda: _metric(server, "livelm_requests_cancelled", route="score") > scores_cancelled,
        timeout=20,
    )
    time.sleep(1.5)  # room for the 800 tokens of the tiny model, were it still generating
    assert _metric(server, "livelm_served_tokens", kind="generated") == stopped
    assert stopped - generated < 400
    # The count is live: a completion that runs adds its tokens.
    r = httpx.post(
        f"{server}/v1/completions",
        json={"model": "livelm", "prompt": "Hi", "max_tokens": 5, "temperature": 0},
        timeout=30,
    )
    assert r.status_code == 200
    after = _metric(server, "livelm_served_tokens", kind="generated")
    assert after - stopped >= r.json()["usage"]["completion_tokens"]


def test_a_body_too_slow_to_arrive_gets_a_408(server: str) -> None:
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"text": "sent slowly'
    )
    started = time.monotonic()
    answer = b""
    while chunk := sock.recv(65536):  # the server answers, then closes the connection
        answer += chunk
    seconds = time.monotonic() - started
    sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    error = json.loads(payload)["error"]
    assert "--body-timeout-s" in error["message"] and error["code"] == 408
    assert 0.5 < seconds < 4  # the answer, and the connection closed with it
