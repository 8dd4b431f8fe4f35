"""The serving side of a version: its own copy of the learned weights, frozen.

The learner keeps training its model while requests run, so a request never touches it: each
published version gets a copy of the model that shares every frozen tensor with the learner's
(the base weights of a LoRA learner are never written) and owns a copy of the trainable ones.
For LoRA that copies only the adapters (about 20 MB for SmolLM2-135M); a full-weight learner's
versions copy the whole model. A request takes the live version once, at its start, and keeps
it to the end: it finishes on the version it started with, and the copy is freed when the last
request holding it ends.

The adapters are not merged into the weights: with the base in bf16 a merge rounds away most
of a small update (a LoRA delta is often below half a bf16 step of the weight it adapts), and
the served model would no longer be the one that learned.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from peft import PeftModel

from livelm.store import Manifest


@dataclass(frozen=True)
class ServingVersion:
    """A published version ready to answer requests."""

    manifest: Manifest
    model: torch.nn.Module  # the transformers model (LoRA layers injected in place for PEFT)
    autocast_dtype: torch.dtype | None

    @property
    def number(self) -> int:
        return self.manifest.version

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def serving_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` sharing its frozen tensors; call it between learning steps.

    `deepcopy`'s memo maps each frozen parameter to itself, so only the trainable ones (and
    the module objects) are copied.
    """
    memo: dict[int, object] = {id(p): p for p in model.parameters() if not p.requires_grad}
    clone = copy.deepcopy(model, memo)
    clone.requires_grad_(False)
    clone.eval()
    # Run the transformers model directly: PeftModel.generate swaps a method on the shared
    # base model for the call's duration, which is not safe with concurrent requests.
    inner = clone.get_base_model() if isinstance(clone, PeftModel) else clone
    assert isinstance(inner, torch.nn.Module)
    return inner
