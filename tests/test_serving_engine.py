"""Serving at full speed: a version's serving copy has its LoRA folded into plain projections,
and one engine decodes every generation in batches. Folding changes the logits by rounding
only; a batched generation gives the tokens the same generation gives alone, whoever joins or
leaves the batch around it; cancellation and stop strings end one sequence, not its batch."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from livelm.document import Document
from livelm.learner import EncodedDocument, Encoder
from livelm.learner.core import _linear_leaf_names, skip_adapter_input_cast
from livelm.learner.packing import Cancelled
from livelm.model import LoadedModel
from livelm.server import create_app
from livelm.server.engine import END, Engine, GenerationSequence, Sampling, next_tokens
from livelm.server.gate import PriorityGate
from livelm.server.inference import Codec, Generation
from livelm.server.versions import ServingVersion, serving_copy
from livelm.store import Manifest
from tests.gguf_writer import FAMILIES, save_family_model_dir
from tests.server_util import tiny_settings, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = Sampling(max_tokens=12, temperature=0.0)


def with_lora(model: torch.nn.Module, seed: int = 0) -> PeftModel:
    """`model` as a LoRA learner holds it: adapters on every linear layer but the head, with
    non-zero B (a fresh adapter's B is zero, which would fold in nothing)."""
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=_linear_leaf_names(model), task_type="CAUSAL_LM"
    )
    peft = get_peft_model(model, lora)
    randomize(peft, seed)
    return peft  # type: ignore[return-value]


def randomize(peft: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


def version(model: torch.nn.Module, number: int = 1) -> ServingVersion:
    manifest = Manifest(version=number, parent=None, kind="lora", base_model="tiny", position=0)
    return ServingVersion(manifest, model)


def tokens_of(sequence: GenerationSequence) -> list[int]:
    out: list[int] = []
    while (item := sequence.tokens.get(timeout=60)) is not END:
        assert not isinstance(item, BaseException), item
        out.append(item)
    return out


@pytest.fixture
def engine() -> Iterator[Engine]:
    gate = PriorityGate(max_inflight=2, quiet_s=0.0, max_wait_s=5.0)
    engine = Engine(gate, eos_ids=[], max_batch=4)  # no end token: lengths are max_tokens
    yield engine
    engine.close()


@pytest.fixture
def served(tiny: LoadedModel) -> ServingVersion:
    return version(serving_copy(with_lora(tiny.model), None))


# -- the merged serving copy ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # GPT-2: Conv1D, weights transposed
def test_a_merged_copy_gives_the_adapters_logits(family: str, tmp_path: Path) -> None:
    path = save_family_model_dir(FAMILIES[family], tmp_path / family)
    base = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False).eval()
    frozen = {id(p) for p in base.parameters()}
    peft = with_lora(base)
    merged = serving_copy(peft, None)

    ids = torch.tensor([[1, 5, 70, 200, 31, 9, 120, 44]])
    with torch.no_grad():
        adapted = peft(ids).logits
        folded = merged(ids).logits
        unadapted = AutoModelForCausalLM.from_pretrained(path)(ids).logits
    assert not torch.allclose(adapted, unadapted, atol=1e-3)  # the adapters matter
    assert torch.allclose(folded, adapted, atol=1e-5, rtol=1e-5)
    # A plain transformers model: no adapter layer left, every tensor LoRA leaves alone shared.
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    own = [n for n, p in merged.named_parameters() if id(p) not in frozen]
    assert own and all(n.endswith(".weight") for n in own)
    assert all(("norm" not in n and "embed" not in n and "wte" not in n) for n in own)
    assert not any(p.requires_grad for p in merged.parameters())


