"""The serving side of a version: a plain transformers model with the version's weights, frozen.

The learner keeps training its model while requests run, so a request never touches it: each
published version gets a serving copy, made between learning steps, that no one writes. A
request takes the live version once, at its start, and keeps it to the end: it finishes on the
version it started with, and the copy is freed when the last request holding it ends.

The copy is made for speed: each LoRA adapter is folded into its base projection
(`W + scaling * B @ A`, computed in fp32, stored in the serving dtype: bf16 where the hardware
runs it fast, as `livelm.model.autocast_dtype_for` decides, else fp32), so the copy is one plain
`nn.Linear` (or GPT-2's `Conv1D`) per projection in a plain transformers model: no PEFT wrapper,
no second matmul through the adapters, no autocast at run time. Every tensor LoRA does not touch
(embeddings, norms, the output head) is the learner's frozen one, shared, not copied; the copy
owns only the merged projections (about 210 MB in bf16 for SmolLM2-135M with every linear
adapted). A full-weight learner's version is the whole model cast to the serving dtype.

Folding rounds: a bf16 weight holds about three significant digits, and a small LoRA delta can
be below half a bf16 step of the weight it adapts, so a served weight differs from the base
plus adapter the learner evaluates by up to half a bf16 step. The learner's own forward rounds
too (every matmul's output is bf16 under autocast): both are within bf16 rounding of the exact
fp32 computation of the same weights, and of each other (tests/test_serving_engine.py); where
they pick different greedy tokens, the top two logits were within that rounding of each other.
In exchange, generation runs at the speed of plain transformers `generate` in bf16: 1.6x less
CPU a token than the adapters on the base under autocast (SmolLM2-135M, one thread: 29.5
against 47.4 ms a token).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear

from livelm.store import Manifest

# The attention the serving copies run: on a CPU, SDPA scores and decodes from a cache as fast
# as eager attention or faster (the learner's eager choice there is for its backward), and
# keeps memory flat on long rows.
SERVING_ATTENTION = "sdpa"


@dataclass(frozen=True, eq=False)
class ServingVersion:
    """A published version ready to answer requests: `model` is a plain transformers model
    (see `serving_copy`), run as it is, without autocast. Compared by identity."""

    manifest: Manifest
    model: torch.nn.Module

    @property
    def number(self) -> int:
        return self.manifest.version

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def serving_copy(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """A frozen plain-transformers copy of `model` for serving; call it between learning steps.

    `model` is the learner's: a `PeftModel` (LoRA, its adapters folded in) or a transformers
    model (full weights). `dtype` is the serving dtype (the learner's autocast dtype; None: fp32).
    Tensors the copy does not change, already in `dtype`, are shared with `model`.

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from peft import LoraConfig, get_peft_model
    >>> config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> base = LlamaForCausalLM(config).requires_grad_(False)
    >>> learner = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    >>> served = serving_copy(learner, None)
    >>> type(served).__name__, type(served.model.layers[0].self_attn.q_proj).__name__
    ('LlamaForCausalLM', 'Linear')
    >>> served.model.embed_tokens.weight is base.model.embed_tokens.weight
    True
    """
    target = torch.float32 if dtype is None else dtype
    replace: dict[int, object] = {}
    folded: set[int] = set()  # the parameters of the LoRA layers, replaced whole
    if isinstance(model, PeftModel):
        inner = model.get_base_model()
        assert isinstance(inner, torch.nn.Module)
        for module in inner.modules():
            if isinstance(module, LoraLayer):
                if not isinstance(module, LoraLinear):
                    raise ValueError(
                        f"{type(module).__name__}: livelm serves LoRA on linear layers only"
                    )
                replace[id(module)] = _merged(module, target)
                folded.update(id(p) for p in module.parameters())
    else:
        inner = model
    for p in inner.parameters():
        if id(p) in folded:
            continue
        same = p.dtype == target or not p.is_floating_point()
        kept = p if same and not p.requires_grad else p.detach().to(target, copy=True)
        replace[id(p)] = _frozen(kept)
    # `deepcopy`'s memo maps each replaced object to its replacement: the modules and buffers
    # around them are copied, the parameters and merged layers are the ones given.
    clone = copy.deepcopy(inner, replace)
    clone.requires_grad_(False)
    clone.eval()
    set_attention = getattr(clone, "set_attn_implementation", None)
    if callable(set_attention):
        with contextlib.suppress(ValueError, ImportError):  # a model without SDPA keeps its own
            set_attention(SERVING_ATTENTION)
    return clone


def _frozen(tensor: torch.Tensor) -> torch.nn.Parameter:
    if isinstance(tensor, torch.nn.Parameter) and not tensor.requires_grad:
        return tensor
    return torch.nn.Parameter(tensor.detach(), requires_grad=False)


def _weight(module: object) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__} has no weight"
    return weight.detach()


def _merged(layer: LoraLinear, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `layer`'s base module (`nn.Linear`, `Conv1D`) with its active adapters folded
    into the weight; the bias is the base's, shared."""
    base = layer.get_base_layer()
    weight = base.weight
    assert isinstance(weight, torch.Tensor)
    # W + scaling * B @ A for each adapter: (out, in) = (out, r) @ (r, in); Conv1D's weight is
    # (in, out), so there it adds scaling * A^T @ B^T (PEFT's `get_delta_weight`, transposed).
    updates = []
    if not layer.disable_adapters:
        for name in layer.active_adapters:
            if name not in layer.lora_A:
                continue
            if getattr(layer, "lora_variant", {}).get(name) is not None:
                raise ValueError(
                    f"adapter {name!r} is a LoRA variant (DoRA, ...): livelm serves plain LoRA"
                )
            a = _weight(layer.lora_A[name]).float()  # (r, in)
            b = _weight(layer.lora_B[name]).float()  # (out, r)
            left, right = (a.T, b.T) if layer.fan_in_fan_out else (b, a)
            updates.append((left, right, float(layer.scaling[name])))
    merged_weight = torch.empty_like(weight, dtype=dtype, requires_grad=False)
    # Row blocks of about 256K values (1 MB in fp32): the sums stay in cache, and no full-size
    # fp32 temporary is made (on a CPU the merge is bound by memory, not by the small matmuls).
    rows = max(1, (1 << 18) // max(1, weight.shape[1]))
    with torch.no_grad():
        for start in range(0, weight.shape[0], rows):
            block = weight[start : start + rows].to(torch.float32, copy=True)
            for left, right, scaling in updates:
                block.addmm_(left[start : start + rows], right, alpha=scaling)
            merged_weight[start : start + rows] = block
    replace: dict[int, object] = {id(weight): _frozen(merged_weight)}
    bias = getattr(base, "bias", None)
    if isinstance(bias, torch.Tensor):
        replace[id(bias)] = _frozen(bias if bias.dtype == dtype else bias.to(dtype))
    merged = copy.deepcopy(base, replace)
    assert isinstance(merged, torch.nn.Module)
    return merged
