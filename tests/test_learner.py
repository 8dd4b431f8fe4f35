"""The score-and-learn step: test-then-train, the seed rule, guards, chunking, batching."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from livelm.document import Document
from livelm.learner import Learner, get_strategy
from livelm.learner.core import EAGER_MAX_WIDTH, REWARM_STEPS
from livelm.learner.packing import pack
from livelm.model import LoadedModel

FP32 = {"precision": "fp32"}


def direct_loss(lm: LoadedModel, text: str) -> float:
    """The model's own mean cross-entropy of `text` after a boundary token."""
    ids = [lm.tokenizer.bos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    x = torch.tensor([ids])
    with torch.no_grad():
        return float(lm.model(input_ids=x, labels=x).loss)


def learner(lm: LoadedModel, name: str, **changes: object) -> Learner:
    return Learner(copy.deepcopy(lm.model), lm.tokenizer, get_strategy(name).replace(**changes))


def test_static_score_equals_the_loss_computed_directly(
    tiny: LoadedModel, news_lines: list[str]
) -> None:
    static = learner(tiny, "static", **FP32)
    report = static.step([static.encode(Document(t)) for t in news_lines])
    assert not report.updated
    for text, score in zip(news_lines, report.scores, strict=True):
        assert score.loss == pytest.approx(direct_loss(tiny, text), abs=1e-5)


def test_online_scores_a_repeated_document_lower_the_second_time(tiny: LoadedModel) -> None:
    online = learner(tiny, "online", max_docs_per_step=1, warmup_steps=0, lr=1e-2, **FP32)
    doc = online.encode(Document("Breaking: the river floods the old town overnight."))
    first = online.step([doc])
    second = online.step([doc])
    assert first.updated and second.updated
    assert second.scores[0].loss < first.scores[0].loss - 0.05


def test_the_score_is_taken_before_the_update_that_used_it(tiny: LoadedModel) -> None:
    online = learner(tiny, "online", warmup_steps=0, lr=1e-2, **FP32)
    text = "A document scored once, under the weights before its own update."
    before = direct_loss(tiny, text)
    report = online.step([online.encode(Document(text))])
    assert report.scores[0].loss == pytest.approx(before, abs=1e-5)


def test_seed_reproduces_one_hand_written_sgd_step(tiny: LoadedModel) -> None:
    text = "Plain SGD on the cross-entropy of each new document."
    seed = learner(tiny, "seed")
    assert seed.config.lr == 1e-4 and seed.config.max_docs_per_step == 1
    seed.step([seed.encode(Document(text))])

    by_hand = copy.deepcopy(tiny.model)
    ids = [
        tiny.tokenizer.bos_token_id,
        *tiny.tokenizer(text, add_special_tokens=False)["input_ids"],
    ]
    x = torch.tensor([ids])
    by_hand(input_ids=x, labels=x).loss.backward()
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= 1e-4 * p.grad

    learned = dict(seed.model.named_parameters())
    for name, p in by_hand.named_parameters():
        assert torch.allclose(learned[name], p, atol=1e-7, rtol=0), name
    # and the step did move the weights
    assert not torch.equal(learned["lm_head.weight"], tiny.model.lm_head.weight)


def test_a_non_finite_loss_never_touches_the_weights(tiny: LoadedModel) -> None:
    online = learner(tiny, "online", warmup_steps=0, **FP32)
    good = online.encode(Document("An ordinary sentence about the weather."))
    online.step([good])  # the optimizer now has state worth protecting
    poisoned = online.encode(Document("Poisoned text."))
    token = poisoned.chunks[0][1]
    embed = online.model.get_input_embeddings().weight
    with torch.no_grad():
        embed[token] = math.nan
    weights = {n: p.detach().clone() for n, p in online.model.named_parameters()}
    moments = {k: v["exp_avg"].clone() for k, v in online.optimizer.state.items()}  # type: ignore[union-attr]

    report = online.step([poisoned])

    assert not report.updated and report.skipped == "no tokens"
    assert report.rejected == ((0, "non-finite loss"),)
    assert math.isnan(report.scores[0].loss)
    for n, p in online.model.named_parameters():
        assert torch.equal(p, weights[n]) or torch.equal(p.isnan(), weights[n].isnan()), n
    for k, v in online.optimizer.state.items():  # type: ignore[union-attr]
        assert torch.equal(v["exp_avg"], moments[k])
    assert online.skipped_updates == 1


def test_a_poisoned_document_is_isolated_and_the_others_learned_as_without_it(
    tiny: LoadedModel, news_lines: list[str]
) -> None:
    """The culprit's NaN would spread to every chunk packed in its row: the others must get
    their own scores, and the update must be the one the clean documents alone give."""
    poisoned_text = "Poisoned zebra text: qxzj QXZJ 0987!"
    mixed = learner(tiny, "online", warmup_steps=0, **FP32)
    alone = learner(tiny, "online", warmup_steps=0, **FP32)
    docs = [mixed.encode(Document(t)) for t in news_lines[:4]]
    bad = mixed.encode(Document(poisoned_text))
    used = {t for d in docs for c in d.chunks for t in c}
    token = next(t for t in bad.chunks[0][1:] if t not in used)
    for one in (mixed, alone):  # the same poison in both models: only `mixed` meets it
        with torch.no_grad():
            one.model.get_input_embeddings().weight[token] = math.nan

    report = mixed.step([docs[0], docs[1], bad, docs[2], docs[3]])
    reference = alone.step(docs)

    assert report.updated and report.rejected == ((2, "non-finite loss"),)
    assert math.isnan(report.scores[2].loss)
    kept = [s for i, s in enumerate(report.scores) if i != 2]
    for a, b in zip(kept, reference.scores, strict=True):
        assert a.loss == pytest.approx(b.loss, abs=1e-5)
    assert report.loss == pytest.approx(reference.loss, abs=1e-5)
    weights = dict(alone.model.named_parameters())
    for name, p in mixed.model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, weights[name], atol=1e-6), name