def test_a_bf16_merge_agrees_with_the_adapters_under_autocast_to_bf16_rounding(
    tiny: LoadedModel,
) -> None:
    """As a learner on a bf16 CPU holds it: the base stored in bf16, the adapters in fp32, run
    under autocast; the copy folds them in fp32 and stores bf16."""
    peft = with_lora(tiny.model.to(torch.bfloat16))
    skip_adapter_input_cast(peft)
    merged = serving_copy(peft, torch.bfloat16)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    exact = copy.deepcopy(peft).float()  # the same weights, computed in fp32: no rounding

    ids = torch.tensor([[1, 5, 70, 200, 31, 9, 120, 44, 7, 19, 250, 3]])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            adapted = peft(ids).logits.float()
        folded = merged(ids).logits.float()
        truth = exact(ids).logits
    scale = float(truth.abs().max())
    # bf16 keeps 8 significant bits: a relative step of 2^-8 = 0.004 per rounding.
    assert float((adapted - truth).abs().max()) < 0.03 * scale
    assert float((folded - truth).abs().max()) < 0.03 * scale
    assert float((folded - adapted).abs().max()) < 0.03 * scale
    # ... while the adapters themselves move the logits by far more than that.
    with torch.no_grad(), exact.disable_adapter():
        assert float((exact(ids).logits - truth).abs().max()) > 0.2 * scale


# -- the engine -----------------------------------------------------------------------------

PROMPTS = [
    [1, 5, 70],
    [1, 200, 31, 9, 120, 44, 7, 19, 250, 3, 17],
    [1, 99],
    [1, 45, 46, 47, 48, 49],
    [1, 12, 300, 8, 8, 8, 8, 2, 64],
    [1, 77, 78],
]


def alone(
    engine: Engine, served: ServingVersion, prompt: list[int], sampling: Sampling
) -> list[int]:
    return tokens_of(engine.submit(served, prompt, sampling))


def test_batched_generations_give_the_tokens_each_gives_alone(
    engine: Engine, served: ServingVersion
) -> None:
    lengths = [12, 5, 16, 9, 12, 3]  # some leave early, the batch shrinks around the others
    samplings = [Sampling(max_tokens=n, temperature=0.0) for n in lengths]
    expected = [alone(engine, served, p, s) for p, s in zip(PROMPTS, samplings, strict=True)]
    assert [len(e) for e in expected] == lengths
    steps = engine.steps

    # Three start together; the others join mid-run, after their elders' first tokens (the
    # engine holds at most 4: the sixth waits for a place).
    first = [engine.submit(served, p, s) for p, s in zip(PROMPTS[:3], samplings[:3], strict=True)]
    head = [[first[i].tokens.get(timeout=60) for _ in range(2)] for i in range(3)]
    later = [engine.submit(served, p, s) for p, s in zip(PROMPTS[3:], samplings[3:], strict=True)]
    got = [h + tokens_of(s) for h, s in zip(head, first, strict=True)]
    got += [tokens_of(s) for s in later]
    assert got == expected
    # They shared forward passes: fewer decode steps than tokens.
    assert engine.steps - steps < sum(lengths) - len(lengths)


@contextmanager
def held(engine: Engine) -> Iterator[None]:
    """The engine waits for a serving slot while both are held: what is submitted meanwhile
    is admitted in one go when they are released."""
    with engine.gate.serving(), engine.gate.serving():
        yield


def test_prompts_of_one_length_are_prefilled_together_and_answer_as_alone(
    engine: Engine, served: ServingVersion
) -> None:
    same = [PROMPTS[0], PROMPTS[5], PROMPTS[0]]  # three of 3 tokens, one of them twice
    lengths = [12, 1, 7]  # one done at its first token, one leaves early
    samplings = [Sampling(max_tokens=n, temperature=0.0) for n in lengths]
    expected = [alone(engine, served, p, s) for p, s in zip(same, samplings, strict=True)]
    assert expected[0][:7] == expected[2]
    prefills = engine.prefills
    with held(engine):
        sequences = [engine.submit(served, p, s) for p, s in zip(same, samplings, strict=True)]
    assert [tokens_of(s) for s in sequences] == expected
    assert engine.prefills == prefills + 1


