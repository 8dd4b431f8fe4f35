"""The one score-and-learn step: test-then-train on a batch of documents.

Every caller (replay, the server, distributed learners) goes through `Learner.step`: one forward
pass per micro-batch gives each document's score, taken under the weights before any update that
used it, and the same pass drives the update. A step whose loss or gradient is not finite leaves
the weights and the optimizer state as they were.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from livelm.document import Document
from livelm.learner.config import LearnerConfig
from livelm.learner.distributed import GradientSync
from livelm.learner.encoding import EncodedDocument, Encoder
from livelm.learner.packing import pack, token_nll
from livelm.model.device import autocast_dtype_for

# The steps a `rewarm` ramps the lr over when the learner itself starts without a warm-up.
REWARM_STEPS = 10


@dataclass(frozen=True)
class DocScore:
    """A document's prequential score: mean negative log-likelihood in nats per token.

    `surprise` is the loss as a z-score against the stream's running loss; a policy that
    monitors the stream fills it in (see `livelm.policy.monitor`), the learner alone cannot.
    """

    id: str
    loss: float
    tokens: int
    surprise: float | None = None


@dataclass(frozen=True)
class StepReport:
    """What one step did; loops yield these and reports consume them."""

    step: int
    scores: tuple[DocScore, ...]  # the scored documents, in input order
    loss: float  # the (weighted) training loss of the step; nan when nothing was scored
    updated: bool
    skipped: str | None  # why the weights were not updated, if they were not
    lr: float
    grad_norm: float | None
    tokens: int  # predicted tokens of the scored documents
    seconds: float
    penalty: float = 0.0  # what the regularizers added to `loss` in the update
    # Documents left out of the update, as (index in the step's `docs`, reason): their loss or
    # gradient was not finite. Their scores' loss is nan.
    rejected: tuple[tuple[int, str], ...] = ()


class Regularizer(Protocol):
    """A penalty on the weights, added to a step's loss before its update (anchoring, say)."""

    def penalty(self) -> torch.Tensor:
        """A differentiable fp32 scalar."""
        ...


