"""What drift detectors watch: each loss's residual against the loss's own trend, in spreads.

A learner's loss falls as it learns (its learning curve); a detector on the raw loss takes that
fall, or its flattening, for a drift. The residual removes it:

- The trend is an exponentially weighted mean of the losses with a half-life of `trend`
  documents (200), never above where a fast one (half-life 8) says the next loss will be. The
  fast mean trails a steady fall by ~11 documents, so it is carried ahead by its own fall per
  document (averaged over a half-life of 25; a rise is never carried ahead). A falling loss
  drags the trend down with it, so a learning curve leaves the residual near zero, however
  fast it falls; a rising loss lifts it only slowly, so a new source's jump stays in the
  residual long enough to be tested. Each residual is taken against the trend before its
  document joins it.
- The scale is the spread of the losses, estimated from their successive differences (a
  learner's falling loss does not inflate it): `spread()` of the first `warmup` losses, then a
  running version of it (half-life 100 documents, differences clipped at 5 spreads so that a
  jump does not widen it) that follows the noise as a model learns (a tiny model's grows from
  0.07 to 0.13 nats). Residuals are divided by it, so a detector's settings mean the same for
  any model. A fixed `scale` (nats) skips the estimate.
- The first `warmup` documents set the scale and the trend; they have no residual to test, and
  at the end of the warm-up their residuals against the trend as it then stands are handed
  over once, as history.

`trend=0` gives the raw loss over the scale, for comparison.

>>> signal = Residual(warmup=3)
>>> [signal.update(x) for x in [3.0, 3.2, 3.0]]  # the warm-up
[None, None, None]
>>> round(signal.scale, 3), round(signal.update(3.5), 2)  # (3.5 - 3.067) / 0.141
(0.141, 3.06)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

DEFAULT_WARMUP = 50  # losses that set the scale: enough to know it within about 12%
DEFAULT_TREND = 200  # half-life, in documents, of the trend the residual is taken against
FAST_ALPHA = 1.0 - 0.5 ** (1 / 8)  # the trend follows a falling loss: half-life 8 documents
SLOPE_ALPHA = 1.0 - 0.5 ** (1 / 25)  # the fall per document, averaged: half-life 25 documents
# Documents by which a mean of weight FAST_ALPHA trails a steady fall, plus the one ahead.
LEAD = (1.0 - FAST_ALPHA) / FAST_ALPHA + 1.0
SPREAD_ALPHA = 1.0 - 0.5 ** (1 / 100)  # the scale follows a change in the noise: half-life 100
CLIP = 5.0  # spreads: a successive difference counts toward the scale up to this size


def spread(values: Sequence[float]) -> float:
    """The standard deviation of the noise in `values`, from successive differences:
    sqrt(mean((x[t] - x[t-1])^2) / 2), which a slow trend or a step barely moves."""
    diffs = [b - a for a, b in itertools.pairwise(values)]
    return math.sqrt(sum(d * d for d in diffs) / (2 * len(diffs))) if diffs else 0.0


class Residual:
    """Losses in, residuals in spreads out: `update(loss)` is None during the warm-up."""

    def __init__(
        self, trend: int = DEFAULT_TREND, warmup: int = DEFAULT_WARMUP, scale: float | None = None
    ) -> None:
        self.trend = trend
        self.warmup = warmup
        self.fixed_scale = scale
        # The trend's weight on a new loss; 0 keeps the trend at 0, so the residual is the loss.
        self._alpha = 1.0 - 0.5 ** (1.0 / trend) if trend else 0.0
        self.reset()

    def reset(self) -> None:
        """As new: the trend, and the scale unless it was given."""
        self.scale: float | None = self.fixed_scale
        self.level = 0.0  # the trend (nats) before the newest loss joined it; 0 if off
        self.residual = math.nan  # the newest loss minus `level` (nats)
        self.recent = 0.0  # the residual, in spreads, over the last few tested documents
        self._slow = 0.0  # the trend: the losses' mean with a half-life of `trend` documents,
        self._fast = 0.0  # held under this one, with a half-life of 8, carried ahead (`_ahead`)
        self._slope = 0.0  # by the fast mean's change per document, averaged
        self._n = 0  # losses in the trend since the start or the last restart
        self._warming: list[float] | None = []  # the warm-up's losses; None once it is over
        self._history: list[float] = []
        self._last: float | None = None  # the previous loss
        self._diffs = 0  # successive differences in the spread so far
        self._msd = 0.0  # half their running mean square: the spread, squared

    def restart(self) -> None:
        """The trend starts over from the next document, as after a drift: left to catch up
        with a new level, it would draw the change's trace in the residual out into a slow
        fade, which reads as a second change, the other way, some hundred documents later."""
        self._n = 0
        self._slope = 0.0
        self.recent = 0.0

    @property
    def standing(self) -> float:
        """How far the loss now stands above its trend, in spreads (the fast mean, carried
        ahead, over it)."""
        return (self._ahead - self._slow) / self.scale if self.scale else 0.0

    @property
    def _ahead(self) -> float:
        """Where the fast mean says the next loss will be: carried ahead by its fall, never by
        a rise."""
        return self._fast + min(self._slope, 0.0) * LEAD

    def update(self, x: float) -> float | None:
        """The residual of `x` in spreads, or None while the warm-up lasts."""
        self.level = self._slow if self.trend else 0.0
        self.residual = x - self.level
        scale = self.scale  # as it was before this loss, which must not temper its own residual
        self._follow(x)
        self._track_spread(x)
        if self._warming is not None:
            self._warming.append(x)
            if len(self._warming) >= self.warmup and self.scale is not None:
                level = self._slow if self.trend else 0.0
                self._history = [(w - level) / self.scale for w in self._warming]
                self._warming = None
            return None
        assert scale is not None
        z = self.residual / scale
        self.recent += FAST_ALPHA * (z - self.recent)
        return z

    def history(self) -> list[float]:
        """Once, at the end of the warm-up: its losses' residuals, in spreads, against the
        trend as it then stands; else empty."""
        history, self._history = self._history, []
        return history

    def _follow(self, x: float) -> None:
        """The slow mean, held at or under the fast one; both are the plain mean of the losses
        at first (a new loss never weighs less than `1 / n`), so neither starts biased toward
        the first document, the slow one for the first `warmup` losses only: later, `1 / n`
        would let it take in a third of a jump within 50 documents of the 100th."""
        if not self.trend:
            return
        self._n += 1
        slow = self._alpha if self._n > self.warmup else max(self._alpha, 1.0 / self._n)
        self._slow += slow * (x - self._slow)
        fast = self._fast
        self._fast += max(FAST_ALPHA, 1.0 / self._n) * (x - self._fast)
        if self._n > 1:
            self._slope += SLOPE_ALPHA * (self._fast - fast - self._slope)
        self._slow = min(self._slow, self._ahead)

    def _track_spread(self, x: float) -> None:
        """`spread()` as a running estimate, weighted like the trend: it is `spread()` of the
        first `warmup` losses when they are in, then follows the noise."""
        if self.fixed_scale is not None:
            return
        if self._last is not None:
            self._diffs += 1
            d = x - self._last
            if self.scale is not None:  # a jump is a drift, not noise: it must not widen the scale
                d = max(-CLIP * self.scale, min(CLIP * self.scale, d))
            self._msd += max(SPREAD_ALPHA, 1.0 / self._diffs) * (d * d / 2 - self._msd)
        self._last = x
        if self._diffs >= self.warmup - 1:
            self.scale = math.sqrt(self._msd) or 1.0  # a constant stream: any scale will do
