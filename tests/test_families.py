"""Any causal LM: replay, the server's scoring and a published LoRA version, on tiny random
models of several families (Llama, GPT-2, Qwen2, Gemma 3) built here, each with its family's
special tokens; and a Qwen2 GGUF loaded through the same path as SmolLM2's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from livelm.cli.main import main
from livelm.learner.encoding import resolve_boundary
from livelm.model import load_model
from livelm.server import create_app
from livelm.store import SnapshotStore
from tests.gguf_writer import (
    FAMILIES,
    save_family_model_dir,
    tiny_qwen2,
    token_id,
    write_qwen2_gguf,
)
from tests.server_util import tiny_settings, wait_done

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["llama", "gpt2", "qwen2", "gemma3"]
# Which step of `--boundary auto` picks each family's token (see livelm.learner.encoding).
RULES = {
    "llama": "tokenizer start",
    "gpt2": "document separator",
    "qwen2": "document separator",
    "gemma3": "tokenizer start",
}
TEXT = "Breaking: the river floods the old town overnight, residents leave."
STREAM = [
    "Storm hits the coast as residents leave their homes.",
    "Markets rise after the central bank holds rates steady.",
    "New vaccine shows promise in early trials, researchers say.",
    "The team wins the final after a late goal in extra time.",
    "Senate passes the budget bill after a long night of debate.",
    "Scientists find water ice near the moon's south pole.",
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {n: save_family_model_dir(FAMILIES[n], root / n) for n in NAMES}


def plain_loss(model: torch.nn.Module, boundary: int, ids: list[int]) -> float:
    """transformers' mean next-token loss of `ids` after the boundary token."""
    x = torch.tensor([[boundary, *ids]])
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


@pytest.mark.parametrize("name", NAMES)
def test_replay_static_and_online(name: str, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    stream = tmp_path / "s.jsonl"
    stream.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(STREAM))
    )
    out = tmp_path / "out"
    argv = ["replay", str(stream), "--model", str(model_dirs[name]), "--out", str(out)]
    assert main([*argv, "--strategy", "static,online", "--device", "cpu", "--quiet"]) == 0

    strategies = json.loads((out / "metrics.json").read_text())["strategies"]
    family = FAMILIES[name]
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[name])
    model = AutoModelForCausalLM.from_pretrained(model_dirs[name], dtype=torch.float32)
    boundary = token_id(tokenizer, family.boundary)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in STREAM]
    nll = sum((plain_loss(model, boundary, i) * len(i) for i in ids), 0.0)
    expected = nll / sum(map(len, ids))
    for run in strategies.values():
        assert run["boundary"] == {"token": family.boundary, "id": boundary, "rule": RULES[name]}
        assert run["docs"] == len(STREAM) and run["tokens"] == sum(map(len, ids))
    # bf16 autocast where the CPU has it: replay takes the strategies' `auto` precision.
    assert strategies["static"]["prequential_loss"] == pytest.approx(expected, abs=3e-3)
    assert strategies["online"]["updates"] > 0
    assert strategies["online"]["prequential_loss"] is not None


@pytest.fixture
def served(
    request: pytest.FixtureRequest, model_dirs: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[str, TestClient, Path]]:
    name: str = request.param
    data = tmp_path / "data"
    with TestClient(create_app(tiny_settings(model_dirs[name], data))) as client:
        yield name, client, data


def score(client: TestClient, text: str) -> tuple[float, int]:
    r = client.post("/v1/score", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["documents"][0]["loss"], body["version"]


@pytest.mark.parametrize("served", NAMES, indirect=True)
def test_the_server_scores_learns_and_publishes_a_lora_version_peft_loads(
    served: tuple[str, TestClient, Path], model_dirs: dict[str, Path]
) -> None:
    name, client, data = served
    family = FAMILIES[name]
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[name])
    base = AutoModelForCausalLM.from_pretrained(model_dirs[name], dtype=torch.float32)
    boundary = token_id(tokenizer, family.boundary)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]

    before, version = score(client, TEXT)
    assert version == 1
    assert before == pytest.approx(plain_loss(base, boundary, ids), abs=1e-4)

    assert client.post("/v1/documents", json={"id": "flood", "text": TEXT}).status_code == 202
    status = wait_done(client, "flood")
    assert status["state"] == "learned", status
    after, version = score(client, TEXT)
    assert version == status["version"] >= 2 and after < before

    store = SnapshotStore(data / "snapshots")
    manifest = store.manifest(version)
    assert manifest.kind == "lora" and manifest.config["boundary"] == family.boundary
    adapted = PeftModel.from_pretrained(base, str(store.path(version)))
    assert plain_loss(adapted, boundary, ids) == pytest.approx(after, abs=1e-4)

    # Generation on the learned version: a prompt after the same boundary, and the chat route
    # through the family's template where it has one (GPT-2's plain role lines otherwise).
    body = {"model": "livelm", "max_tokens": 4, "temperature": 0}
    r = client.post("/v1/completions", json={**body, "prompt": "The river"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")
    messages = [{"role": "user", "content": "What happened?"}]
    r = client.post("/v1/chat/completions", json={**body, "messages": messages})
    assert r.status_code == 200, r.text


def test_a_qwen2_gguf_loads_through_the_same_path(tmp_path: Path) -> None:
    model, tokenizer = tiny_qwen2()
    path = write_qwen2_gguf(model, tokenizer.backend_tokenizer, tmp_path / "tiny-qwen2.gguf")
    loaded = load_model(str(path), device="cpu")
    assert loaded.converted and type(loaded.model).__name__ == "Qwen2ForCausalLM"
    x = torch.tensor([[0, 5, 70, 200, 300, 10, 2, 1, 42, 99]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(x).logits, model(x).logits, atol=1e-5)
    boundary = resolve_boundary(loaded.tokenizer)
    assert (boundary.token, boundary.id) == ("<|endoftext|>", 0)
    assert loaded.tokenizer.eos_token == "<|im_end|>" and loaded.tokenizer.chat_template