class Learner:
    """A model, its optimizer and the test-then-train step.

    >>> # learner = Learner(model, tokenizer, get_strategy("online"))
    >>> # report = learner.step([learner.encode(Document("fresh news"))])
    >>> # report.scores[0].loss  # nats/token before the update
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: LearnerConfig,
    ) -> None:
        self.config = config
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype_for(self.device, config.precision)
        window = getattr(model.config, "max_position_embeddings", None) or config.max_tokens
        self.encoder = Encoder(tokenizer, min(config.max_tokens, int(window)), config.boundary)
        # The config names the token `auto` chose: manifests and reports record what was used.
        self.config = config.replace(boundary=self.encoder.resolved.token)
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.encoder.boundary
        )
        torch.manual_seed(config.seed)
        if self.autocast_dtype is not None and config.update != "full":
            # Frozen weights are stored in the compute dtype: autocast would otherwise copy
            # every matrix to bf16 on every forward (a third of a LoRA step's time on a CPU).
            model.to(self.autocast_dtype)  # type: ignore[arg-type]  # stub too narrow
        self._attention = resolve_attention(config.attention, self.device)
        model.set_attn_implementation(self._attention)
        model.eval()  # no dropout: a score is the model's plain loss, and so is the update's
        if config.update == "lora":
            model = self._with_lora(model)
        else:
            for p in model.parameters():
                p.requires_grad_(config.update == "full")
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer() if config.learns else None
        # Penalties summed into every update's loss; policies append to it (anchoring).
        self.regularizers: list[Regularizer] = []
        # Set for data-parallel learning: sums the step's tokens, loss and gradients over ranks.
        self.sync: GradientSync | None = None
        self.steps = 0
        self.updates = 0
        self.skipped_updates = 0
        self.rewarms = 0
        self.optimizer_resets = 0
        self._warmup_start = 0

    def _with_lora(self, model: PreTrainedModel) -> PreTrainedModel:
        c = self.config
        targets = (
            _linear_leaf_names(model) if c.lora_targets == ("all-linear",) else list(c.lora_targets)
        )
        layers: list[int] | None = None
        if c.lora_last_layers is not None:
            n = int(model.config.num_hidden_layers)
            layers = list(range(max(0, n - c.lora_last_layers), n))
        lora = LoraConfig(
            r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=targets,
            layers_to_transform=layers,
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, lora)
        if self.autocast_dtype is not None:
            skip_adapter_input_cast(peft_model)
        return peft_model  # type: ignore[return-value]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=c.lr, momentum=0.0, weight_decay=c.weight_decay)
        # The fused kernel: one pass over every tensor instead of a dozen small operations
        # each (210 adapters' A and B for LoRA), 21 against 7.6 ms a step on one CPU thread.
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(
            self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, fused=fused
        )

    # -- policy hooks -------------------------------------------------------------------------

    def rewarm(self) -> None:
        """Start the learning-rate warm-up again (after a drift, say)."""
        self._warmup_start = self.steps
        self.rewarms += 1

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments, as if learning started now."""
        if self.optimizer is not None:
            self.optimizer = self._make_optimizer()
            self.optimizer_resets += 1

    def current_lr(self) -> float:
        """The peak lr, ramped linearly over `warmup_steps` from the start and over as many
        (`REWARM_STEPS` where the learner starts without a warm-up) after each `rewarm`: at the
        start the adapters hold nothing yet, while after a drift or a rollback they hold what was
        learned, and fresh Adam moments would take full-size steps on it. With `lr_decay_steps`
        set, it then falls with the steps since the start or the last rewarm (a drift makes the
        learner quick again), down to `lr_floor` of the peak."""
        c = self.config
        length = c.warmup_steps if self.rewarms == 0 else c.warmup_steps or REWARM_STEPS
        progress = self.steps - self._warmup_start + 1
        lr = c.lr if length == 0 else c.lr * min(1.0, progress / length)
        if c.lr_decay_steps is not None:
            lr *= max(c.lr_floor, (1 + (progress - 1) / c.lr_decay_steps) ** -0.5)
        return lr

    # -- scoring and learning -----------------------------------------------------------------

    def encode(self, doc: Document) -> EncodedDocument:
        return self.encoder.encode(doc)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _nll_sums(
        self,
        chunks: Sequence[Sequence[int]],
        weights: Sequence[float],
        denominator: float,
        grad: bool,
    ) -> list[float]:
        """Summed NLL of each chunk; with `grad`, accumulates d(weighted mean loss)/dθ."""
        sums = torch.zeros(len(chunks), device=self.device)
        w = torch.tensor(weights, device=self.device)
        c = self.config
        for batch in pack(chunks, c.row_tokens, c.token_budget, self.pad_id):
            self._fit_attention(int(batch.ids.shape[1]))
            with self._autocast():
                nll, owner = token_nll(self.model, batch, self.device)
            if grad:
                ((nll * w[owner]).sum() / denominator).backward()
            sums.index_add_(0, owner, nll.detach())
        # .tolist() is the CPU-GPU sync point of the step
        return [float(x) for x in sums.cpu().tolist()]

    def _fit_attention(self, width: int) -> None:
        """With `attention="auto"` on a CPU: eager for rows up to `EAGER_MAX_WIDTH` tokens,
        SDPA for wider ones (see `resolve_attention`)."""
        if self.config.attention != "auto" or self.device.type != "cpu":
            return
        wanted = "eager" if width <= EAGER_MAX_WIDTH else "sdpa"
        if wanted != self._attention:
            self.model.set_attn_implementation(wanted)
            self._attention = wanted

    def _per_document(
        self, docs: Sequence[EncodedDocument], sums: Sequence[float]
    ) -> tuple[DocScore, ...]:
        scores = []
        k = 0
        for d in docs:
            total = sum(sums[k : k + len(d.chunks)])
            k += len(d.chunks)
            loss = total / d.tokens if d.tokens else math.nan
            scores.append(DocScore(id=d.doc.id, loss=loss, tokens=d.tokens))
        return tuple(scores)

    def score(self, docs: Sequence[EncodedDocument]) -> tuple[DocScore, ...]:
        """Scores under the current weights, without learning."""
        chunks = [c for d in docs for c in d.chunks]
        with torch.inference_mode():
            sums = self._nll_sums(chunks, [1.0] * len(chunks), 1.0, grad=False)
        return self._per_document(docs, sums)

    def gradient(self, docs: Sequence[EncodedDocument]) -> float:
        """Backpropagates the documents' token-weighted mean loss into the trainable weights'
        `.grad` (cleared first) and returns that loss; no update. For estimates that need
        gradients without learning, such as EWC's Fisher information."""
        if not self.params:
            raise ValueError("a learner that updates nothing (update='none') has no gradient")
        chunks = [c for d in docs for c in d.chunks]
        denominator = sum(len(c) - 1 for c in chunks)
        for p in self.params:
            p.grad = None
        if denominator <= 0:
            return math.nan
        sums = self._nll_sums(chunks, [1.0] * len(chunks), denominator, grad=True)
        return sum(sums) / denominator

    def _penalty_backward(self) -> float:
        """Backpropagates the regularizers' summed penalty; returns it (0.0 without any)."""
        if not self.regularizers:
            return 0.0
        total = torch.stack([r.penalty() for r in self.regularizers]).sum()
        value = float(total.detach())  # a CPU-GPU sync point, once per step
        if math.isfinite(value):
            # Every rank holds the same weights, so the same penalty: its gradient is counted
            # once in the sum over ranks.
            (total / (1 if self.sync is None else self.sync.world)).backward()
        return value

    def step(
        self,
        docs: Sequence[EncodedDocument],
        *,
        extra: Sequence[EncodedDocument] = (),
        extra_weights: Sequence[float] | None = None,
    ) -> StepReport:
        """Test-then-train: score `docs`, then take one update on `docs` and `extra`.

        `extra` documents (replayed ones, say) are learned from with their weights but never
        scored into the report. A static learner only scores.

        A document whose loss or gradient is not finite is isolated: the step is taken again
        one document at a time (a rare path), so that the culprit's NaN, which spreads to every
        chunk packed in its row (0 attention x NaN is NaN), costs the others nothing. The
        culprit is left out of the update and listed in `StepReport.rejected`; the others'
        scores are their own. Isolation happens on each rank before anything is summed over
        ranks, so one process and a torchrun group take the same update.
        """
        started = time.perf_counter()
        tokens = sum(d.tokens for d in docs)
        if not self.config.learns:
            scores = self.score(docs)
            self.steps += 1
            return StepReport(
                step=self.steps,
                scores=scores,
                loss=_mean_loss(scores),
                updated=False,
                skipped="static",
                lr=0.0,
                grad_norm=None,
                tokens=tokens,
                seconds=time.perf_counter() - started,
            )
        assert self.optimizer is not None
        all_docs = [*docs, *extra]
        doc_weights = [1.0] * len(docs) + list(extra_weights or [1.0] * len(extra))
        lr = self.current_lr()
        self.optimizer.zero_grad(set_to_none=True)
        # Gradients of the *summed* weighted NLL: the step's token count over every rank is
        # only known once each rank has set its culprits aside, so the division comes after.
        sums = self._doc_sums(all_docs, doc_weights)
        bad: dict[int, str] = {}
        if not (all(math.isfinite(s) for s in sums) and self._grads_finite()):
            sums, bad = self._isolate(all_docs, doc_weights)
        kept = [i for i in range(len(all_docs)) if i not in bad]
        denominator = sum(doc_weights[i] * all_docs[i].tokens for i in kept)
        weighted = sum(doc_weights[i] * sums[i] for i in kept)
        if self.sync is not None:  # data-parallel: the step's tokens and loss over every rank
            denominator, weighted = self.sync.sum([denominator, weighted])
        rejected = tuple((i, reason) for i, reason in sorted(bad.items()) if i < len(docs))
        if denominator <= 0:
            self.optimizer.zero_grad(set_to_none=True)
            return self._finish(docs, sums, None, lr, "no tokens", started, rejected=rejected)
        loss = weighted / denominator
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:  # none on a rank whose documents were all set aside
            torch._foreach_div_(grads, denominator)
        penalty = self._penalty_backward()
        if not math.isfinite(penalty):
            self.optimizer.zero_grad(set_to_none=True)
            return self._finish(
                docs, sums, loss, lr, "non-finite penalty", started, rejected=rejected
            )
        if self.sync is not None:
            self.sync.gradients(self.params)
        max_norm = self.config.clip_norm if self.config.clip_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm):  # the penalty's gradient: the weights themselves
            self.optimizer.zero_grad(set_to_none=True)
            return self._finish(
                docs, sums, loss, lr, "non-finite gradient", started, rejected=rejected
            )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        return self._finish(
            docs, sums, loss, lr, None, started, grad_norm, penalty, rejected=rejected
        )

    def _doc_sums(self, docs: Sequence[EncodedDocument], weights: Sequence[float]) -> list[float]:
        """Each document's summed NLL; accumulates d(sum of weighted NLL)/dθ into `.grad`."""
        chunks = [c for d in docs for c in d.chunks]
        chunk_weights = [w for d, w in zip(docs, weights, strict=True) for _ in d.chunks]
        if not chunks:
            return [0.0] * len(docs)
        chunk_sums = self._nll_sums(chunks, chunk_weights, 1.0, grad=True)
        out, k = [], 0
        for d in docs:
            out.append(sum(chunk_sums[k : k + len(d.chunks)]))
            k += len(d.chunks)
        return out

    def _grads_finite(self) -> bool:
        # One fused reduction over the trainable weights; .item() is a CPU-GPU sync point.
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return True
        return bool(torch.stack([g.float().abs().sum() for g in grads]).sum().isfinite().item())

    def _isolate(
        self, docs: Sequence[EncodedDocument], weights: Sequence[float]
    ) -> tuple[list[float], dict[int, str]]:
        """Redo the step's backward one document at a time, keeping the gradients of those
        whose loss and gradient are finite. Returns every document's summed NLL (alone) and
        the culprits with the reason."""
        total = [torch.zeros_like(p) for p in self.params]
        sums: list[float] = []
        bad: dict[int, str] = {}
        for i, (doc, w) in enumerate(zip(docs, weights, strict=True)):
            for p in self.params:
                p.grad = None
            [s] = self._doc_sums([doc], [w])
            sums.append(s)
            if not math.isfinite(s):
                bad[i] = "non-finite loss"
            elif not self._grads_finite():
                bad[i] = "non-finite gradient"
            else:
                for acc, p in zip(total, self.params, strict=True):
                    if p.grad is not None:
                        acc.add_(p.grad)
        for acc, p in zip(total, self.params, strict=True):
            p.grad = acc
        return sums, bad

    def _finish(
        self,
        docs: Sequence[EncodedDocument],
        sums: Sequence[float],
        loss: float | None,
        lr: float,
        skipped: str | None,
        started: float,
        grad_norm: float | None = None,
        penalty: float = 0.0,
        *,
        rejected: tuple[tuple[int, str], ...] = (),
    ) -> StepReport:
        self.steps += 1
        if skipped is not None:
            self.skipped_updates += 1
        culprits = {i for i, _ in rejected}
        scores = tuple(
            DocScore(
                id=d.doc.id,
                loss=math.nan if i in culprits or not d.tokens else s / d.tokens,
                tokens=d.tokens,
            )
            for i, (d, s) in enumerate(zip(docs, sums, strict=False))
        )
        return StepReport(
            step=self.steps,
            scores=scores,
            loss=math.nan if loss is None else loss,
            updated=skipped is None,
            skipped=skipped,
            lr=lr,
            grad_norm=grad_norm,
            tokens=sum(d.tokens for d in docs),
            seconds=time.perf_counter() - started,
            penalty=penalty,
            rejected=rejected,
        )


