"""Build a tiny random Llama with a byte-level BPE tokenizer, and write it as a GGUF file.

Everything is made in memory: no download, no hub. The GGUF follows what llama.cpp's
`convert_hf_to_gguf.py` writes for architecture `llama` (F32 tensors only), which is what
transformers' GGUF loader reads back:

- metadata `llama.*` for the shape, `tokenizer.ggml.*` for a `gpt2` (byte-level BPE) vocabulary;
- tensor names `token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output`;
- the rotary permutation of the q and k projections that llama.cpp applies and transformers undoes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model learns online from a stream of text while it serves requests.",
    "Tokenizers split text into pieces; byte-level BPE never meets an unknown character.",
    "Hello world! Hello again, world. 12345 67890",
    "the theory of the thing is that the tokens merge into longer tokens over time",
]

# HF parameter name (with `{i}` for the layer) -> GGUF tensor name, as llama.cpp maps them.
_LAYER_NAMES = {
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def build_tokenizer(vocab_size: int = 320) -> Tokenizer:
    """A byte-level BPE trained on a few sentences, with `<|endoftext|>` as token 0."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer


def to_transformers_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The same tokenizer as transformers wraps it; it has an EOS but no pad token."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN
    )


def build_model(vocab_size: int, *, seed: int = 0, tie_word_embeddings: bool = False):
    """A tiny random `LlamaForCausalLM` in fp32 (2 layers, hidden 64, 4 heads, 2 kv heads)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    # The default init leaves the norms at exactly 1; random ones also check they map right.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    model.eval()
    return model


def tiny_llama(*, seed: int = 0, tie_word_embeddings: bool = False):
    """`(model, tokenizer)`: a tiny random Llama and its byte-level BPE tokenizer."""
    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer.get_vocab_size(), seed=seed, tie_word_embeddings=tie_word_embeddings
    )
    return model, tokenizer


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rotary halves interleaved, per head."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _merges(tokenizer: Tokenizer) -> list[str]:
    """The BPE merges as `"a b"` strings, whichever way this `tokenizers` version stores them."""
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under their GGUF names, with q and k permuted as llama.cpp does."""
    config = model.config
    n_head, n_head_kv = config.num_attention_heads, config.num_key_value_heads
    names = dict(_GLOBAL_NAMES)
    for i in range(config.num_hidden_layers):
        names.update({k.format(i=i): v.format(i=i) for k, v in _LAYER_NAMES.items()})
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing = set(state) - set(names)
    if missing:
        raise KeyError(f"no GGUF name for {sorted(missing)}")
    tensors = {}
    for hf_name, tensor in state.items():
        weights = tensor.detach().to(torch.float32).cpu().numpy().copy()
        if hf_name.endswith("q_proj.weight"):
            weights = _permute(weights, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            weights = _permute(weights, n_head, n_head_kv)
        tensors[names[hf_name]] = weights
    return tensors


def _gguf_writer(path: Path, arch: str, name: str, config: Any) -> gguf.GGUFWriter:
    """A GGUF writer with the header a Llama-shaped decoder (Llama, Qwen2) needs."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    return writer


def write_llama_gguf(
    model: LlamaForCausalLM, tokenizer: Tokenizer, path: Path, *, name: str = "tiny-llama"
) -> Path:
    """Write `model` and `tokenizer` to `path` as an F32 GGUF of architecture `llama`."""
    config = model.config
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("tokenizer ids are not contiguous from 0")
    if len(tokens) != config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokens)} tokens, model {config.vocab_size}")
    special = set(tokenizer.get_added_tokens_decoder())
    token_types = [
        gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
        for i in range(len(tokens))
    ]
    eos_id = vocab[EOS_TOKEN]
    head_dim = config.hidden_size // config.num_attention_heads

    writer = _gguf_writer(path, "llama", name, config)  # writes general.architecture itself
    writer.add_rope_dimension_count(head_dim)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(_merges(tokenizer))
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)

    for tensor_name, weights in gguf_tensors(model).items():
        writer.add_tensor(tensor_name, weights)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_tiny_model_dir(path: Path) -> Path:
    """The tiny Llama with gentler weights (losses like a real model's) and its tokenizer,
    saved as a Hugging Face model directory: the tests' and benchmarks' `--model`."""
    tokenizer = to_transformers_tokenizer(build_tokenizer())
    model = build_model(len(tokenizer), seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("norm.weight"):
                param.normal_(0.0, 0.05)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -- other model families -------------------------------------------------------------------------
#
# Each family gets the special tokens, the start-of-text behaviour and the chat template of its
# real tokenizer, over the same byte-level BPE, so that the boundary rule meets what it meets in
# the wild; the model is a tiny random one of that architecture.

_CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_GEMMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + "
    "('model' if m['role'] == 'assistant' else m['role']) + '\\n' + m['content'] + "
    "'<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
_LLAMA2_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """A model family as the tests build it: its tokenizer's special tokens (ids 0, 1, ... in
    this order), which of them it names BOS/EOS/pad, whether it puts its BOS before plain text,
    its chat template, the token `--boundary auto` must choose, and a tiny model config."""

    name: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    prepends_bos: bool
    chat_template: str | None
    boundary: str
    make_config: Callable[[int, dict[str, int]], PretrainedConfig]


def _llama_config(vocab_size: int, ids: dict[str, int]) -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=ids.get("<s>", ids.get("<|im_start|>")),
        eos_token_id=ids.get("</s>", ids.get("<|im_end|>")),
    )


def _gpt2_config(vocab_size: int, ids: dict[str, int]) -> PretrainedConfig:
    eos = ids["<|endoftext|>"]
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
    )


def _qwen2_config(vocab_size: int, ids: dict[str, int]) -> PretrainedConfig:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _gemma3_config(vocab_size: int, ids: dict[str, int]) -> PretrainedConfig:
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=32,
        pad_token_id=ids["<pad>"],
        eos_token_id=ids["<eos>"],
        bos_token_id=ids["<bos>"],
    )


FAMILIES: dict[str, Family] = {
    # Llama 2 / Mistral: `<s>` starts every encoded text.
    "llama": Family(
        "llama",
        ("<unk>", "<s>", "</s>"),
        "<s>",
        "</s>",
        None,
        True,
        _LLAMA2_CHAT,
        "<s>",
        _llama_config,
    ),
    # GPT-2: one `<|endoftext|>` for everything, nothing prepended, no chat template.
    "gpt2": Family(
        "gpt2",
        ("<|endoftext|>",),
        "<|endoftext|>",
        "<|endoftext|>",
        None,
        False,
        None,
        "<|endoftext|>",
        _gpt2_config,
    ),
    # Qwen2-Instruct: no BOS, EOS is the ChatML turn end, `<|endoftext|>` separates documents.
    "qwen2": Family(
        "qwen2",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None,
        "<|im_end|>",
        "<|endoftext|>",
        False,
        _CHATML,
        "<|endoftext|>",
        _qwen2_config,
    ),
    # Gemma 3: `<bos>` starts every encoded text; turns are `<start_of_turn>`...`<end_of_turn>`.
    "gemma3": Family(
        "gemma3",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        "<bos>",
        "<eos>",
        "<pad>",
        True,
        _GEMMA_CHAT,
        "<bos>",
        _gemma3_config,
    ),
    # SmolLM2-Instruct: a Llama whose BOS is the ChatML `<|im_start|>` (issue 13's case).
    "smollm2-instruct": Family(
        "smollm2-instruct",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        False,
        _CHATML,
        "<|endoftext|>",
        _llama_config,
    ),
}


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token of the vocabulary."""
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int), token
    return found


