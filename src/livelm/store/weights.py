"""Save and load the learned weights of a version.

A LoRA learner's model is a `PeftModel`: its version is a PEFT adapter directory written by
`save_pretrained` (`adapter_config.json` + `adapter_model.safetensors`), loadable as it is by
PEFT, or by any server that loads LoRA adapters. A full-weight learner's version is a plain
Hugging Face model directory (`config.json` + `model.safetensors`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from livelm.store.manifest import Kind

ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "model.safetensors"


def weights_kind(model: torch.nn.Module) -> Kind:
    return "lora" if isinstance(model, PeftModel) else "full"


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    """Write the model's learned weights into `directory` (which must exist)."""
    # Both branches call save_pretrained: PEFT's writes only the adapter, transformers' the model.
    model.save_pretrained(directory)  # type: ignore[operator]


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Copy a version's weights into `model` in place (dtypes and devices stay the model's)."""
    if isinstance(model, PeftModel):
        state = load_file(directory / ADAPTER_WEIGHTS)
        result = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(result, "unexpected_keys", []))  # a namedtuple, untyped
        if unexpected:
            raise ValueError(f"{directory}: adapter has weights this model lacks: {unexpected[:3]}")
        return
    state = load_file(directory / FULL_WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained drops tied copies (lm_head.weight when it is the embedding); any other
    # gap means the directory holds another model.
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"{directory}: weights do not match this model "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})"
        )
