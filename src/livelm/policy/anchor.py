"""Anchoring: a penalty that pulls the learner's weights back toward the base model's.

- L2-SP (Li et al., 2018): `strength / 2 * ||W - W0||^2` over what the learner changes.
- EWC (Kirkpatrick et al., 2017): `strength / 2 * sum_i F_i (theta_i - theta0_i)^2`, with `F` the
  diagonal empirical Fisher information of reference documents (the mean of each weight's squared
  per-document gradient) under the base weights: weights that matter for the reference are held
  harder. `F` is scaled to mean 1, so a strength means about as much as it does for L2-SP.

For a LoRA learner the base weights never move; what moves is each adapted layer's update
`dW = s * B @ A`. L2-SP penalizes `||dW||^2` exactly, as `s^2 * sum((B^T B) * (A A^T))`: two
r x r matrices instead of the d_out x d_in product. EWC's Fisher is over the adapter weights
themselves (in effect over B: A's gradient is zero while B starts at zero, so A moves freely and
B is held), the affordable form: the Fisher of the full weight matrices would cost a model's
worth of memory and a dense product per layer per step.

Both are `Learner.regularizers`: the learner adds the penalty to the loss of every update,
inside its guard against non-finite losses. Their spec (`--anchor l2sp:0.01`) is `AnchorConfig`,
in `livelm.policy.config` with the rest of a policy's settings, which import no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from peft.tuners.lora import LoraLayer

from livelm.document import Document
from livelm.learner.core import Learner, Regularizer

if TYPE_CHECKING:
    from livelm.policy.config import AnchorConfig


def _lora_factors(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """`(A, B, scaling)` of every active linear LoRA adapter: dW = scaling * B @ A."""
    factors = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.active_adapters:
            if name in module.lora_A and name in module.lora_B:
                a, b = module.lora_A[name].weight, module.lora_B[name].weight
                assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                factors.append((a, b, float(module.scaling[name])))
    return factors


class L2SP:
    """`strength / 2 * ||W - W0||^2`: LoRA updates exactly, any other trainable weight as is."""

    def __init__(self, learner: Learner, strength: float) -> None:
        if not learner.params:
            raise ValueError("anchoring needs a learner that updates weights")
        self.strength = strength
        self.device = learner.device
        self.lora = _lora_factors(learner.model)
        in_lora = {id(t) for a, b, _ in self.lora for t in (a, b)}
        # Adapters of one shape and scaling go through one batched product: a model has a few
        # shapes (q, k, v, o, gate, up, down) but hundreds of adapters, and a product each cost
        # a sixth of a one-document step on a CPU.
        groups: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for a, b, scaling in self.lora:
            groups.setdefault((a.shape, b.shape, scaling), []).append((a, b))
        self.lora_groups = [
            ([a for a, _ in pairs], [b for _, b in pairs], key[2]) for key, pairs in groups.items()
        ]
        # Weights the learner changes directly: their base values, kept in fp32.
        self.anchors = [
            (p, p.detach().float().clone()) for p in learner.params if id(p) not in in_lora
        ]

    def distance(self) -> torch.Tensor:
        """`||W - W0||^2` summed over every changed weight (fp32, differentiable)."""
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for a_list, b_list, scaling in self.lora_groups:
            a = torch.stack(a_list).float()  # (n, r, d_in)
            b = torch.stack(b_list).float()  # (n, d_out, r)
            # (n, r, r), each summing to ||B @ A||_F^2
            gram = (b.transpose(1, 2) @ b) * (a @ a.transpose(1, 2))
            total = total + scaling**2 * gram.sum()
        for p, p0 in self.anchors:
            total = total + (p.float() - p0).pow(2).sum()
        return total

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.strength * self.distance()


class EWC:
    """`strength / 2 * sum F (theta - theta0)^2` with a mean-1 diagonal Fisher of `docs`."""

    def __init__(self, learner: Learner, docs: Sequence[Document], strength: float) -> None:
        if not learner.params:
            raise ValueError("anchoring needs a learner that updates weights")
        if not docs:
            raise ValueError(
                "--anchor ewc needs reference documents for its Fisher information "
                "(replay: --fisher FILE or --reference FILE)"
            )
        self.strength = strength
        self.device = learner.device
        fisher = [torch.zeros_like(p, dtype=torch.float32) for p in learner.params]
        counted = 0
        for doc in docs:
            encoded = learner.encode(doc)
            if not math.isfinite(learner.gradient([encoded])):
                continue  # an empty or poisoned document says nothing about what to keep
            counted += 1
            for f, p in zip(fisher, learner.params, strict=True):
                if p.grad is not None:
                    f += p.grad.float().pow(2)
        for p in learner.params:
            p.grad = None
        mean = sum(float(f.sum()) for f in fisher) / sum(f.numel() for f in fisher)
        if counted == 0 or not mean > 0:
            raise ValueError("--anchor ewc: the reference documents gave no gradient")
        self.docs = counted
        self.terms = [
            (p, p.detach().float().clone(), f / mean)
            for p, f in zip(learner.params, fisher, strict=True)
        ]

    def distance(self) -> torch.Tensor:
        """`sum F (theta - theta0)^2` (fp32, differentiable)."""
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for p, p0, f in self.terms:
            total = total + (f * (p.float() - p0).pow(2)).sum()
        return total

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.strength * self.distance()


def make_anchor(
    config: AnchorConfig, learner: Learner, reference: Sequence[Document] = ()
) -> Regularizer:
    """The anchor `config` names, on `learner`'s weights as they are now (the base)."""
    if config.kind == "l2sp":
        return L2SP(learner, config.strength)
    return EWC(learner, reference[: config.fisher_docs], config.strength)