# Measured on this 2-core CPU, one LoRA step of SmolLM2 (tokens/s, eager against SDPA): packed
# rows of 256 tokens 557 against 444 (the CPU's flash-attention backward is the slowest op there);
# one 761-token row 469 against 387; two 1,023-token rows, one padded, 206 against 357 (eager
# materializes and upcasts the masked score matrix).
EAGER_MAX_WIDTH = 768


def resolve_attention(attention: str, device: torch.device) -> str:
    """The attention implementation for `auto`: SDPA on an accelerator; on a CPU eager, and the
    learner switches to SDPA for micro-batches wider than `EAGER_MAX_WIDTH` tokens."""
    if attention != "auto":
        return attention
    return "eager" if device.type == "cpu" else "sdpa"


def skip_adapter_input_cast(model: torch.nn.Module) -> None:
    """Under autocast: autocast already runs the adapters in bf16, and PEFT's own cast of each
    adapter's input to the adapters' fp32 only adds two activation copies per adapted layer."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False  # type: ignore[assignment]


def _linear_leaf_names(model: PreTrainedModel) -> list[str]:
    """The distinct leaf names of every linear layer but the output head (PEFT's all-linear).

    Spelled out because PEFT refuses `layers_to_transform` with the `all-linear` shorthand.
    """
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
        }
    )


def _mean_loss(scores: Sequence[DocScore]) -> float:
    tokens = sum(s.tokens for s in scores if s.tokens)
    if not tokens:
        return math.nan
    return sum(s.loss * s.tokens for s in scores if s.tokens) / tokens
