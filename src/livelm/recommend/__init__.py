"""Recommending with the live model: rank a reader's candidates from their history by the
model's pointwise mutual information, its pooled hidden states, TF-IDF, or a fusion of them.

    >>> # scorer = Scorer(model, tokenize, boundary=encoder.boundary, pad_id=0)
    >>> # ranked = Ranker(scorer).recommend(history, candidates, method="fused", top_k=10)
    >>> # ranked[0].id, ranked[0].score, ranked[0].why

`livelm.recommend.config` (methods, limits) imports no torch; the rest loads on first use.
"""

from typing import TYPE_CHECKING

from livelm.lazy import lazy_names
from livelm.recommend.config import (
    BASE_METHODS,
    DEFAULT_METHOD,
    FUSED,
    Method,
    RecommendError,
    RecommendLimits,
    parse_method,
)

if TYPE_CHECKING:
    from livelm.learner.packing import Cancelled
    from livelm.recommend.ranking import Evidence, Ranked, Ranker, Signals
    from livelm.recommend.scoring import Scorer, TextStats

__getattr__ = lazy_names(
    __name__,
    {
        "livelm.recommend.ranking": ("Evidence", "Ranked", "Ranker", "Signals"),
        "livelm.learner.packing": ("Cancelled",),  # shared with the server's scoring
        "livelm.recommend.scoring": ("Scorer", "TextStats"),
    },
)

__all__ = [
    "BASE_METHODS",
    "DEFAULT_METHOD",
    "FUSED",
    "Cancelled",
    "Evidence",
    "Method",
    "Ranked",
    "Ranker",
    "RecommendError",
    "RecommendLimits",
    "Scorer",
    "Signals",
    "TextStats",
    "parse_method",
]