def test_scores_do_not_depend_on_how_documents_are_batched(
    tiny: LoadedModel, news_lines: list[str]
) -> None:
    packed = learner(tiny, "static", token_budget=1024, max_tokens=64, **FP32)
    single = learner(tiny, "static", token_budget=64, max_tokens=64, **FP32)
    docs = [packed.encode(Document(t)) for t in news_lines]
    together = packed.score(docs)
    alone = [single.score([d])[0] for d in docs]
    for a, b in zip(together, alone, strict=True):
        assert a.tokens == b.tokens
        assert a.loss == pytest.approx(b.loss, abs=1e-5)


def test_wide_packed_rows_switch_attention_and_keep_each_document_alone(
    tiny: LoadedModel, news_lines: list[str]
) -> None:
    """Rows wider than EAGER_MAX_WIDTH run SDPA on a CPU; the block-diagonal mask still holds
    and the update is eager's (SGD: an update proportional to the gradient)."""
    texts = [" ".join([t] * 4) for t in news_lines] * 3
    wide = learner(tiny, "online", row_tokens=1024, token_budget=2048, optimizer="sgd", **FP32)
    eager = learner(
        tiny,
        "online",
        row_tokens=1024,
        token_budget=2048,
        optimizer="sgd",
        attention="eager",
        **FP32,
    )
    single = learner(tiny, "static", token_budget=128, max_tokens=128, **FP32)
    docs = [wide.encode(Document(t)) for t in texts]
    assert sum(d.tokens for d in docs) > EAGER_MAX_WIDTH
    report = wide.step(docs)
    assert wide._attention == "sdpa"
    alone = [single.score([d])[0] for d in docs]
    for a, b in zip(report.scores, alone, strict=True):
        assert a.loss == pytest.approx(b.loss, abs=1e-4)
    eager.step(docs)
    for p, q in zip(wide.params, eager.params, strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_an_over_long_document_is_split_into_chunks_not_cut(tiny: LoadedModel) -> None:
    static = learner(tiny, "static", max_tokens=16, token_budget=64, **FP32)
    text = " ".join(["The long report goes on and on about the budget."] * 6)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    encoded = static.encode(Document(text))
    assert len(encoded.chunks) == math.ceil(len(ids) / 15)
    assert all(len(c) <= 16 and c[0] == static.encoder.boundary for c in encoded.chunks)
    assert [t for c in encoded.chunks for t in c[1:]] == ids
    assert encoded.tokens == len(ids)
    (score,) = static.score([encoded])
    chunk_losses = [
        static.score([static.encode(Document(tiny.tokenizer.decode(list(c[1:]))))])[0]
        for c in encoded.chunks
    ]
    weighted = sum(s.loss * s.tokens for s in chunk_losses) / sum(s.tokens for s in chunk_losses)
    assert score.loss == pytest.approx(weighted, abs=1e-4)


def test_replayed_documents_are_learned_from_but_not_scored(tiny: LoadedModel) -> None:
    online = learner(tiny, "online", warmup_steps=0, **FP32)
    fresh = online.encode(Document("Fresh news of the day."))
    old = online.encode(Document("An older story, replayed."))
    report = online.step([fresh], extra=[old], extra_weights=[0.5])
    assert [s.id for s in report.scores] == [fresh.doc.id]
    assert report.tokens == fresh.tokens
    assert report.updated


def test_lora_on_the_top_layers_only_adapts_those(tiny: LoadedModel) -> None:
    online = learner(tiny, "online", lora_last_layers=1, **FP32)
    trainable = [n for n, p in online.model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)


def test_a_bad_config_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="lr"):
        get_strategy("online").replace(lr=-1.0)
    with pytest.raises(ValueError, match="token_budget"):
        get_strategy("online").replace(token_budget=8, max_tokens=64)
    with pytest.raises(ValueError, match="not known"):
        get_strategy("nonsense")


