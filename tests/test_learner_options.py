"""Steps sized in tokens, learner options on every entry point, and the weights replay saves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from livelm.cli.main import main
from livelm.document import Document
from livelm.learner import Learner, LearnerConfig, get_strategy
from livelm.learner.prequential import batches, step_size
from livelm.model import LoadedModel, load_model
from livelm.policy import parse_strategy
from livelm.replay import save_learned
from livelm.server import create_app
from livelm.store import SnapshotStore
from tests.redis_util import redis_server
from tests.server_util import tiny_settings, wait_done

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("max_docs", "step_tokens", "tokens", "size"),
    [
        (4, None, [5, 5, 5, 5, 5], 4),  # by count alone: today's steps
        (4, None, [5, 5], 2),  # fewer at hand than a step: all of them
        (8, 20, [5, 5, 5, 5, 5], 4),  # closes as soon as it holds 20 tokens
        (8, 20, [5, 5, 30, 5], 2),  # a long document waits for a step of its own...
        (8, 20, [30, 5, 5], 1),  # ...which it gets
        (8, 20, [20, 5], 1),  # exactly step_tokens is long enough to stand alone
        (3, 100, [5, 5, 5, 5], 3),  # max_docs_per_step still bounds a step
        (8, 20, [5, 0, 0, 14, 1], 5),  # empty documents count as documents, not tokens
        (8, 20, [], 0),
    ],
)
def test_step_size(max_docs: int, step_tokens: int | None, tokens: list[int], size: int) -> None:
    config = LearnerConfig(max_docs_per_step=max_docs, step_tokens=step_tokens)
    assert step_size(config, tokens) == size


def test_step_tokens_is_validated() -> None:
    with pytest.raises(ValueError, match="step_tokens must be at least 1"):
        LearnerConfig(step_tokens=0)


class _Counter:
    """A stepper whose documents hold as many tokens as their text has words."""

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config
        self.encoded = 0

    def encode(self, doc: Document) -> Encoded:
        self.encoded += 1
        return Encoded(doc, len(doc.text.split()))


class Encoded:
    def __init__(self, doc: Document, tokens: int) -> None:
        self.doc = doc
        self.tokens = tokens


def _steps(
    config: LearnerConfig, lengths: Sequence[int], max_docs: int | None = None
) -> list[list[int]]:
    stepper = _Counter(config)
    docs = [Document(" ".join(["w"] * n), id=str(i)) for i, n in enumerate(lengths)]
    steps = list(batches(stepper, docs, max_docs))  # type: ignore[arg-type]  # duck-typed
    return [[e.tokens for e in step] for step in steps]


def test_batches_close_steps_by_tokens_and_keep_stream_order() -> None:
    # Headlines (14 tokens) then articles (400) then headlines: steps of >= 64 tokens, each
    # article alone.
    lengths = [14] * 10 + [400] * 3 + [14] * 7
    steps = _steps(LearnerConfig(max_docs_per_step=16, step_tokens=64), lengths)
    assert [n for step in steps for n in step] == lengths
    assert steps == [[14] * 5, [14] * 5, [400], [400], [400], [14] * 5, [14] * 2]
    # Without step_tokens, steps by count as before.
    by_count = _steps(LearnerConfig(max_docs_per_step=8), lengths)
    assert [len(s) for s in by_count] == [8, 8, 4]
    # max_docs stops the stream, whatever the steps.
    assert sum(map(len, _steps(LearnerConfig(step_tokens=64), lengths, max_docs=12))) == 12


def test_batches_encode_at_most_one_step_ahead() -> None:
    stepper = _Counter(LearnerConfig(max_docs_per_step=4, step_tokens=10))
    docs = (Document("a b c d e", id=str(i)) for i in range(100))
    first = next(batches(stepper, docs))  # type: ignore[arg-type]  # duck-typed
    assert len(first) == 2 and stepper.encoded == 4  # read ahead by one step at most


def test_a_real_learner_steps_by_tokens(tiny: LoadedModel, news_lines: list[str]) -> None:
    config = get_strategy("online").replace(step_tokens=30, precision="fp32")
    learner = Learner(tiny.model, tiny.tokenizer, config)
    docs = [Document(t) for t in news_lines]
    steps = list(batches(learner, docs))
    assert [e.doc for step in steps for e in step] == docs
    for step in steps[:-1]:
        held = sum(e.tokens for e in step)
        assert held >= 30 and held - step[-1].tokens < 30, [e.tokens for e in step]
    report = learner.step(steps[0])
    assert report.updated and len(report.scores) == len(steps[0])


@pytest.mark.parametrize("update", ["lora", "full"])
def test_saved_weights_load_back_with_the_learners_logits(
    tiny_model_dir: Path, tmp_path: Path, update: str
) -> None:
    spec = (
        "online+lr=1e-2+warmup-steps=0+precision=fp32+rank=4"
        if update == "lora"
        else ("online-full+lr=1e-3+warmup-steps=0+precision=fp32")
    )
    strategy = parse_strategy(spec)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    learner = Learner(loaded.model, loaded.tokenizer, strategy.learner)
    for text in ["Storm hits the coast.", "Markets rise after the vote."]:
        learner.step([learner.encode(Document(text))])
    save_learned(learner.model, loaded.tokenizer, strategy, tmp_path / "saved")

    ids = torch.tensor([learner.encode(Document("The storm and the vote.")).chunks[0]])
    base = load_model(str(tiny_model_dir), device="cpu").model
    with torch.no_grad():
        ours = learner.model(input_ids=ids).logits
        before = base(input_ids=ids).logits
        if update == "lora":
            theirs = (
                PeftModel.from_pretrained(base, tmp_path / "saved").eval()(input_ids=ids).logits
            )
            adapter = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
            assert adapter["r"] == 4
        else:
            model = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
            theirs = model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, ours, atol=1e-4)  # it learned something to save
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert tokenizer("river town")["input_ids"] == loaded.tokenizer("river town")["input_ids"]
    described = json.loads((tmp_path / "saved" / "strategy.json").read_text())
    assert described["name"] == spec and described["config"]["lr"] == strategy.learner.lr


def test_serve_takes_learner_options_in_its_strategy(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = "online+lr=1e-2+warmup-steps=0+precision=fp32+rank=4+step-tokens=32"
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", strategy=spec, learner=None)
    assert settings.learner_config == parse_strategy(spec).learner
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/documents", json={"id": "a", "text": "Storm hits the coast."})
        assert r.status_code == 202
        status = wait_done(client, "a")
        assert status["state"] == "learned"
        files = client.get(f"/v1/snapshots/{status['version']}").json()
    assert "adapter_config.json" in files["files"]
    version = tmp_path / "data" / "snapshots" / f"v{status['version']:06d}"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["config"]["lora_r"] == 4 and manifest["config"]["step_tokens"] == 32
    assert json.loads((version / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["serve", "--strategy", "online+rank=0"], "rank=0: must be at least 1"),
        (
            ["learn", "--source", "redis://127.0.0.1:1/0?stream=s", "--store", "x"],
            "step-tokens=0: must be at least 1",
        ),
    ],
)
def test_serve_and_learn_name_a_bad_option(
    command: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if command[0] == "learn":
        command = [*command, "--strategy", "online+step-tokens=0", "--model", str(tmp_path)]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_learn_takes_learner_options_in_its_strategy(
    tiny_model_dir: Path, tmp_path: Path, news_lines: list[str]
) -> None:
    with redis_server(tmp_path / "redis") as url:
        source = f"{url}?stream=news&group=learners"
        stream = tmp_path / "news.jsonl"
        stream.write_text("".join(json.dumps({"text": t}) + "\n" for t in news_lines[:4]))
        assert main(["ingest", str(stream), "--to", source]) == 0
        spec = "online+lr=1e-2+warmup-steps=0+precision=fp32+rank=4+alpha=8"
        command = ["learn", "--source", source, "--store", str(tmp_path / "store")]
        command += ["--model", str(tiny_model_dir), "--device", "cpu", "--strategy", spec]
        assert main([*command, "--exit-when-idle", "0.5"]) == 0
    store = SnapshotStore(tmp_path / "store")
    live = store.live()
    assert live is not None
    assert store.manifest(live).config["lora_r"] == 4
    adapter = json.loads((store.path(live) / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
