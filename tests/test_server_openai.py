"""The `openai` Python client works against `livelm serve` unchanged (a real uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from livelm.server import ApiKey, create_app
from tests.server_util import running, tiny_settings

KEY = "reader-key-0001"


@pytest.fixture(scope="module")
def client(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    settings = tiny_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("openai") / "data",
        api_keys=(ApiKey(KEY, "read"),),
    )
    with running(create_app(settings)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def test_the_openai_client_lists_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "livelm"  # the live version first, then each kept version as livelm@N
    assert ids[1:] and all(i.startswith("livelm@") for i in ids[1:])


def test_the_openai_client_completes(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="livelm", prompt="The quick brown", max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8
    assert completion.system_fingerprint == "livelm-v1"
    again = client.completions.create(
        model="livelm", prompt="The quick brown", max_tokens=8, temperature=0
    )
    assert again.choices[0].text == completion.choices[0].text  # greedy is deterministic


def test_the_openai_client_chats(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="livelm",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.usage is not None and chat.usage.completion_tokens <= 8


def test_the_openai_client_streams_a_chat(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Tell me about the river."}
    ]
    whole = client.chat.completions.create(
        model="livelm", messages=messages, max_tokens=10, temperature=0
    )
    stream = client.chat.completions.create(
        model="livelm",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content


def test_the_openai_client_streams_a_completion(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="livelm", prompt="Hello", max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.system_fingerprint == "livelm-v1" for c in chunks)


def test_the_openai_client_sees_errors_as_its_own_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="Hi", max_tokens=4)
    bad = openai.OpenAI(base_url=str(client.base_url), api_key="wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        client.completions.create(model="livelm", prompt="Hi", max_tokens=100_000)
    # and it still serves
    assert httpx.get(str(client.base_url).replace("/v1/", "/healthz")).status_code == 200
