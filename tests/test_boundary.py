"""The token a document starts with: the rule of `--boundary auto`, the explicit choices, and
that a score is the model's plain loss after that token (issue 13: never a chat marker)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from livelm.cli.main import main
from livelm.document import Document
from livelm.learner import Learner, LearnerConfig, get_strategy
from livelm.learner.encoding import Encoder, chat_markers, resolve_boundary
from livelm.model import load_model
from tests.gguf_writer import (
    FAMILIES,
    Family,
    family_tokenizer,
    save_family_model_dir,
    token_id,
)
from tests.server_util import ServeProcess

TEXTS = [
    "Storm hits the coast as residents leave their homes.",
    "Markets rise after the central bank holds rates steady.",
    "The quick brown fox jumps over the lazy dog.",
]
FP32 = {"precision": "fp32"}


def plain_loss(model: torch.nn.Module, ids: list[int]) -> float:
    """transformers' own mean next-token loss of `ids` (the first one is only context)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_auto_picks_the_token_the_familys_documents_start_with(name: str) -> None:
    family = FAMILIES[name]
    tokenizer = family_tokenizer(family)
    boundary = resolve_boundary(tokenizer)
    assert boundary.token == family.boundary
    assert boundary.id == token_id(tokenizer, family.boundary)
    assert boundary.token not in chat_markers(tokenizer)


def test_chat_markers_are_found_by_name_and_by_the_chat_template() -> None:
    assert chat_markers(family_tokenizer(FAMILIES["qwen2"])) == {"<|im_start|>", "<|im_end|>"}
    # Gemma's template starts with `<bos>` (a document start) and marks turns with the others.
    assert chat_markers(family_tokenizer(FAMILIES["gemma3"])) == {
        "<start_of_turn>",
        "<end_of_turn>",
    }
    # Llama 2's template closes an assistant turn with `</s>`; `<s>` only opens the chat.
    assert chat_markers(family_tokenizer(FAMILIES["llama"])) == {"</s>"}
    assert chat_markers(family_tokenizer(FAMILIES["gpt2"])) == set()


def test_a_turn_marker_named_like_nothing_known_is_found_in_the_template() -> None:
    family = Family(
        "odd",
        ("<|sep|>", "<|turn|>"),
        "<|turn|>",
        "<|turn|>",
        None,
        False,
        "{% for m in messages %}{{ '<|turn|>' + m['role'] + ': ' + m['content'] }}{% endfor %}",
        "<|sep|>",
        FAMILIES["llama"].make_config,
    )
    tokenizer = family_tokenizer(family)
    assert "<|turn|>" in chat_markers(tokenizer)
    with pytest.raises(ValueError, match=r"--boundary auto: .*<\|turn\|>.*--boundary"):
        resolve_boundary(tokenizer)  # neither a separator, nor a BOS/EOS that is not a marker
    assert resolve_boundary(tokenizer, "<|sep|>").rule == "given"


def test_explicit_choices_and_their_errors() -> None:
    tokenizer = family_tokenizer(FAMILIES["smollm2-instruct"])
    assert resolve_boundary(tokenizer, "bos").token == "<|im_start|>"
    assert resolve_boundary(tokenizer, "eos").token == "<|im_end|>"
    given = resolve_boundary(tokenizer, "<|im_end|>")
    assert (given.token, given.id, given.rule) == ("<|im_end|>", 2, "given")
    with pytest.raises(ValueError, match=r"^--boundary '<nope>': not a token"):
        resolve_boundary(tokenizer, "<nope>")
    with pytest.raises(ValueError, match=r"^--boundary bos: this tokenizer has no BOS"):
        resolve_boundary(family_tokenizer(FAMILIES["qwen2"]), "bos")
    with pytest.raises(ValueError, match="boundary must be"):
        LearnerConfig(boundary=" ")


def test_every_chunk_starts_with_the_boundary() -> None:
    tokenizer = family_tokenizer(FAMILIES["gemma3"])
    encoder = Encoder(tokenizer, 8)
    encoded = encoder.encode(Document(" ".join(TEXTS)))
    bos = token_id(tokenizer, "<bos>")
    assert len(encoded.chunks) > 1 and all(c[0] == bos for c in encoded.chunks)
    assert [t for c in encoded.chunks for t in c[1:]] == text_ids(tokenizer, " ".join(TEXTS))


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with SmolLM2-Instruct's special tokens: BOS `<|im_start|>`."""
    return save_family_model_dir(FAMILIES["smollm2-instruct"], tmp_path_factory.mktemp("smol"))