def test_packing_fills_rows_without_splitting_or_repeating_a_chunk() -> None:
    chunks = [tuple(range(100 + i, 100 + i + n)) for i, n in enumerate([5, 30, 2, 17, 9, 30, 1])]
    batches = list(pack(chunks, row_tokens=32, token_budget=64, pad_id=0))
    seen: list[int] = []
    for b in batches:
        assert b.tokens <= 64
        for r in range(b.ids.shape[0]):
            row = b.owner[r].tolist()
            for i in sorted(set(row) - {-1}):
                at = [t for t, o in enumerate(row) if o == i]
                assert at == list(range(at[0], at[0] + len(chunks[i])))  # contiguous, whole
                assert b.ids[r, at].tolist() == list(chunks[i])
                assert b.positions[r, at].tolist() == list(range(len(chunks[i])))
                seen.append(i)
    assert sorted(seen) == list(range(len(chunks)))
    assert sum(b.ids.shape[0] for b in batches) < len(chunks)  # rows really hold several chunks


def test_weight_decay_shrinks_the_adapters_toward_the_base(tiny: LoadedModel) -> None:
    """`--weight-decay`: AdamW's decoupled decay holds the adapters' weights nearer zero."""
    text = "The same story, learned again and again, with and without weight decay."

    def adapter_norm(weight_decay: float) -> float:
        online = learner(tiny, "online", warmup_steps=0, lr=1e-2, weight_decay=weight_decay)
        doc = online.encode(Document(text))
        for _ in range(5):
            assert online.step([doc]).updated
        return sum(float(p.detach().float().norm()) for p in online.params)

    assert adapter_norm(20.0) < 0.9 * adapter_norm(0.0)


def test_a_rewarm_ramps_the_lr_even_where_the_learner_starts_without_a_warm_up(
    tiny: LoadedModel,
) -> None:
    online = learner(tiny, "online", warmup_steps=0, lr_decay_steps=None, **FP32)
    doc = online.encode(Document("The first steps of a stream run at the peak learning rate."))
    assert online.current_lr() == online.config.lr
    online.step([doc])
    online.rewarm()  # a drift: the adapters now hold what was learned
    ramp = [online.current_lr()]
    for _ in range(REWARM_STEPS):
        online.step([doc])
        ramp.append(online.current_lr())
    assert ramp[0] == pytest.approx(online.config.lr / REWARM_STEPS)
    assert ramp == sorted(ramp) and ramp[-2] == ramp[-1] == online.config.lr
    warmed = learner(tiny, "online", warmup_steps=4, lr_decay_steps=None, **FP32)
    warmed.rewarm()  # a learner with its own warm-up re-warms over it
    assert warmed.current_lr() == pytest.approx(warmed.config.lr / 4)


def test_a_decaying_lr_falls_with_the_steps_to_its_floor_and_a_rewarm_restarts_it(
    tiny: LoadedModel,
) -> None:
    """`--lr-decay-steps`: lr x 1/sqrt(1 + t/T) over the steps t, never under the floor."""
    online = learner(tiny, "online", warmup_steps=0, lr_decay_steps=2, lr_floor=0.5, **FP32)
    doc = online.encode(Document("A long stream of one source wants a longer memory."))
    peak = online.config.lr
    used = [online.step([doc]).lr for _ in range(8)]
    expected = [peak * max(0.5, (1 + t / 2) ** -0.5) for t in range(8)]
    assert used == pytest.approx(expected)
    assert used[0] == peak and used[-1] == used[-2] == peak * 0.5  # the floor
    online.rewarm()  # a drift: the ramp, then the fall again from the peak
    ramp = [online.step([doc]).lr for _ in range(3)]
    restarted = [peak * (t + 1) / REWARM_STEPS * max(0.5, (1 + t / 2) ** -0.5) for t in range(3)]
    assert ramp == pytest.approx(restarted)