def test_a_batch_that_loses_its_padded_rows_still_answers_as_alone(
    engine: Engine, served: ServingVersion
) -> None:
    """A short prompt leaves early beside two long ones of one length: the rows left have
    no padding of their own, and the batch makes a padding column for them."""
    short, long = Sampling(max_tokens=3, temperature=0.0), Sampling(max_tokens=12, temperature=0.0)
    cases = [(PROMPTS[0], short), (PROMPTS[1], long), ([*PROMPTS[1][:-1], 5], long)]
    expected = [alone(engine, served, p, s) for p, s in cases]
    with held(engine):
        sequences = [engine.submit(served, p, s) for p, s in cases]
    assert [tokens_of(s) for s in sequences] == expected


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "gemma3"])
def test_batching_holds_for_other_families(engine: Engine, family: str, tmp_path: Path) -> None:
    """GPT-2's learned absolute positions, Qwen2's biases, Gemma 3's sliding window (32
    tokens here, passed by the longest sequences)."""
    path = save_family_model_dir(FAMILIES[family], tmp_path / family)
    base = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False).eval()
    served = version(serving_copy(with_lora(base), None))
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in (40, 7, 25)]
    samplings = [Sampling(max_tokens=n, temperature=0.0) for n in (30, 12, 40)]
    expected = [alone(engine, served, p, s) for p, s in zip(prompts, samplings, strict=True)]
    with held(engine):
        sequences = [engine.submit(served, p, s) for p, s in zip(prompts, samplings, strict=True)]
    assert [tokens_of(s) for s in sequences] == expected


def test_two_versions_run_side_by_side(engine: Engine, tiny: LoadedModel) -> None:
    """A pinned version and the live one, each in its own batch, each as alone."""
    peft = with_lora(tiny.model, seed=1)
    older = version(serving_copy(peft, None), 1)
    randomize(peft, seed=2)
    newer = version(serving_copy(peft, None), 2)
    expected = {
        (v.number, i): alone(engine, v, p, GREEDY)
        for v in (older, newer)
        for i, p in enumerate(PROMPTS[:3])
    }
    assert expected[(1, 0)] != expected[(2, 0)]  # the versions differ
    running = {
        (v.number, i): engine.submit(v, p, GREEDY)
        for i, p in enumerate(PROMPTS[:3])
        for v in (older, newer)
    }
    assert {k: tokens_of(s) for k, s in running.items()} == expected


def test_greedy_rows_stay_greedy_beside_sampled_ones(
    engine: Engine, served: ServingVersion
) -> None:
    expected = [alone(engine, served, p, GREEDY) for p in PROMPTS[:2]]
    sampled = Sampling(max_tokens=12, temperature=1.5, top_p=0.9)
    # A nucleus so small that it holds the top token only: sampling from it is greedy.
    narrow = Sampling(max_tokens=12, temperature=1.0, top_p=1e-9)
    sequences = [
        engine.submit(served, PROMPTS[0], GREEDY),
        engine.submit(served, PROMPTS[2], sampled),
        engine.submit(served, PROMPTS[1], narrow),
    ]
    got = [tokens_of(s) for s in sequences]
    assert got[0] == expected[0] and got[2] == expected[1] and len(got[1]) == 12