def test_static_loss_is_the_plain_loss_after_endoftext_not_after_the_chat_marker(
    smol_dir: Path,
) -> None:
    lm = load_model(str(smol_dir), device="cpu")
    static = Learner(lm.model, lm.tokenizer, get_strategy("static").replace(**FP32))
    assert static.config.boundary == "<|endoftext|>"  # what manifests and reports record
    report = static.step([static.encode(Document(t)) for t in TEXTS])
    endoftext = token_id(lm.tokenizer, "<|endoftext|>")
    im_start = token_id(lm.tokenizer, "<|im_start|>")
    for text, score in zip(TEXTS, report.scores, strict=True):
        ids = text_ids(lm.tokenizer, text)
        assert score.tokens == len(ids)
        assert score.loss == pytest.approx(plain_loss(lm.model, [endoftext, *ids]), abs=1e-5)
        assert score.loss != pytest.approx(plain_loss(lm.model, [im_start, *ids]), abs=1e-3)


def test_replay_records_the_boundary_and_the_flag_overrides_it(
    smol_dir: Path, tmp_path: Path
) -> None:
    stream = tmp_path / "s.jsonl"
    stream.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    lm = load_model(str(smol_dir), device="cpu")
    losses = {}
    for flag, token in (("auto", "<|endoftext|>"), ("bos", "<|im_start|>")):
        out = tmp_path / flag
        argv = ["replay", str(stream), "--model", str(smol_dir), "--strategy", "static"]
        code = main([*argv, "--out", str(out), "--device", "cpu", "--quiet", "--boundary", flag])
        assert code == 0
        static = json.loads((out / "metrics.json").read_text())["strategies"]["static"]
        start = token_id(lm.tokenizer, token)
        assert static["boundary"]["token"] == token and static["boundary"]["id"] == start
        assert static["config"]["boundary"] == flag  # the config as asked; `boundary`: as used
        ids = [text_ids(lm.tokenizer, t) for t in TEXTS]
        nll = sum((plain_loss(lm.model, [start, *i]) * len(i) for i in ids), 0.0)
        expected = nll / sum(len(i) for i in ids)
        # bf16 autocast where the CPU has it: replay takes the strategy's `auto` precision.
        assert static["prequential_loss"] == pytest.approx(expected, abs=3e-3)
        losses[flag] = static["prequential_loss"]
    assert abs(losses["auto"] - losses["bos"]) > 1e-2


def test_an_unknown_boundary_token_is_one_line_naming_the_flag(
    smol_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "s.jsonl"
    stream.write_text(json.dumps({"text": TEXTS[0]}) + "\n")
    argv = ["replay", str(stream), "--model", str(smol_dir), "--strategy", "static"]
    code = main([*argv, "--out", str(tmp_path / "o"), "--quiet", "--boundary", "<nope>"])
    assert code == 2
    err = capsys.readouterr().err  # after transformers' own progress bar, one line
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("livelm replay: error: --boundary '<nope>'")


def test_serve_scores_after_the_boundary_its_flag_names(smol_dir: Path, tmp_path: Path) -> None:
    """A real `livelm serve --boundary bos` process: /v1/score starts each document with
    `<|im_start|>`, as asked, and the plain transformers loss after it is the score."""
    lm = load_model(str(smol_dir), device="cpu")
    text = "Hello world"  # two tokens: the first one's context, the boundary, weighs half
    ids = text_ids(lm.tokenizer, text)
    args = ["--model", str(smol_dir), "--data-dir", str(tmp_path / "data"), "--device", "cpu"]
    server = ServeProcess([*args, "--boundary", "bos"], tmp_path / "serve.log")
    try:
        server.wait_ready()
        r = httpx.post(f"{server.url}/v1/score", json={"text": text}, timeout=30)
        assert r.status_code == 200, r.text
        loss = r.json()["documents"][0]["loss"]
        im_start = token_id(lm.tokenizer, "<|im_start|>")
        endoftext = token_id(lm.tokenizer, "<|endoftext|>")
        # The server scores under bf16 autocast where the CPU has it: about 1e-3 off fp32.
        assert loss == pytest.approx(plain_loss(lm.model, [im_start, *ids]), abs=2e-2)
        assert loss != pytest.approx(plain_loss(lm.model, [endoftext, *ids]), abs=5e-2)
    finally:
        server.kill(signal.SIGTERM)
