"""Rank a reader's candidates from their history: the signals each method needs, the scores
and their fusion, and each candidate's `why`.

A ranking runs in two parts. `signals` does the model and TF-IDF work a method needs, once:
each candidate's NLL alone and after the joint history (PMI), and the per-item similarity
matrices (candidates x history items) of pooled hidden states and of TF-IDF vectors. `rank`
turns signals into an order, for any method whose parts the signals hold; the benchmark ranks
every method from one `signals` call. `recommend` does both, with the `why` of the top
candidates.

A candidate's `why` lists the history items that raised its score most, largest first, with
the amount: for `pmi` the item's own PMI, `log p(c | item) - log p(c)` (each of the newest
`explain_history` items as the only prefix; summed over the candidate's tokens, or per token
for `pmi-mean`); for `embed` and `tfidf` the item's cosine similarity. Only items that raised
it (a positive amount) are listed; a fused method lists each part's. Ties in a score keep the
candidates' order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from livelm.document import Document
from livelm.recommend.config import (
    DEFAULT_METHOD,
    Method,
    RecommendError,
    RecommendLimits,
    parse_method,
)
from livelm.recommend.scoring import Scorer

SEPARATOR = "\n\n"  # between history items in the PMI prefix, and after the last one


@dataclass(frozen=True)
class Evidence:
    """A history item that raised a candidate's score, by `value`, under `method`."""

    history: int  # its index in the history
    id: str
    value: float
    method: str


@dataclass(frozen=True)
class Ranked:
    """A ranked candidate: `index` in the candidates given, `rank` from 1, its score under the
    method (for a fusion, the reciprocal-rank sum) and each part's score."""

    index: int
    id: str
    rank: int
    score: float
    parts: dict[str, float]
    why: tuple[Evidence, ...] = ()


@dataclass
class Signals:
    """What the methods rank from; a field is None where no method asked for it."""

    history: Sequence[Document]
    candidates: Sequence[Document]
    nll: np.ndarray | None = None  # (C,) each candidate's NLL alone, nats
    nll_given_history: np.ndarray | None = None  # (C,) after the joint history
    tokens: np.ndarray | None = None  # (C,) candidate tokens scored
    embed: np.ndarray | None = None  # (C, H) cosine similarities of pooled hidden states
    tfidf: np.ndarray | None = None  # (C, H) cosine similarities of TF-IDF vectors

    def part(self, name: str, seed: int = 0) -> np.ndarray:
        """The candidates' scores under one base method (higher is better)."""
        if name in ("pmi", "pmi-mean"):
            assert self.nll is not None and self.nll_given_history is not None
            pmi: np.ndarray = self.nll - self.nll_given_history
            if name == "pmi-mean":
                assert self.tokens is not None
                pmi = pmi / np.maximum(self.tokens, 1)
            return pmi
        if name in ("embed", "tfidf"):
            sims = self.embed if name == "embed" else self.tfidf
            assert sims is not None, f"signals computed without {name}"
            mean: np.ndarray = sims.mean(axis=1)
            return mean
        if name == "random":
            return np.array([_unit(f"{seed}:{c.id}") for c in self.candidates])
        raise ValueError(f"no base method {name!r}")


