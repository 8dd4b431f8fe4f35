"""`POST /v1/recommend` and the OpenAI-compatible `POST /v1/embeddings` on a tiny model: ranked
candidates with scores and why, documents named by id (a 404 for an id the server does not
hold), the newest learned documents by default, limits that name the field, and embeddings in
OpenAI's shape (the `openai` client reads them), unit-length and of the model's width."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from livelm.recommend import parse_method
from livelm.recommend.config import DEFAULT_METHOD
from livelm.server import create_app
from tests.server_util import tiny_settings, wait_done

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN = 64  # the tiny model's width


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = tiny_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("recommend") / "data",
        recommend_max_history=4,
        recommend_max_candidates=6,
        recommend_candidates=3,
        max_score_tokens=400,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def stored(client: TestClient) -> list[str]:
    """Five documents learned by the server, oldest first: their ids."""
    lines = [
        "Storm floods the coast town overnight.",
        "Senate passes the budget bill after debate.",
        "Coast town cleans up after the storm floods.",
        "Team wins the final with a late goal.",
        "Scientists find water ice on the moon.",
    ]
    docs = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(lines)]
    assert client.post("/v1/documents", json={"documents": docs}).status_code == 202
    for d in docs:
        assert wait_done(client, d["id"])["state"] == "learned"
    return [d["id"] for d in docs]


def post(client: TestClient, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


CANDIDATES = [
    "Markets rally as rates hold.",
    "The coast floods again in a storm.",
    "A new play opens downtown.",
]


def test_candidates_come_back_ranked_with_scores_and_why(client: TestClient) -> None:
    body = post(
        client,
        {
            "history": ["A storm floods the coast.", {"text": "Rain all week.", "id": "mine"}],
            "candidates": CANDIDATES,
            "method": "pmi+embed+tfidf",
        },
    )
    assert body["method"] == "pmi+embed+tfidf" and body["model"] == "livelm"
    assert body["usage"] == {"history": 2, "candidates": 3}
    ranked = body["data"]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert sorted(r["index"] for r in ranked) == [0, 1, 2]
    assert all(r["text"] == CANDIDATES[r["index"]] for r in ranked)
    assert all(set(r["scores"]) == {"pmi", "embed", "tfidf"} for r in ranked)
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    coast = next(r for r in ranked if r["index"] == 1)
    tfidf = [w for w in coast["why"] if w["method"] == "tfidf"]
    assert tfidf and tfidf[0]["history"] == 0 and tfidf[0]["value"] > 0
    assert all((w["history"] == 1) == (w["id"] == "mine") for w in coast["why"])
    # The same request ranks the same way.
    again = post(
        client,
        {
            "history": ["A storm floods the coast.", {"text": "Rain all week.", "id": "mine"}],
            "candidates": CANDIDATES,
            "method": "pmi+embed+tfidf",
        },
    )
    assert again == body


def test_the_default_method_and_top_k(client: TestClient) -> None:
    body = post(
        client,
        {
            "history": ["A storm floods the coast."],
            "candidates": CANDIDATES,
            "top_k": 2,
            "why": False,
        },
    )
    assert body["method"] == DEFAULT_METHOD and len(body["data"]) == 2
    assert set(body["data"][0]["scores"]) == set(parse_method(DEFAULT_METHOD).parts)
    assert all(r["why"] == [] for r in body["data"])


def test_documents_by_id_and_the_newest_learned_by_default(
    client: TestClient, stored: list[str]
) -> None:
    body = post(client, {"history": [{"id": stored[0]}], "method": "tfidf", "top_k": None})
    # The newest 3 learned documents that are not the history, the coast one first.
    assert body["data"][0]["id"] == stored[2]
    assert {r["id"] for r in body["data"]} == set(stored[2:])
    assert all(r["index"] is None for r in body["data"])
    assert body["data"][0]["why"][0] == {
        "history": 0,
        "id": stored[0],
        "method": "tfidf",
        "value": pytest.approx(body["data"][0]["scores"]["tfidf"]),
    }
    named = post(
        client,
        {
            "history": [{"id": stored[0]}],
            "candidates": [{"id": stored[1]}, {"id": stored[2]}],
            "method": "tfidf",
        },
    )
    assert [r["id"] for r in named["data"]] == [stored[2], stored[1]]
    assert named["data"][0]["text"] == "Coast town cleans up after the storm floods."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"history": [{"id": "nobody"}], "candidates": ["x"]}, "history.0.id"),
        ({"history": ["x"], "candidates": ["y", {"id": "nobody"}]}, "candidates.1.id"),
    ],
)
def test_an_id_the_server_does_not_hold_is_a_404(
    client: TestClient, stored: list[str], body: dict[str, Any], param: str
) -> None:
    error = post(client, body, 404)["error"]
    assert error["param"] == param and "nobody" in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"history": ["a"] * 5, "candidates": ["b"]}, 422, "history"),
        ({"history": ["a"], "candidates": ["b"] * 7}, 422, "candidates"),
        ({"history": ["word " * 40] * 4, "candidates": ["b"], "method": "pmi"}, 413, "history"),
        ({"history": ["x" * 40_000], "candidates": ["b"]}, 422, "history.0.text"),
        ({"history": [], "candidates": ["b"]}, 422, "history"),
        ({"history": [{"text": "  "}], "candidates": ["b"]}, 422, "history.0.text"),
        ({"history": [{}], "candidates": ["b"]}, 422, "history.0"),
        ({"history": ["a"], "candidates": ["b"], "method": "bm25"}, 422, "method"),
        ({"history": ["a"], "candidates": ["b"], "top_k": 0}, 422, "top_k"),
        ({"history": ["a"], "candidates": ["b"], "model": "gpt-4"}, 404, "model"),
        ({"history": ["a"], "candidates": ["b"], "model": "livelm@999"}, 404, "model"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(
    client: TestClient, body: dict[str, Any], status: int, param: str
) -> None:
    error = post(client, body, status)["error"]
    assert error["param"] == param, error


def test_a_kept_version_ranks_when_named(client: TestClient, stored: list[str]) -> None:
    body = {"history": ["A storm floods the coast."], "candidates": CANDIDATES, "method": "pmi"}
    r = client.post("/v1/recommend", json=body | {"model": "livelm@1"})
    assert r.status_code == 200 and r.headers["X-Livelm-Version"] == "1"
    assert r.json()["version"] == 1 and r.json()["model"] == "livelm@1"
    live = client.post("/v1/recommend", json=body)
    assert int(live.headers["X-Livelm-Version"]) > 1  # the server learned `stored` since
    assert live.json()["data"] != r.json()["data"]  # learning changed the model's scores


# -- embeddings ----------------------------------------------------------------------------------


def test_embeddings_are_unit_vectors_of_the_model_width(client: TestClient) -> None:
    texts = ["The storm floods the coast.", "Markets rally.", "The storm floods the coast."]
    r = client.post("/v1/embeddings", json={"model": "livelm", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "livelm"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (3, HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert vectors[0] @ vectors[1] < 0.9999
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3
    one = client.post(
        "/v1/embeddings",
        json={"model": "livelm", "input": texts[1], "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vectors[1], atol=1e-6)


def test_the_openai_client_reads_embeddings(client: TestClient) -> None:
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)
    result = api.embeddings.create(model="livelm", input=["A storm.", "A play opens."])
    assert len(result.data) == 2 and len(result.data[0].embedding) == HIDDEN
    assert abs(float(np.linalg.norm(result.data[1].embedding)) - 1.0) < 1e-5
    assert result.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "livelm", "input": []}, 422, "input"),
        ({"model": "livelm", "input": [1, 2, 3]}, 422, "input"),
        ({"model": "livelm", "input": ["ok", " "]}, 422, "input"),
        ({"model": "livelm", "input": "x" * 40_000}, 422, "input.0"),
        ({"model": "livelm", "input": ["word " * 300] * 2}, 413, "input"),
        ({"model": "livelm", "input": "a", "dimensions": 12}, 422, "dimensions"),
        ({"model": "gpt-4", "input": "a"}, 404, "model"),
        ({"input": "a"}, 422, "model"),
    ],
)
def test_bad_embedding_requests_are_4xx_naming_the_field(
    client: TestClient, body: dict[str, Any], status: int, param: str
) -> None:
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