def family_tokenizer(family: Family, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE with `family`'s special tokens and start-of-text behaviour."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    if family.prepends_bos:
        assert family.bos is not None
        bos = (family.bos, tokenizer.token_to_id(family.bos))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[bos]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token="<unk>" if "<unk>" in family.specials else None,
        chat_template=family.chat_template,
    )


def save_family_model_dir(family: Family, path: Path, *, seed: int = 0) -> Path:
    """A tiny random model of `family` with gentle weights and its tokenizer, saved as a
    Hugging Face model directory."""
    tokenizer = family_tokenizer(family)
    ids = {t: token_id(tokenizer, t) for t in family.specials}
    config = family.make_config(len(tokenizer), ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name and ".ln_" not in name:  # norms stay at their init
                param.normal_(0.0, 0.05)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


_QWEN2_BIASES = {
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
}


def write_qwen2_gguf(model: PreTrainedModel, tokenizer: Tokenizer, path: Path) -> Path:
    """Write a Qwen2 model and its byte-level BPE to `path` as an F32 GGUF of architecture
    `qwen2`, as llama.cpp's converter does: Llama's tensor names plus the q/k/v biases, no
    rotary permutation (Qwen2 uses the rotate-half layout on both sides), ChatML specials."""
    config = model.config
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or len(tokens) != config.vocab_size:
        raise ValueError("tokenizer ids must run 0..vocab_size-1")
    special = set(tokenizer.get_added_tokens_decoder())
    names = {**_GLOBAL_NAMES}
    for i in range(config.num_hidden_layers):
        for table in (_LAYER_NAMES, _QWEN2_BIASES):
            names.update({k.format(i=i): v.format(i=i) for k, v in table.items()})
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)

    writer = _gguf_writer(path, "qwen2", "tiny-qwen2", config)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_token_merges(_merges(tokenizer))
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_bos_token_id(vocab["<|endoftext|>"])  # as llama.cpp writes Qwen2's
    writer.add_add_bos_token(False)
    writer.add_chat_template(_CHATML)
    for hf_name, tensor in state.items():
        writer.add_tensor(names[hf_name], tensor.detach().to(torch.float32).cpu().numpy().copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_qwen2(*, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """`(model, tokenizer)`: a tiny random Qwen2 (tied embeddings) and its ChatML tokenizer."""
    family = FAMILIES["qwen2"]
    tokenizer = family_tokenizer(family)
    ids = {t: token_id(tokenizer, t) for t in family.specials}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family.make_config(len(tokenizer), ids))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    model.eval()
    return model, tokenizer