def test_nucleus_sampling_keeps_the_smallest_set_holding_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = {next_tokens(logits, [Sampling(temperature=1.0, top_p=0.7)])[0] for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert next_tokens(logits, [Sampling(temperature=0.0)]) == [0]


def test_a_cancelled_sequence_leaves_its_batch_and_the_others_go_on(
    engine: Engine, served: ServingVersion
) -> None:
    long = Sampling(max_tokens=40, temperature=0.0)
    expected = [alone(engine, served, p, long) for p in PROMPTS[:3]]
    sequences = [engine.submit(served, p, long) for p in PROMPTS[:3]]
    for _ in range(3):
        sequences[1].tokens.get(timeout=60)
    sequences[1].cancel()
    cut = tokens_of(sequences[1])
    assert len(cut) < 40 - 3 - 1  # it ended within a step or two of the cancel
    assert [tokens_of(sequences[0]), tokens_of(sequences[2])] == [expected[0], expected[2]]


def test_a_request_cancelled_while_it_waits_for_a_place_ends_at_once(
    engine: Engine, served: ServingVersion
) -> None:
    long = Sampling(max_tokens=60, temperature=0.0)
    running = [engine.submit(served, p, long) for p in PROMPTS[:4]]  # a full batch
    running[0].tokens.get(timeout=60)
    waiting = engine.submit(served, PROMPTS[4], long)
    waiting.cancel()
    assert waiting.tokens.get(timeout=60) is END  # nothing generated
    assert not any(s.done for s in running)  # while the batch still runs
    for s in running:
        tokens_of(s)


def test_a_stop_string_ends_one_generation_of_a_batch(
    engine: Engine, served: ServingVersion, tiny: LoadedModel
) -> None:
    codec = Codec(tiny.tokenizer, max_tokens=128)
    full = Sampling(max_tokens=24, temperature=0.0)

    def run(prompt: list[int], sampling: Sampling) -> tuple[str, str | None, Generation]:
        generation = Generation(engine, served, codec, prompt, sampling)
        pieces = list(generation)
        return "".join(p.text for p in pieces), pieces[-1].finish_reason, generation

    texts = [run(p, full)[0] for p in PROMPTS[:2]]
    middle = range(len(texts[0]) // 2, len(texts[0]) - 3)
    stop = next(texts[0][i : i + 3] for i in middle if texts[0][i : i + 3].strip())
    stopped = Sampling(max_tokens=24, temperature=0.0, stop=(stop,))
    results: dict[int, tuple[str, str | None, Generation]] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__(0, run(PROMPTS[0], stopped))),
        threading.Thread(target=lambda: results.__setitem__(1, run(PROMPTS[1], full))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    text, reason, generation = results[0]
    assert (text, reason) == (texts[0][: texts[0].index(stop)], "stop")
    assert generation.completion_tokens < 24
    assert results[1][:2] == (texts[1], "length")


def test_the_engine_holds_one_serving_slot_while_it_has_work(
    engine: Engine, served: ServingVersion
) -> None:
    sequences = [engine.submit(served, p, Sampling(max_tokens=30, temperature=0)) for p in PROMPTS]
    sequences[0].tokens.get(timeout=60)
    assert engine.gate.active == 1  # six generations, one request to the learner
    for s in sequences:
        tokens_of(s)
    wait_for(lambda: engine.gate.active == 0)


def test_a_failed_prompt_fails_its_request_only(engine: Engine, served: ServingVersion) -> None:
    bad = engine.submit(served, [1, 10**6], GREEDY)  # a token id past the vocabulary
    good = engine.submit(served, PROMPTS[0], GREEDY)
    items: list[Any] = []
    while (item := bad.tokens.get(timeout=60)) is not END:
        items.append(item)
    assert len(items) == 1 and isinstance(items[0], Exception)
    assert len(tokens_of(good)) == GREEDY.max_tokens


# -- scores, packed in the engine ------------------------------------------------------------


def encoded(tiny: LoadedModel, texts: list[str], max_tokens: int = 64) -> list[EncodedDocument]:
    encoder = Encoder(tiny.tokenizer, max_tokens)
    return [encoder.encode(Document(t, id=str(i))) for i, t in enumerate(texts)]


SCORE_TEXTS = [
    "Markets rose after the central bank held its rate.",
    "A storm closed the coast road",
    "The council voted to build a new library beside the old park, after a long debate.",
    "Ice",
]


def fp32_losses(served: ServingVersion, docs: list[EncodedDocument]) -> list[float]:
    """Each document alone, by hand: its chunks through the model, the mean next-token NLL."""
    out = []
    with torch.inference_mode():
        for d in docs:
            total = 0.0
            for chunk in d.chunks:
                ids = torch.tensor([chunk])
                logits = served.model(input_ids=ids).logits[0, :-1]
                total += float(
                    torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                )
            out.append(total / d.tokens)
    return out


def test_concurrent_scores_share_a_micro_batch_and_score_as_alone(
    engine: Engine, served: ServingVersion, tiny: LoadedModel
) -> None:
    docs = encoded(tiny, SCORE_TEXTS)
    expected = fp32_losses(served, docs)
    results: dict[int, list[float]] = {}

    def score(i: int) -> None:
        results[i] = [s.loss for s in engine.score(served, docs[i : i + 1])]

    batches = engine.score_batches
    with held(engine):  # the four requests wait together, then go through as one
        threads = [threading.Thread(target=score, args=(i,)) for i in range(len(docs))]
        for t in threads:
            t.start()
        wait_for(lambda: len(engine._scoring) == len(docs))
    for t in threads:
        t.join(60)
    assert engine.score_batches == batches + 1
    got = [results[i][0] for i in range(len(docs))]
    assert got == pytest.approx(expected, abs=1e-4)


def test_a_long_score_request_goes_in_micro_batches_between_decode_steps(
    tiny: LoadedModel, served: ServingVersion
) -> None:
    gate = PriorityGate(max_inflight=2, quiet_s=0.0, max_wait_s=5.0)
    engine = Engine(gate, eos_ids=[], max_batch=4, score_tokens=16, row_tokens=16)
    try:
        docs = encoded(tiny, SCORE_TEXTS * 2, max_tokens=12)  # chunks of at most 12 tokens
        expected = fp32_losses(served, docs)
        sequence = engine.submit(served, PROMPTS[0], Sampling(max_tokens=100, temperature=0.0))
        sequence.tokens.get(timeout=60)
        steps, batches = engine.steps, engine.score_batches
        scores = engine.score(served, docs)
        batches = engine.score_batches - batches
        assert batches >= sum(len(c) for d in docs for c in d.chunks) // 16
        # The generation went on between the micro-batches, not after them all.
        assert not sequence.done and engine.steps - steps >= batches - 1
        assert [s.loss for s in scores] == pytest.approx(expected, abs=1e-4)
        assert [s.id for s in scores] == [d.doc.id for d in docs]
        assert len(tokens_of(sequence)) == 99
    finally:
        engine.close()


def test_a_cancelled_score_request_stops_and_the_others_are_answered(
    engine: Engine, served: ServingVersion, tiny: LoadedModel
) -> None:
    docs = encoded(tiny, SCORE_TEXTS)
    gone = threading.Event()
    errors: list[BaseException] = []
    answers: list[float] = []

    def cancelled_one() -> None:
        try:
            engine.score(served, docs, cancelled=gone.is_set)
        except Cancelled as e:
            errors.append(e)

    with held(engine):
        thread = threading.Thread(target=cancelled_one)
        thread.start()
        other = threading.Thread(
            target=lambda: answers.extend(s.loss for s in engine.score(served, docs[:1]))
        )
        other.start()
        wait_for(lambda: len(engine._scoring) == 2)
        gone.set()
    thread.join(60)
    other.join(60)
    assert len(errors) == 1 and answers == pytest.approx(fp32_losses(served, docs[:1]), abs=1e-4)


def test_a_failed_score_fails_its_request_only(
    engine: Engine, served: ServingVersion, tiny: LoadedModel
) -> None:
    bad = EncodedDocument(Document("x"), ((1, 10**6),))  # a token id past the vocabulary
    with pytest.raises(IndexError):
        engine.score(served, [bad])
    (good,) = engine.score(served, encoded(tiny, SCORE_TEXTS[:1]))
    assert good.loss == pytest.approx(
        fp32_losses(served, encoded(tiny, SCORE_TEXTS[:1]))[0], abs=1e-4
    )


# -- through the server ---------------------------------------------------------------------


def test_concurrent_requests_get_the_answers_they_get_one_by_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    prompts = ["The quick brown", "A storm", "Markets rise after the bank", "Ice", "Once upon"]
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", max_batch=3)
    with TestClient(create_app(settings)) as client:

        def complete(prompt: str) -> str:
            body = {"model": "livelm", "prompt": prompt, "max_tokens": 10, "temperature": 0}
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["text"])

        one_by_one = [complete(p) for p in prompts]
        together: dict[int, str] = {}
        threads = [
            threading.Thread(target=lambda i=i, p=p: together.__setitem__(i, complete(p)))
            for i, p in enumerate(prompts)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [together[i] for i in range(len(prompts))] == one_by_one
        # One request with every prompt: its choices run batched too.
        body = {"model": "livelm", "prompt": prompts, "max_tokens": 10, "temperature": 0}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert [c["text"] for c in r.json()["choices"]] == one_by_one
