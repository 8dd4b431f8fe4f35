"""Continuous batching: one thread decodes every running generation, one token per step.

Requests that arrive together share forward passes, as vLLM's do: a decode step runs the model
once over a batch of active sequences of the same version, one new token each. New sequences
join between steps: their prompts are prefilled (prompts of one length together, unpadded),
then their key/value caches are merged into the batch's. Finished sequences (an end token,
`max_tokens`, or cancelled: a stop string seen, the client gone) leave between steps too, so a
short request never waits for a long one. At most `max_batch` sequences run at once
(`--max-batch`); the others wait in arrival order.

The batch's cache is one `DynamicCache` whose per-layer key/value tensors are
(batch, kv_heads, width, head_dim), each sequence left-padded to the batch's width with zeros;
a (batch, width) attention mask marks the real positions, and each sequence's position ids
count only its own tokens, so a sequence sees what it would see alone: its logits agree with
an unbatched run's to float rounding (the matmuls' shapes differ) and its greedy text is the
same (tests/test_serving_engine.py). The columns no sequence needs are trimmed as sequences
leave. The cache holds 2 x layers x kv_heads x head_dim values a token (23 KB in bf16 for
SmolLM2-135M) for each row, up to the widest.

Why not transformers' own continuous batching (`generation/continuous_batching`): it is built
around a paged cache and a scheduler for accelerators, with one model per manager; here each
version is its own model, each sequence streams its tokens to its request's thread as they come,
and a CPU gains nothing from paging. The loop below is a model forward, a sample and a queue put
per step, with no more Python around it than transformers' `generate` has.

Scores (`/v1/score`) run in the same thread, packed together: the documents of every score
request waiting are packed into micro-batches of at most `score_tokens` tokens, as the learner
packs its own (`livelm.learner.packing`), whichever request they came from, one micro-batch
between two decode steps. So concurrent score requests share forward passes, a long one delays
a running generation by one micro-batch at a time and never the whole request, and every
model call of the process's requests runs on one thread, whose thread pool is the only one
serving them (a pool per request thread, each spinning after its work, slowed the others).

The engine holds a serving slot of the gate while it has work (sequences running or waiting,
scores waiting), so the learner treats it as one request: it yields to it as it yields to any
request.

>>> # engine = Engine(gate, eos_ids=[2], max_batch=8)
>>> # sequence = engine.submit(version, prompt_ids, Sampling(max_tokens=16, temperature=0))
>>> # tokens come through `sequence.tokens` (ints, then an exception where it failed, then END)
>>> # scores = engine.score(version, encoded_docs)  # a DocScore each, in order
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from livelm.learner import DocScore, EncodedDocument
from livelm.learner.packing import Cancelled, count_nothing, never_cancelled, pack, token_nll
from livelm.model.device import in_fresh_thread
from livelm.server.gate import PriorityGate
from livelm.server.versions import ServingVersion

log = logging.getLogger(__name__)

# A temperature below this decodes greedily, as vLLM's do: logits divided by a subnormal
# temperature (1e-39) overflow to inf, and sampling from those fails; none of it differs from
# greedy decoding in any text.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0  # below GREEDY_BELOW (0): greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # applied by the reader (`inference.Generation`)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


END = object()  # the last item of a sequence's token queue
# Prompt tokens prefilled in one forward at most (prompts of one length go through together).
PREFILL_TOKENS = 2048


class GenerationSequence:
    """One request's generation inside the engine: its tokens arrive in `tokens` (ints, then
    an exception where it failed, then `END`)."""

    def __init__(
        self,
        version: ServingVersion,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        on_tokens: Callable[[int], None],
    ) -> None:
        if not prompt_ids:
            raise ValueError("a generation needs at least one prompt token")
        if sampling.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {sampling.max_tokens}")
        self.version = version
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.on_tokens = on_tokens
        self.tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.generated = 0
        self.done = False  # its last item is in `tokens`
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop at the next step (a stop string seen, the client gone)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class ScoreJob:
    """One request's documents to score inside the engine (`Engine.score`)."""

    def __init__(
        self,
        version: ServingVersion,
        docs: Sequence[EncodedDocument],
        cancelled: Callable[[], bool],
        on_tokens: Callable[[int], None],
    ) -> None:
        self.version = version
        self.docs = list(docs)
        # (document index, chunk) in order; `taken` of them are scored or in a micro-batch.
        self.chunks = [(i, c) for i, d in enumerate(self.docs) for c in d.chunks]
        self.taken = 0
        self.sums = [0.0] * len(self.docs)  # each document's summed NLL so far
        self.cancelled = cancelled
        self.on_tokens = on_tokens
        self.scores: list[DocScore] | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def finish(self, error: BaseException | None = None) -> None:
        if error is None:
            self.scores = [
                DocScore(
                    id=d.doc.id,
                    loss=self.sums[i] / d.tokens if d.tokens else math.nan,
                    tokens=d.tokens,
                )
                for i, d in enumerate(self.docs)
            ]
        self.error = error
        self.finished.set()


