"""Monitoring a stream: how surprising each document is, and which words are on the rise.

For the social-media monitoring use: a document's surprise is its loss as a z-score against the
stream's running loss (what the model did not expect, relative to what it usually does not
expect), and emerging terms are words whose share of recent documents rose most against the
earlier stream. Both are streaming: constant work per document, bounded state.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any, Self

from livelm.document import Document


class SurpriseMonitor:
    """Z-scores of losses against an exponentially weighted running mean and variance.

    The statistics have a half-life in documents, so a surprise is relative to the stream as it
    is now. Until `1 / alpha` documents have been seen they are the plain mean and variance (the
    weight of a new document is never below `1 / n`), so the first scores are not biased toward
    the first document. A score is taken before its loss joins the statistics, like the
    prequential loss itself; it is None for the first `warmup` documents.

    >>> m = SurpriseMonitor(half_life=100, warmup=3)
    >>> for loss in [3.0, 3.2, 2.8, 3.1]:
    ...     _ = m.update(loss)
    >>> round(m.surprise(5.0), 1)
    13.4
    """

    def __init__(self, half_life: int = 500, warmup: int = 20) -> None:
        if half_life < 1 or warmup < 2:
            raise ValueError("a surprise monitor needs half_life >= 1 and warmup >= 2")
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.warmup = warmup
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def surprise(self, loss: float) -> float | None:
        if self.n < self.warmup or self.var <= 0 or not math.isfinite(loss):
            return None
        return (loss - self.mean) / math.sqrt(self.var)

    def update(self, loss: float) -> Self:
        if not math.isfinite(loss):
            return self
        weight = max(self.alpha, 1.0 / (self.n + 1))
        diff = loss - self.mean
        self.mean += weight * diff
        self.var = (1.0 - weight) * (self.var + weight * diff * diff)
        self.n += 1
        return self


@dataclass(frozen=True)
class Surprise:
    """One scored document, as `surprises.jsonl` lists it."""

    index: int
    id: str
    time: str | None
    loss: float
    surprise: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TopSurprises:
    """The `top` most surprising documents of each consecutive window of `window` documents."""

    def __init__(self, window: int = 100, top: int = 5, text_chars: int = 300) -> None:
        if window < 1 or top < 1:
            raise ValueError("surprises need a window and a top of at least 1")
        self.window = window
        self.top = top
        self.text_chars = text_chars
        self._windows: dict[int, list[tuple[float, int, Surprise]]] = {}

    def add(self, index: int, doc: Document, loss: float, surprise: float | None) -> None:
        if surprise is None:
            return
        heap = self._windows.setdefault(index // self.window, [])
        entry = Surprise(index, doc.id, doc.time, loss, surprise, doc.text[: self.text_chars])
        item = (surprise, index, entry)  # a min-heap of the `top` largest surprises
        if len(heap) < self.top:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def windows(self) -> list[tuple[int, int, list[Surprise]]]:
        """`(first index, last index + 1, most surprising first)` for each window seen."""
        return [
            (w * self.window, (w + 1) * self.window, [e for *_, e in sorted(heap, reverse=True)])
            for w, heap in sorted(self._windows.items())
        ]


_WORD = re.compile(r"[^\W_][\w'\u2019-]*")
# Function words and news filler: common everywhere, so never a trend.
_STOP_TEXT = """
    a about after again against all also am an and any are as at be because been before being
    between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself new no nor not now of off on once only or other our
    ours ourselves out over own same says she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was
    we were what when where which while who whom why will with would you your yours yourself
    yourselves one two get got via amid"""
_STOP_WORDS = frozenset(_STOP_TEXT.split())


def terms(text: str) -> set[str]:
    """The distinct words of a text: lower-cased, possessives stripped, stop words left out."""
    words = (w.lower().removesuffix("'s").removesuffix("\u2019s") for w in _WORD.findall(text))
    return {w for w in words if len(w) > 2 and w not in _STOP_WORDS}


@dataclass(frozen=True)
class EmergingTerm:
    """A word, the documents that hold it (recent, earlier) and how much its share rose."""

    term: str
    recent: int
    earlier: int
    score: float  # log of (recent share / earlier share), both shares smoothed by 1/2 a document

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EmergingTerms:
    """Words whose share of the last `recent_docs` documents rose most against the earlier stream.

    A word counts once per document (a word repeated in one post is not a trend). Shares are
    smoothed, `(count + 0.5) / (docs + 1)`, so a word never seen before scores high but finitely;
    only rising words in at least `min_count` recent documents are listed.

    >>> t = EmergingTerms(recent_docs=2, min_count=2)
    >>> for text in ["rates hold", "rates rise", "virus spreads", "virus closes schools"]:
    ...     _ = t.update(text)
    >>> [(x.term, x.recent, x.earlier) for x in t.top(1)]
    [('virus', 2, 0)]
    """

    def __init__(self, recent_docs: int = 300, min_count: int = 3) -> None:
        if recent_docs < 1 or min_count < 1:
            raise ValueError("emerging terms need recent_docs and min_count of at least 1")
        self.recent_docs = recent_docs
        self.min_count = min_count
        self._recent: deque[set[str]] = deque()
        self.recent_counts: Counter[str] = Counter()
        self.earlier_counts: Counter[str] = Counter()
        self.earlier_docs = 0

    def update(self, text: str) -> Self:
        words = terms(text)
        self._recent.append(words)
        self.recent_counts.update(words)
        if len(self._recent) > self.recent_docs:
            old = self._recent.popleft()
            self.recent_counts.subtract(old)
            for word in old:
                if self.recent_counts[word] <= 0:
                    del self.recent_counts[word]
            self.earlier_counts.update(old)
            self.earlier_docs += 1
        return self

    def top(self, k: int = 30) -> list[EmergingTerm]:
        """The `k` fastest-rising words; none until some documents have left the recent window."""
        if not self.earlier_docs:
            return []
        recent_n, earlier_n = len(self._recent), self.earlier_docs
        found = []
        for word, r in self.recent_counts.items():
            if r < self.min_count:
                continue
            e = self.earlier_counts[word]
            score = math.log((r + 0.5) / (recent_n + 1)) - math.log((e + 0.5) / (earlier_n + 1))
            if score > 0:  # on the rise; a steady or falling word is not news
                found.append(EmergingTerm(word, r, e, score))
        found.sort(key=lambda t: (-t.score, -t.recent, t.term))
        return found[:k]

    def to_dict(self, k: int = 50) -> dict[str, Any]:
        return {
            "recent_docs": len(self._recent),
            "earlier_docs": self.earlier_docs,
            "min_count": self.min_count,
            "terms": [t.to_dict() for t in self.top(k)],
        }
