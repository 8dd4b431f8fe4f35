"""Keys and scopes are enforced; every bad input gets a clear 4xx, nothing half-stored, and the
server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from livelm.server import ApiKey, ServerSettings, create_app
from livelm.server.auth import load_api_keys
from tests.server_util import tiny_settings, wait_done

READ, WRITE = "reader-key-0001", "writer-key-0001"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = tiny_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("security") / "data",
        api_keys=(ApiKey(READ, "read"), ApiKey(WRITE, "write")),
        max_documents_per_request=4,
        max_document_chars=200,
        max_new_tokens=32,
        max_request_bytes=16_384,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_keys_and_scopes_are_enforced(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200  # probes need no key
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    assert client.get("/v1/models", headers=bearer("not-a-key-0000")).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": READ}).status_code == 401
    assert client.get("/metrics").status_code == 401

    doc = {"id": "scoped", "text": "A document only a writer may send."}
    for key in (READ, WRITE):  # reading: generate, score, list, show, metrics
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
        assert client.get("/metrics", headers=bearer(key)).status_code == 200
        assert client.get("/v1/snapshots/1", headers=bearer(key)).status_code == 200
        r = client.post("/v1/score", json={"text": "hello"}, headers=bearer(key))
        assert r.status_code == 200
        r = client.post(
            "/v1/completions",
            json={"model": "livelm", "prompt": "Hi", "max_tokens": 2},
            headers=bearer(key),
        )
        assert r.status_code == 200

    r = client.post("/v1/documents", json=doc, headers=bearer(READ))
    assert r.status_code == 403 and "write key" in r.json()["error"]["message"]
    assert client.post("/v1/snapshots/1/rollback", headers=bearer(READ)).status_code == 403
    assert client.put("/v1/snapshots/1/pin", headers=bearer(READ)).status_code == 403
    assert client.get("/v1/documents/scoped", headers=bearer(READ)).status_code == 404

    assert client.post("/v1/documents", json=doc, headers=bearer(WRITE)).status_code == 202
    assert client.post("/v1/snapshots/1/rollback", headers=bearer(WRITE)).status_code == 200


COMPLETE = {"model": "livelm", "prompt": "Hi"}
CHAT = "/v1/chat/completions"
BAD_INPUTS: list[tuple[str, str, Any, int, str]] = [
    # (method, path, body (bytes: raw), status, a phrase of the message)
    ("POST", "/v1/documents", b'{"text": "unclosed', 400, "not valid JSON"),
    ("POST", "/v1/documents", b'{"text": "\xff\xfe bad bytes"}', 400, "not valid UTF-8"),
    ("POST", "/v1/documents", {"text": 42}, 422, "documents.0.text"),
    ("POST", "/v1/documents", {"text": "ok", "id": 1.5}, 422, "documents.0.id"),
    ("POST", "/v1/documents", {"text": "ok", "meta": "x"}, 422, "documents.0.meta"),
    ("POST", "/v1/documents", {"text": "   "}, 422, "empty"),
    ("POST", "/v1/documents", b'{"text": "\\ud800"}', 422, "not valid Unicode"),
    ("POST", "/v1/documents", {"text": "x" * 201}, 422, "--max-document-chars"),
    ("POST", "/v1/documents", [{"text": f"d{i}"} for i in range(5)], 422, "--max-documents"),
    ("POST", "/v1/documents", {"documents": []}, 422, "documents"),
    ("POST", "/v1/documents", {"text": "ok", "id": " padded "}, 422, "whitespace"),
    ("POST", "/v1/documents", {"text": "y" * 20_000}, 413, "--max-request-bytes"),
    ("POST", "/v1/score", {"documents": [{"text": ""}]}, 422, "empty"),
    ("POST", "/v1/score", "just a string", 422, "documents"),
    ("GET", "/v1/snapshots/999", None, 404, "not in the store"),
    ("GET", "/v1/snapshots/latest", None, 422, "version"),
    ("POST", "/v1/snapshots/999/rollback", None, 404, "not in the store"),
    ("PUT", "/v1/snapshots/999/pin", None, 404, "not in the store"),
    ("GET", "/v1/documents/never-sent", None, 404, "never-sent"),
    ("POST", "/v1/completions", {"model": "other", "prompt": "Hi"}, 404, "not served here"),
    ("POST", "/v1/completions", {"model": "livelm"}, 422, "prompt"),
    ("POST", "/v1/completions", {"model": "livelm", "prompt": [1, 2]}, 422, "prompt"),
    ("POST", "/v1/completions", COMPLETE | {"n": 2}, 422, "n"),
    ("POST", "/v1/completions", COMPLETE | {"max_tokens": 33}, 422, "--max-new-tokens"),
    ("POST", "/v1/completions", COMPLETE | {"temperature": -1}, 422, "temperature"),
    ("POST", "/v1/completions", {"model": "livelm", "prompt": "word " * 200}, 400, "window"),
    ("POST", CHAT, {"model": "livelm", "messages": []}, 422, "messages"),
    ("POST", CHAT, {"model": "livelm", "messages": [{"role": "bot", "content": "x"}]}, 422, "role"),
    ("GET", "/v1/nothing-here", None, 404, "no route"),
    ("DELETE", "/v1/documents/x", None, 405, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "phrase"),
    BAD_INPUTS,
    ids=[f"{m} {p} {s}" for m, p, _, s, _ in BAD_INPUTS],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(
    client: TestClient, method: str, path: str, body: Any, status: int, phrase: str
) -> None:
    headers = bearer(WRITE)
    if isinstance(body, bytes):
        r = client.request(
            method, path, content=body, headers=headers | {"content-type": "application/json"}
        )
    else:
        r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert phrase in error["message"]
    assert error["code"] == status and error["type"]
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/score", json={"text": "still serving"}, headers=headers)
    assert ok.status_code == 200


def test_nothing_of_a_refused_request_is_stored(client: TestClient) -> None:
    headers = bearer(WRITE)
    half_bad = [{"id": "good-half", "text": "fine"}, {"id": "bad-half", "text": ""}]
    assert client.post("/v1/documents", json=half_bad, headers=headers).status_code == 422
    client.post("/v1/documents", json={"id": "taken", "text": "first"}, headers=headers)
    conflict = [{"id": "fresh", "text": "new"}, {"id": "taken", "text": "second"}]
    r = client.post("/v1/documents", json=conflict, headers=headers)
    assert r.status_code == 409 and "'taken'" in r.json()["error"]["message"]
    for doc_id in ("good-half", "bad-half", "fresh"):
        assert client.get(f"/v1/documents/{doc_id}", headers=headers).status_code == 404
    assert wait_done_with(client, "taken", headers)["state"] == "learned"


def wait_done_with(client: TestClient, doc_id: str, headers: dict[str, str]) -> dict[str, Any]:
    client.headers.update(headers)
    try:
        return wait_done(client, doc_id)
    finally:
        client.headers.pop("Authorization")


def test_without_keys_the_server_stays_on_localhost(tiny_model_dir: Path) -> None:
    open_settings = ServerSettings(model=str(tiny_model_dir))
    for host in ("127.0.0.1", "localhost", "::1"):
        open_settings.check_bind(host)
    with pytest.raises(ValueError, match="without API keys"):
        open_settings.check_bind("0.0.0.0")
    keyed = ServerSettings(model=str(tiny_model_dir), api_keys=(ApiKey(READ, "read"),))
    keyed.check_bind("0.0.0.0")
    assert READ not in repr(keyed) and READ not in repr(keyed.api_keys)


def test_api_keys_come_from_flags_a_file_and_the_environment(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nread:file-reader-01\nwrite file-writer-01  # ops\n\n")
    keys = load_api_keys(["flag-reader-01"], [], keys_file, "write:env-writer-001,")
    assert [(k.key, k.scope) for k in keys] == [
        ("flag-reader-01", "read"),
        ("file-reader-01", "read"),
        ("file-writer-01", "write"),
        ("env-writer-001", "write"),
    ]
    with pytest.raises(ValueError, match="scope 'admin'"):
        load_api_keys(env="admin:some-long-key")
    with pytest.raises(ValueError, match="8 characters"):
        load_api_keys(["short"])


def test_a_chunked_body_past_the_limit_is_refused(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(40):
            yield b"z" * 1000
        yield b'"}'

    r = client.post(
        "/v1/documents",
        content=chunks(),
        headers=bearer(WRITE) | {"content-type": "application/json"},
    )
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]
