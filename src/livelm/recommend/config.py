"""What a ranking asks for: its method, parsed once, and the limits on one ranking.

Importing this module imports neither torch nor scikit-learn: `livelm recommend --help` and the
server's request schemas need only these names.

Methods (each ranks a reader's candidates given the reader's history):

- `pmi`: `log p(candidate | history) - log p(candidate)` under the model, summed over the
  candidate's tokens (nats). The history is the conditioning prefix: the boundary token, then
  the history's texts oldest first, each followed by a blank line; the candidate's tokens are
  scored after it, and alone after the boundary token (its score as a document, as the learner
  and `/v1/score` see it).
- `pmi-mean`: the same, per candidate token (nats/token).
- `embed`: the mean cosine similarity of the candidate's pooled hidden state to each history
  item's (the mean of the model's last hidden states over a text's tokens).
- `tfidf`: the mean cosine similarity of TF-IDF vectors (scikit-learn's `TfidfVectorizer`,
  sublinear term frequencies, English stop words) fitted on the history, the candidates and an
  optional background corpus.
- `random`: a seeded shuffle (a floor for the figures).
- `a+b[+c]`: reciprocal rank fusion of those methods, `sum 1 / (rrf_k + rank)`, ranks from 1.
- `fused`: the default fusion, `FUSED` below.

Which to use by default was measured (benchmarks/recommend.py; see `FUSED`).
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_METHODS = ("pmi", "pmi-mean", "embed", "tfidf", "random")
MODEL_METHODS = frozenset({"pmi", "pmi-mean", "embed"})
# The fusion named `fused`, which is also the method a ranking uses when none is named: the
# live model's best fusion on the tune slice of benchmarks/recommend.py (288 readers of the
# HuffPost stream, 146 of them in the tune slice; runs/recommend/news-large.md), by MRR averaged
# over the two reader protocols: pmi+embed+tfidf 0.434, embed+tfidf 0.423, pmi-mean+tfidf 0.393
# (the static model's pmi+embed+tfidf 0.417, TF-IDF alone 0.374). The live model's pooled
# states alone (`embed`) scored 0.452 there, within noise of the fusion, but learning the
# stream hardly moves them (live minus static embed +0.030 and +0.012 on the tune slice), so
# a ranking by them alone gains little from a live model; PMI is where learning shows, and the
# fusion keeps TF-IDF's exact-term matches. On the report slice the live fusion beat the static
# fusion and TF-IDF in every protocol (BENCHMARKS.md "Recommend"). An earlier, smaller run
# (72 readers) had chosen embed+tfidf, 0.001 ahead of pmi+embed+tfidf. `pmi` is the sum over
# the candidate's tokens: alone it edged the per-token mean (0.360 against 0.358, live).
FUSED = "pmi+embed+tfidf"
DEFAULT_METHOD = "fused"


@dataclass(frozen=True)
class Method:
    """A parsed method: its parts (one, or several fused by reciprocal rank)."""

    name: str
    parts: tuple[str, ...]

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1

    @property
    def needs_model(self) -> bool:
        return any(p in MODEL_METHODS for p in self.parts)

    @property
    def needs_pmi(self) -> bool:
        return any(p in ("pmi", "pmi-mean") for p in self.parts)


def parse_method(spec: str) -> Method:
    """`pmi`, `embed`, `tfidf`, `random`, `fused`, or parts joined by `+` (fused by rank).

    >>> parse_method("fused").parts
    ('pmi', 'embed', 'tfidf')
    >>> parse_method("embed+tfidf").fused
    True
    >>> parse_method("bm25")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: method 'bm25': not known; use one of pmi, pmi-mean, embed, tfidf, random, ...
    """
    name = spec.strip()
    expanded = FUSED if name == "fused" else name
    parts = tuple(p.strip() for p in expanded.split("+"))
    unknown = [p for p in parts if p not in BASE_METHODS]
    if unknown or not parts:
        raise ValueError(
            f"method {spec!r}: not known; use one of {', '.join(BASE_METHODS)}, fused, or parts "
            "joined by + (pmi+tfidf)"
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"method {spec!r}: a part is named twice")
    return Method(name=name, parts=parts)


@dataclass(frozen=True)
class RecommendLimits:
    """What one ranking may ask: past these, a `RecommendError` names the field.

    Every text (history item, candidate) is scored on its first `item_tokens` tokens: a reader
    judges a story by its headline and lead, and the joint history must fit the model's window.
    """

    max_history: int = 32  # history items
    max_candidates: int = 100
    max_history_tokens: int = 2048  # the joint history prefix, after each item's truncation
    item_tokens: int = 256
    max_explained: int = 50  # candidates that get a `why` (the top ones)
    explain_history: int = 16  # the newest history items a PMI `why` looks at
    why_items: int = 3  # history items listed in each `why`
    rrf_k: int = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")

    @classmethod
    def fitted(cls, window: int, max_tokens: int, **changes: int) -> RecommendLimits:
        """The defaults, with items and the joint history cut to fit a model whose window is
        `window` tokens (0: unknown) and whose chunks hold `max_tokens` (boundary included):
        an item takes at most a quarter of the window, the history the rest.

        >>> RecommendLimits.fitted(8192, 1024).item_tokens, RecommendLimits.fitted(128, 128)
        (256, RecommendLimits(max_history=32, max_candidates=100, max_history_tokens=96, \
item_tokens=32, max_explained=50, explain_history=16, why_items=3, rrf_k=60))
        """
        item = min(cls.item_tokens, max_tokens - 1)
        history = cls.max_history_tokens
        if window:
            item = max(1, min(item, window // 4))
            history = max(1, min(history, window - item))
        return cls(**({"item_tokens": item, "max_history_tokens": history} | changes))


class RecommendError(ValueError):
    """A ranking past a limit, or with nothing to rank; `field` names the input at fault and
    `too_large` says whether it asked for too much work (a 413) rather than too many items."""

    def __init__(self, message: str, field: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.too_large = too_large
