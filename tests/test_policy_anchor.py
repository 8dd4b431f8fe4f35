"""Anchoring: L2-SP and EWC keep the weights near the base, inside the learner's guard."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from livelm.document import Document
from livelm.learner import Learner, get_strategy
from livelm.model import LoadedModel
from livelm.policy import L2SP, AnchorConfig, PolicyConfig, PolicyLearner

FAST = {"precision": "fp32", "warmup_steps": 0, "max_docs_per_step": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def distance_from_base(learner: Learner, base: torch.nn.Module) -> float:
    """||W - W0||^2 over every weight, LoRA updates taken from PEFT's own delta weights."""
    if learner.config.update == "lora":
        deltas = [
            m.get_delta_weight("default")
            for m in learner.model.modules()
            if isinstance(m, LoraLinear)
        ]
        return sum(float(d.float().pow(2).sum()) for d in deltas)
    original = dict(base.named_parameters())
    return sum(
        float((p.float() - original[name].float()).pow(2).sum())
        for name, p in learner.model.named_parameters()
    )


def run(lm: LoadedModel, strategy: str, texts: list[str], policy: PolicyConfig) -> Learner:
    lr = 1e-2 if strategy == "online" else 1e-3
    learner = Learner(
        copy.deepcopy(lm.model), lm.tokenizer, get_strategy(strategy).replace(lr=lr, **FAST)
    )
    stepper = PolicyLearner(learner, policy, reference=[Document(t) for t in texts])
    docs = [stepper.encode(Document(t)) for t in texts]
    for _ in range(3):
        for i in range(0, len(docs), 2):
            stepper.step(docs[i : i + 2])
    return learner


@pytest.mark.parametrize("kind", ["l2sp", "ewc"])
@pytest.mark.parametrize("strategy", ["online", "online-full"])
def test_a_strong_anchor_keeps_the_weights_near_the_base(
    tiny: LoadedModel, news_lines: list[str], kind: str, strategy: str
) -> None:
    free = run(tiny, strategy, news_lines, PolicyConfig())
    anchored = run(
        tiny, strategy, news_lines, PolicyConfig(anchor=AnchorConfig.parse(f"{kind}:100"))
    )
    d_free = distance_from_base(free, tiny.model)
    d_anchored = distance_from_base(anchored, tiny.model)
    assert d_free > 0
    assert d_anchored < 0.5 * d_free, (d_anchored, d_free)


def test_l2sp_measures_the_lora_update_exactly(tiny: LoadedModel, news_lines: list[str]) -> None:
    learner = run(tiny, "online", news_lines, PolicyConfig())
    anchor = L2SP(learner, strength=0.5)
    assert anchor.anchors == []  # a LoRA learner changes adapters only
    assert float(anchor.distance()) == pytest.approx(distance_from_base(learner, tiny.model))
    assert float(anchor.penalty()) == pytest.approx(0.25 * float(anchor.distance()))


def test_the_penalty_is_part_of_every_update(tiny: LoadedModel, news_lines: list[str]) -> None:
    learner = Learner(
        copy.deepcopy(tiny.model), tiny.tokenizer, get_strategy("online-full").replace(**FAST)
    )
    stepper = PolicyLearner(learner, PolicyConfig(anchor=AnchorConfig("l2sp", 1.0)))
    docs = [stepper.encode(Document(t)) for t in news_lines[:4]]
    first = stepper.step(docs[:2])
    second = stepper.step(docs[2:])
    assert first.penalty == 0.0  # nothing has moved yet
    assert second.updated and second.penalty > 0


class _Poisoned:
    def penalty(self) -> torch.Tensor:
        return torch.tensor(math.nan)


def test_a_non_finite_penalty_never_touches_the_weights(
    tiny: LoadedModel, news_lines: list[str]
) -> None:
    learner = Learner(
        copy.deepcopy(tiny.model), tiny.tokenizer, get_strategy("online").replace(**FAST)
    )
    learner.regularizers.append(_Poisoned())
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    report = learner.step([learner.encode(Document(news_lines[0]))])
    assert not report.updated and report.skipped == "non-finite penalty"
    assert math.isfinite(report.scores[0].loss)
    for n, p in learner.model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_anchors_need_what_they_anchor(tiny: LoadedModel) -> None:
    online = Learner(copy.deepcopy(tiny.model), tiny.tokenizer, get_strategy("online"))
    with pytest.raises(ValueError, match="--fisher FILE or --reference FILE"):
        PolicyLearner(online, PolicyConfig(anchor=AnchorConfig("ewc", 1.0)))
    static = Learner(copy.deepcopy(tiny.model), tiny.tokenizer, get_strategy("static"))
    with pytest.raises(ValueError, match="learns nothing"):
        PolicyLearner(static, PolicyConfig(anchor=AnchorConfig("l2sp", 1.0)))
    assert AnchorConfig.parse("ewc:100:32") == AnchorConfig("ewc", 100.0, 32)
    assert str(AnchorConfig.parse("l2sp:0.01")) == "l2sp:0.01"
    for bad in ("l2sp", "sgd:1", "l2sp:-1", "ewc:1:0"):
        with pytest.raises(ValueError, match="--anchor"):
            AnchorConfig.parse(bad)