@dataclass
class _Prefilled:
    """Sequences whose prompts (all of one length) went through the model together."""

    sequences: list[GenerationSequence]
    cache: DynamicCache  # per layer (len(sequences), kv_heads, prompt length, head_dim)
    firsts: list[int]  # each one's first generated token

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()


class _Batch:
    """The running sequences of one version and their left-padded cache.

    A batch of more than one row always has a masked position: where its rows are all of one
    length, a padding column (a masked zero key) is added on their left. transformers then
    builds the attention mask rather than skip it, and SDPA attends from each key/value head
    for its group of query heads (`pack_gqa`); unmasked, it repeats the keys and values for
    every query head (`enable_gqa`), 1.3x (80 tokens) to 1.8x (300 tokens) slower at 8 rows
    on a CPU. One row alone runs unmasked, as `generate` runs it.
    """

    def __init__(self, version: ServingVersion) -> None:
        self.version = version
        self.sequences: list[GenerationSequence] = []
        self.cache = DynamicCache()
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (batch, width): 1 at real tokens
        self.positions = torch.zeros(0, dtype=torch.long)  # (batch,): each row's next position
        self.last = torch.zeros(0, dtype=torch.long)  # (batch,): each row's newest token

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def masked(self) -> bool:
        """Whether the mask goes to the model (some row is padded)."""
        return len(self.sequences) > 1

    def join(self, parts: list[_Prefilled]) -> None:
        """Add prefilled sequences, left-padding everyone to the widest."""
        device = self.version.device
        rows = len(self.sequences) + sum(len(p.sequences) for p in parts)
        widths = [p.length for p in parts] + ([self.width] if self.sequences else [])
        width = max(widths)
        uniform = all(w == width for w in widths) and not bool((self.mask == 0).any())
        if rows > 1 and uniform:
            width += 1  # the padding column (see the class docstring)
        held = [(_key_values(self.cache), self.width)] if self.sequences else []
        held += [(_key_values(p.cache), p.length) for p in parts]
        self.cache = _cache_of(
            [
                (
                    torch.cat([_pad_left(kv[i][0], width - n) for kv, n in held]),
                    torch.cat([_pad_left(kv[i][1], width - n) for kv, n in held]),
                )
                for i in range(len(held[0][0]))
            ]
        )
        masks = [F.pad(self.mask, (width - self.width, 0))] if self.sequences else []
        for p in parts:
            ones = torch.ones(len(p.sequences), p.length, dtype=torch.long, device=device)
            masks.append(F.pad(ones, (width - p.length, 0)))
        self.mask = torch.cat(masks)
        lengths = [p.length for p in parts for _ in p.sequences]
        firsts = [t for p in parts for t in p.firsts]
        self.positions = torch.cat([self.positions.to(device), _longs(lengths, device)])
        self.last = torch.cat([self.last.to(device), _longs(firsts, device)])
        self.sequences.extend(s for p in parts for s in p.sequences)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`, and trim the columns they all leave padding."""
        self.sequences = [self.sequences[r] for r in rows]
        if not rows:
            return
        index = _longs(rows, self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(0).long().argmax())  # the first column some row uses
        pad = 0
        if len(rows) > 1 and bool(mask[:, start:].all()):  # keep a padding column, or add one
            start, pad = (start - 1, 0) if start > 0 else (0, 1)
        self.mask = F.pad(mask[:, start:], (pad, 0))
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)
        self.cache = _cache_of(
            [
                (
                    _pad_left(k.index_select(0, index)[:, :, start:], pad),
                    _pad_left(v.index_select(0, index)[:, :, start:], pad),
                )
                for k, v in _key_values(self.cache)
            ]
        )


def _longs(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache holding these (keys, values) per layer, as they are (no copy)."""
    cache = DynamicCache()
    for keys, values in layers:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def _key_values(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values): (batch, kv_heads, length, head_dim)."""
    out = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"the engine batches full-attention caches, not {type(layer).__name__}")
        out.append((layer.keys, layer.values))
    return out


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch, heads, n + length, dim), zeros first."""
    return t if n == 0 else F.pad(t, (0, 0, n, 0))


def next_tokens(logits: torch.Tensor, samplings: Sequence[Sampling]) -> list[int]:
    """Each row's next token: the argmax for greedy rows; for the others a draw from the
    softmax of logits / temperature, cut to the smallest set of tokens holding `top_p` of the
    probability (nucleus sampling, as transformers' `top_p`). `logits`: (batch, vocab)."""
    tokens = logits.argmax(-1)
    rows = [i for i, s in enumerate(samplings) if not s.greedy]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        temperature = torch.tensor([samplings[i].temperature for i in rows], device=logits.device)
        probs = torch.softmax(logits.index_select(0, index).float() / temperature[:, None], -1)
        top_p = [samplings[i].top_p for i in rows]
        if min(top_p) < 1.0:
            ordered, order = probs.sort(-1, descending=True)
            before = ordered.cumsum(-1) - ordered  # probability of the tokens ranked above
            limit = torch.tensor(top_p, device=logits.device)[:, None]
            ordered = ordered.masked_fill(before >= limit, 0.0)  # the first token always stays
            drawn = order.gather(1, torch.multinomial(ordered, 1))
        else:
            drawn = torch.multinomial(probs, 1)
        tokens[index] = drawn.squeeze(1)
    out: list[int] = tokens.tolist()  # the sync point of the step
    return out


class Engine:
    """The process's generation engine: one thread, at most `max_batch` sequences at once
    (those past it wait their turn, first come first served)."""

    def __init__(
        self,
        gate: PriorityGate,
        eos_ids: Sequence[int],
        max_batch: int,
        *,
        pad_id: int = 0,
        score_tokens: int = 512,
        row_tokens: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, not {max_batch}")
        self.gate = gate
        self.pad_id = pad_id
        self.score_tokens = score_tokens  # tokens a scoring micro-batch at most
        self.row_tokens = row_tokens
        self.eos_ids = tuple(eos_ids)
        self._eos = frozenset(eos_ids)
        self.max_batch = max_batch
        self.steps = 0  # decode steps run, ever (each one forward over a batch)
        self.prefills = 0  # prompt forwards run, ever (prompts of one length share one)
        self.score_batches = 0  # scoring micro-batches run, ever
        self._scoring: collections.deque[ScoreJob] = collections.deque()
        self._pending: collections.deque[GenerationSequence] = collections.deque()
        self._batches: dict[ServingVersion, _Batch] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="livelm-engine", daemon=True)
        self._thread.start()

    def submit(
        self,
        version: ServingVersion,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        on_tokens: Callable[[int], None] = count_nothing,
    ) -> GenerationSequence:
        sequence = GenerationSequence(version, prompt_ids, sampling, on_tokens)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(sequence)
            self._cond.notify_all()
        return sequence

    def score(
        self,
        version: ServingVersion,
        docs: Sequence[EncodedDocument],
        *,
        cancelled: Callable[[], bool] = never_cancelled,
        on_tokens: Callable[[int], None] = count_nothing,
    ) -> list[DocScore]:
        """Each document's mean NLL (nats per predicted token) under `version`, packed with
        the other requests' documents. `cancelled()` is asked before each micro-batch: once
        true, `Cancelled` is raised here. `on_tokens` counts the tokens scored."""
        job = ScoreJob(version, docs, cancelled, on_tokens)
        if not job.chunks:
            job.finish()
        else:
            with self._cond:
                if self._closed:
                    raise RuntimeError("the server is shutting down")
                self._scoring.append(job)
                self._cond.notify_all()
            job.finished.wait()
        if job.error is not None:
            raise job.error
        assert job.scores is not None
        return job.scores

    def _running(self) -> int:
        """Sequences in a batch now (the engine thread's view)."""
        return sum(len(b.sequences) for b in self._batches.values())

    def close(self) -> None:
        """Stop the thread; sequences still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._scoring and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        break
                # One serving slot for as long as there is work: to the learner, a running
                # batch is one request. The burst runs on a thread of its own, which ends with
                # it (see `in_fresh_thread`: an idle engine keeps no OpenMP pool alive).
                with self.gate.serving():
                    in_fresh_thread(self._burst)
        except BaseException as e:
            log.exception("the generation engine stopped")
            self._fail_all(e)
            raise
        self._fail_all(RuntimeError("the server is shutting down"))

    def _burst(self) -> None:
        with torch.inference_mode():
            while self._step():
                pass

    def _step(self) -> bool:
        """Admit waiting sequences, score one micro-batch, then one decode step per version;
        whether work is left."""
        self._admit()
        self._score_some()
        for batch in list(self._batches.values()):
            try:
                self._decode(batch)
            except Exception as e:  # the batch's requests fail; the engine goes on
                log.exception("a decode step failed")
                for sequence in batch.sequences:
                    _finish(sequence, e)
                self._batches.pop(batch.version, None)
        with self._cond:
            return bool(self._batches or self._pending or self._scoring) and not self._closed

    def _score_some(self) -> None:
        """One scoring micro-batch: chunks of the waiting score requests of the oldest one's
        version, in arrival order, up to `score_tokens` tokens (one chunk at least)."""
        with self._cond:
            jobs = list(self._scoring)
        gone = [j for j in jobs if j.cancelled()]
        self._end_jobs(gone, Cancelled())
        jobs = [j for j in jobs if j not in gone]
        if not jobs:
            return
        version = jobs[0].version
        taken: list[tuple[ScoreJob, int, tuple[int, ...]]] = []
        tokens = 0
        for job in (j for j in jobs if j.version is version):
            while job.taken < len(job.chunks):
                doc, chunk = job.chunks[job.taken]
                if taken and tokens + len(chunk) > self.score_tokens:
                    break
                taken.append((job, doc, chunk))
                tokens += len(chunk)
                job.taken += 1
            if job.taken < len(job.chunks):  # the micro-batch is full
                break
        touched = list(dict.fromkeys(job for job, _, _ in taken))
        try:
            sums = torch.zeros(len(taken), dtype=torch.float64)
            chunks = [chunk for _, _, chunk in taken]
            for batch in pack(chunks, self.row_tokens, self.score_tokens, self.pad_id):
                nll, owner = token_nll(version.model, batch, version.device)
                sums.index_add_(0, owner.cpu(), nll.double().cpu())
                self.score_batches += 1
        except Exception as e:  # these requests fail; the engine goes on
            log.exception("a scoring micro-batch failed")
            self._end_jobs(touched, e)
            return
        scored: dict[ScoreJob, int] = {}
        for (job, doc, chunk), total in zip(taken, sums.tolist(), strict=True):
            job.sums[doc] += total
            scored[job] = scored.get(job, 0) + len(chunk) - 1  # a chunk predicts all but its first
        for job, count in scored.items():
            job.on_tokens(count)
        self._end_jobs([j for j in touched if j.taken == len(j.chunks)], None)

    def _end_jobs(self, jobs: list[ScoreJob], error: BaseException | None) -> None:
        if not jobs:
            return
        with self._cond:
            self._scoring = collections.deque(j for j in self._scoring if j not in jobs)
        for job in jobs:
            job.finish(error)

    def _admit(self) -> None:
        """Prefill the waiting sequences there is room for and add them to their batches."""
        room = self.max_batch - self._running()
        admitted: list[GenerationSequence] = []
        with self._cond:
            # Those cancelled while they waited end now, not when a place frees up.
            gone = [s for s in self._pending if s.cancelled]
            if gone:
                self._pending = collections.deque(s for s in self._pending if not s.cancelled)
            while room > len(admitted) and self._pending:
                admitted.append(self._pending.popleft())
        for sequence in gone:
            _finish(sequence)
        groups: dict[tuple[ServingVersion, int], list[GenerationSequence]] = {}
        for sequence in admitted:
            groups.setdefault((sequence.version, len(sequence.prompt_ids)), []).append(sequence)
        joining: dict[ServingVersion, list[_Prefilled]] = {}
        for (version, length), sequences in groups.items():
            # Prompts of one length go through together (no padding needed), a bounded number
            # of tokens at a time.
            rows = max(1, PREFILL_TOKENS // length)
            for start in range(0, len(sequences), rows):
                joining.setdefault(version, []).extend(
                    self._prefill(version, sequences[start : start + rows])
                )
        for version, parts in joining.items():
            if not parts:
                continue
            batch = self._batches.get(version)
            if batch is None:
                batch = self._batches[version] = _Batch(version)
            try:
                batch.join(parts)
            except Exception as e:  # out of memory, say: this version's requests fail
                log.exception("a batch could not take new sequences")
                for sequence in [*batch.sequences, *(s for p in parts for s in p.sequences)]:
                    if not sequence.done:
                        _finish(sequence, e)
                del self._batches[version]
                continue
            firsts = [(s, t) for p in parts for s, t in zip(p.sequences, p.firsts, strict=True)]
            # Some may be done at their first token (max_tokens 1, an end token).
            if any([self._emit(s, t) for s, t in firsts]):
                batch.keep([r for r, s in enumerate(batch.sequences) if not s.done])
                if not batch.sequences:
                    del self._batches[version]

    def _prefill(
        self, version: ServingVersion, sequences: list[GenerationSequence]
    ) -> list[_Prefilled]:
        """The prompts (all of one length) through the model together, as `generate` runs
        one; where that fails, each alone, so that only a prompt that fails alone fails."""
        try:
            ids = torch.tensor([s.prompt_ids for s in sequences], device=version.device)
            cache = DynamicCache()  # full layers only: a batch merges them column by column
            # The last position by index, not `logits_to_keep=1`: that slice of a longer
            # prompt's hidden states is a strided view, which torch's matmul sends down its
            # batched path, copying the whole output head first (SmolLM2: 56 MB, 50-70 ms a
            # prefill on one thread); an index gives a fresh (rows, 1, hidden) tensor.
            last = torch.tensor([ids.shape[1] - 1], device=version.device)
            logits = version.model(
                input_ids=ids, cache=cache, use_cache=True, logits_to_keep=last
            ).logits  # (rows, 1, vocab)
            firsts = next_tokens(logits[:, -1], [s.sampling for s in sequences])
            self.prefills += 1
            return [_Prefilled(sequences, cache, firsts)]
        except Exception as e:
            if len(sequences) > 1:
                return [p for s in sequences for p in self._prefill(version, [s])]
            log.exception("a prefill failed")
            _finish(sequences[0], e)
            return []

    def _decode(self, batch: _Batch) -> None:
        """One token for every sequence of `batch`, then the finished ones leave."""
        live = [r for r, s in enumerate(batch.sequences) if not s.cancelled]
        if len(live) < len(batch.sequences):
            for sequence in batch.sequences:
                if sequence.cancelled:
                    _finish(sequence)
            batch.keep(live)
        if not batch.sequences:
            del self._batches[batch.version]
            return
        rows = len(batch.sequences)
        ones = torch.ones(rows, 1, dtype=torch.long, device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        logits = batch.version.model(
            input_ids=batch.last[:, None],
            attention_mask=batch.mask if batch.masked else None,
            position_ids=batch.positions[:, None],
            cache=batch.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits  # (rows, 1, vocab)
        tokens = next_tokens(logits[:, -1], [s.sampling for s in batch.sequences])
        self.steps += 1
        batch.positions = batch.positions + 1
        batch.last = torch.tensor(tokens, dtype=torch.long, device=batch.last.device)
        staying = [r for r in range(rows) if not self._emit(batch.sequences[r], tokens[r])]
        if len(staying) < rows:
            batch.keep(staying)
            if not staying:
                del self._batches[batch.version]

    def _emit(self, sequence: GenerationSequence, token: int) -> bool:
        """Hand `token` to its request; whether the sequence is done."""
        sequence.tokens.put(token)
        sequence.generated += 1
        sequence.on_tokens(1)
        done = (
            token in self._eos
            or sequence.generated >= sequence.sampling.max_tokens
            or sequence.cancelled
        )
        if done:
            _finish(sequence)
        return done

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            scoring = list(self._scoring)
            self._scoring.clear()
        for job in scoring:
            job.finish(error)
        for batch in self._batches.values():
            waiting.extend(batch.sequences)
        self._batches.clear()
        for sequence in waiting:
            _finish(sequence, error)


def _finish(sequence: GenerationSequence, error: BaseException | None = None) -> None:
    sequence.done = True
    if error is not None:
        sequence.tokens.put(error)
    sequence.tokens.put(END)
