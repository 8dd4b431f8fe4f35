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
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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

    writer = gguf.GGUFWriter(path, "llama")  # writes general.architecture itself
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