def _unit(key: str) -> float:
    """A number in [0, 1) from a key: the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def check(
    history: Sequence[Document], candidates: Sequence[Document], limits: RecommendLimits
) -> None:
    """The item counts against `limits` (the token limits are checked once tokenized)."""
    if not history:
        raise RecommendError("the history is empty: give at least one item", "history")
    if not candidates:
        raise RecommendError("there are no candidates to rank", "candidates")
    if len(history) > limits.max_history:
        raise RecommendError(
            f"{len(history)} history items; the limit is {limits.max_history}", "history"
        )
    if len(candidates) > limits.max_candidates:
        raise RecommendError(
            f"{len(candidates)} candidates; the limit is {limits.max_candidates}", "candidates"
        )


def _tfidf(
    history: Sequence[Document], candidates: Sequence[Document], corpus: Sequence[str]
) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [d.text for d in history] + [d.text for d in candidates]
    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    try:
        vectorizer.fit([*corpus, *texts])
    except ValueError:  # no word left after stop words: nothing is similar to anything
        return np.zeros((len(candidates), len(history)))
    h = vectorizer.transform([d.text for d in history])
    c = vectorizer.transform([d.text for d in candidates])
    return np.asarray((c @ h.T).todense(), dtype=np.float64)  # rows are L2-normalized


class Ranker:
    """Ranks candidates for a history with one model (a `Scorer`) or none (TF-IDF, random).

    >>> from livelm.document import Document
    >>> ranker = Ranker(None)
    >>> history = [Document("Storm floods the coast", id="h")]
    >>> candidates = [Document("Markets rally", id="a"), Document("Coast floods again", id="b")]
    >>> [(r.id, r.rank) for r in ranker.recommend(history, candidates, method="tfidf")]
    [('b', 1), ('a', 2)]
    """

    def __init__(self, scorer: Scorer | None, limits: RecommendLimits | None = None) -> None:
        self.scorer = scorer
        self.limits = limits or RecommendLimits()
        self._tokens: dict[str, list[int]] = {}  # text -> its ids, cut (a ranking's texts)

    # -- tokens ---------------------------------------------------------------------------------

    def item_ids(self, text: str) -> list[int]:
        """A text's token ids, cut to `item_tokens`."""
        assert self.scorer is not None
        ids = self._tokens.get(text)
        if ids is None:
            ids = self._tokens[text] = self.scorer.tokenize(text)[: self.limits.item_tokens]
        return ids

    def _ids(self, docs: Sequence[Document], where: str) -> list[list[int]]:
        out = []
        for i, doc in enumerate(docs):
            ids = self.item_ids(doc.text)
            if not ids:
                raise RecommendError(f"{where}.{i} has no tokens: send some text", f"{where}.{i}")
            out.append(ids)
        return out

    def prefix(self, items: Sequence[Sequence[int]]) -> list[int]:
        """The PMI prefix: the boundary token, then each item followed by a blank line."""
        assert self.scorer is not None
        separator = self.scorer.tokenize(SEPARATOR)
        ids = [self.scorer.boundary]
        for item in items:
            ids += [*item, *separator]
        return ids

    # -- signals --------------------------------------------------------------------------------

    def check(
        self, history: Sequence[Document], candidates: Sequence[Document], method: Method
    ) -> None:
        """Everything a ranking can refuse before any model work: the item counts, and (with a
        model) texts without tokens and a history past `max_history_tokens`. It tokenizes the
        texts once; `signals` reuses them."""
        limits = self.limits
        check(history, candidates, limits)
        if not method.needs_model:
            return
        if self.scorer is None:
            raise ValueError(f"method {method.name!r} needs a model")
        h_ids = self._ids(history, "history")
        self._ids(candidates, "candidates")
        if method.needs_pmi and len(prefix := self.prefix(h_ids)) > limits.max_history_tokens:
            raise RecommendError(
                f"the history holds {len(prefix)} tokens (each item cut to "
                f"{limits.item_tokens}); the limit is {limits.max_history_tokens}: send fewer "
                "or shorter items",
                "history",
                too_large=True,
            )

    def signals(
        self,
        history: Sequence[Document],
        candidates: Sequence[Document],
        method: Method,
        corpus: Sequence[str] = (),
    ) -> Signals:
        """The model and TF-IDF work `method` needs (after `check`); `corpus` adds documents to
        TF-IDF's vocabulary and document frequencies (the history and candidates are always in
        it)."""
        self.check(history, candidates, method)
        out = Signals(history, candidates)
        if "tfidf" in method.parts:
            out.tfidf = _tfidf(history, candidates, corpus)
        if not method.needs_model:
            return out
        assert self.scorer is not None
        h_ids = self._ids(history, "history")
        c_ids = self._ids(candidates, "candidates")
        prefix = self.prefix(h_ids) if method.needs_pmi else []
        stats = self.scorer.stats([*c_ids, *h_ids] if "embed" in method.parts else c_ids)
        out.nll = np.array([s.nll for s in stats[: len(c_ids)]])
        out.tokens = np.array([s.tokens for s in stats[: len(c_ids)]], dtype=np.float64)
        if "embed" in method.parts:
            vectors = np.stack([s.embedding.numpy() for s in stats])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out.embed = vectors[: len(c_ids)] @ vectors[len(c_ids) :].T
        if method.needs_pmi:
            out.nll_given_history = np.array(self.scorer.conditional(prefix, c_ids))
        return out

    # -- ranking --------------------------------------------------------------------------------

    def rank(self, signals: Signals, method: Method, seed: int = 0) -> list[Ranked]:
        """Every candidate, best first (no `why`; see `explain`)."""
        scores = {p: signals.part(p, seed) for p in method.parts}
        if method.fused:
            total = np.zeros(len(signals.candidates))
            for part in scores.values():
                total += 1.0 / (self.limits.rrf_k + _ranks(part))
        else:
            total = scores[method.parts[0]]
        order = _order(total)
        return [
            Ranked(
                index=int(i),
                id=signals.candidates[i].id,
                rank=r + 1,
                score=float(total[i]),
                parts={p: float(s[i]) for p, s in scores.items()},
            )
            for r, i in enumerate(order)
        ]

    def explain(self, signals: Signals, method: Method, ranked: Sequence[Ranked]) -> list[Ranked]:
        """`ranked` with each one's `why` (see the module docstring)."""
        limits = self.limits
        history = signals.history
        candidates = [signals.candidates[r.index] for r in ranked]
        per_part: dict[str, np.ndarray] = {}  # (len(ranked), H), nan where not looked at
        rows = [r.index for r in ranked]
        for part in method.parts:
            if part in ("embed", "tfidf"):
                sims = signals.embed if part == "embed" else signals.tfidf
                assert sims is not None
                per_part[part] = sims[rows]
            elif part in ("pmi", "pmi-mean") and ranked:
                assert self.scorer is not None and signals.nll is not None
                assert signals.tokens is not None
                newest = range(max(0, len(history) - limits.explain_history), len(history))
                c_ids = self._ids(candidates, "candidates")
                values = np.full((len(ranked), len(history)), np.nan)
                alone = signals.nll[rows]
                for h in newest:
                    prefix = self.prefix([self.item_ids(history[h].text)])
                    given = np.array(self.scorer.conditional(prefix, c_ids))
                    pmi = alone - given
                    if part == "pmi-mean":
                        pmi = pmi / np.maximum(signals.tokens[rows], 1)
                    values[:, h] = pmi
                per_part[part] = values
        out = []
        for k, r in enumerate(ranked):
            why: list[Evidence] = []
            for part, values in per_part.items():
                row = np.nan_to_num(values[k], nan=-np.inf)
                top = [h for h in _order(row)[: limits.why_items] if row[h] > 0]
                why += [Evidence(int(h), history[h].id, float(row[h]), part) for h in top]
            out.append(Ranked(r.index, r.id, r.rank, r.score, r.parts, tuple(why)))
        return out

    def recommend(
        self,
        history: Sequence[Document],
        candidates: Sequence[Document],
        *,
        method: str | Method = DEFAULT_METHOD,
        top_k: int | None = None,
        explain: bool = True,
        corpus: Sequence[str] = (),
        seed: int = 0,
    ) -> list[Ranked]:
        """The candidates ranked for `history`, best first: the top `top_k` (all by default),
        the first `max_explained` of them with their `why` when `explain`."""
        parsed = parse_method(method) if isinstance(method, str) else method
        if top_k is not None and top_k < 1:
            raise RecommendError(f"top_k must be at least 1, not {top_k}", "top_k")
        signals = self.signals(history, candidates, parsed, corpus)
        ranked = self.rank(signals, parsed, seed)[:top_k]
        if not explain:
            return ranked
        head = self.explain(signals, parsed, ranked[: self.limits.max_explained])
        return head + ranked[len(head) :]


def _order(scores: np.ndarray) -> np.ndarray:
    """Indices best first; ties keep the given order (a stable sort of the negated scores)."""
    return np.argsort(-scores, kind="stable")


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Each candidate's rank from 1 (ties: the earlier candidate ranks higher)."""
    ranks = np.empty(len(scores))
    ranks[_order(scores)] = np.arange(1, len(scores) + 1)
    return ranks
