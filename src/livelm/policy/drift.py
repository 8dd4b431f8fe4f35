"""Drift detectors on the per-document loss: river's ADWIN, Page-Hinkley and KSWIN, by name.

Every detector has the same small shape: `update(x) -> self`, a read-only `drift_detected`,
`reset()`, a `state()` for the drift event, and the `false_alarm_rate` its settings allow on a
stationary stream (alarms per document). The algorithms are river's; this file adapts them to
that shape and adds three things:

- A signal that only the stream moves. A learner's loss falls as it learns (its learning
  curve), and a detector on the raw loss reports that fall, or the flattening after it, as a
  drift. So each loss is compared with the loss's own trend, an exponentially weighted mean
  with a half-life of `trend` documents (100) taken *before* the document joins it: the
  detectors watch the residual `loss - trend`. A slow learning curve leaves the residual near
  zero; a switch of source raises it at once, and it stays raised while the trend catches up
  (a third of the jump is left after 160 documents). After a detection the trend starts over
  from the new documents, so the fading of that trace is not taken for a second change. A
  static learner's flat loss is the same case without a curve.

  Chosen by measurement on the tests' synthetic stream (a loss falling from 5.0 to 3.5 nats
  with a time constant of 100 documents, per-document noise of 0.65 nats, and at document 250
  a switch that adds 1.25 nats, which fall away again as the learner learns; 200 seeds): on
  the raw loss, Page-Hinkley fired in the 150 documents before the switch in 147 runs, ADWIN
  in 41, KSWIN in 10; on the residual, none in more than 4, and each caught the switch within
  40 documents in 196 to 199 runs (median 14 to 23 documents). A half-life of 50 documents
  did as well there but lagged a steeper curve (time constant 50) into 22 early Page-Hinkley
  alarms; 200 did no better than 100. The other signal that only the stream moves, the frozen
  base model's loss on the same documents, costs a second forward pass (and for a full-weight
  learner a second copy of the model), and misses the drift that matters most to a learner:
  a source the base model finds no harder, which undoes what the learner had learned.
- A scale. ADWIN's bound and Page-Hinkley's threshold are in the units of the input, and how
  much per-document losses spread depends on the model and the stream (0.65 nats for SmolLM2 on
  news headlines, 0.1 for a tiny test model). So each residual is divided by the spread of the
  first `warmup` losses, estimated from their successive differences (a learner's falling loss
  does not inflate it), and the defaults are in units of that spread. A fixed `scale` (nats)
  skips the estimate. The first `warmup` documents set the scale and the trend and are not
  tested: a detector fires on the document whose residual tripped it, never on a later one.
- A direction: with `direction="up"` a detector reports only changes that raise the loss (the
  stream got harder for the model), not falls.

>>> detector = DetectorConfig.parse("adwin").build()
>>> for x in [3.0] * 500 + [5.0] * 100:
...     if detector.update(x).drift_detected:
...         break
>>> detector.drift_detected
True
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

from river import drift
from river.base import DriftDetector

Direction = Literal["both", "up"]
DIRECTIONS: tuple[Direction, ...] = ("both", "up")
DEFAULT_WARMUP = 50  # losses that set the scale: enough to know it within about 12%
DEFAULT_TREND = 100  # half-life, in documents, of the trend the residual is taken against


def spread(values: Sequence[float]) -> float:
    """The standard deviation of the noise in `values`, from successive differences:
    sqrt(mean((x[t] - x[t-1])^2) / 2), which a slow trend or a step barely moves."""
    diffs = [b - a for a, b in itertools.pairwise(values)]
    return math.sqrt(sum(d * d for d in diffs) / (2 * len(diffs))) if diffs else 0.0


class Detector(Protocol):
    """What the policy needs of a detector; one contract test runs against every registered one."""

    @property
    def name(self) -> str: ...

    def update(self, x: float) -> Self: ...

    @property
    def drift_detected(self) -> bool: ...

    def reset(self) -> None: ...

    def state(self) -> dict[str, float]: ...

    @property
    def false_alarm_rate(self) -> float: ...


R = TypeVar("R", bound=DriftDetector)


class RiverDetector(ABC, Generic[R]):
    """One river detector on a stream of losses, scaled to unit spread, with a direction."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]]
    knob: ClassVar[str]  # the parameter a spec's number sets, as in `adwin:0.001`
    native_direction: ClassVar[bool] = False  # river filters the direction itself

    def __init__(
        self,
        direction: Direction = "both",
        scale: float | None = None,
        warmup: int = DEFAULT_WARMUP,
        trend: int = DEFAULT_TREND,
        **params: float,
    ) -> None:
        if scale is not None and not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"detector {self.name!r}: scale must be positive, not {scale}")
        if warmup < 3:
            raise ValueError(f"detector {self.name!r}: warmup must be at least 3, not {warmup}")
        if trend < 0:
            raise ValueError(
                f"detector {self.name!r}: trend is a half-life in documents (0: the raw loss), "
                f"not {trend}"
            )
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"detector {self.name!r} has no parameter {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.defaults))}"
            )
        if direction not in DIRECTIONS:
            raise ValueError(f"a detector's direction is 'both' or 'up', not {direction!r}")
        for key, value in params.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"detector {self.name!r}: {key} must be positive, not {value}")
        self.direction = direction
        self.fixed_scale = scale
        self.warmup = warmup
        self.trend = trend
        # The trend's weight on a new loss; 0 keeps the trend at 0, so the residual is the loss.
        self._alpha = 1.0 - 0.5 ** (1.0 / trend) if trend else 0.0
        # River wants ints where its defaults are ints (window sizes, counts).
        self.params: dict[str, Any] = {
            k: type(self.defaults[k])(v) for k, v in {**self.defaults, **params}.items()
        }
        self._river: R = self._build()
        self._drift = False
        self._changed = False  # river detected a change, whether or not it is reported
        self.scale: float | None = scale
        self._warming: list[float] = []
        self.trend_level = 0.0  # the trend (nats) before the newest loss joined it; 0 if off
        self.residual = math.nan  # the newest loss minus `trend_level` (nats)
        self._ewm = 0.0
        self._ewm_n = 0
        self._settled = 0  # documents in the trend since the start or the last detection
        self.seen = 0
        self._sum = 0.0

    @abstractmethod
    def _build(self) -> R: ...

    @abstractmethod
    def _level(self) -> float:
        """River's current estimate of the mean, to tell a rise from a fall."""

    def _state(self) -> dict[str, float]:
        return {}

    @property
    @abstractmethod
    def false_alarm_rate(self) -> float: ...

    def update(self, x: float) -> Self:
        """Takes one document's loss (nats); `drift_detected` then says whether *this* loss
        tripped the detector. River sees one value per call, so a detection is never late."""
        if self._drift:  # river restarts after a detection; so do the counters of `state()`
            self.seen, self._sum = 0, 0.0
        if self._changed:
            # The trend starts over from the new documents after any change river saw, one
            # the direction leaves unreported too: left to catch up with the new level, it
            # would draw the change's trace in the residual out into a slow fade, which reads
            # as a second change, the other way, a hundred documents later.
            self._ewm_n = self._settled = 0
        self._drift = self._changed = False
        self.trend_level = self._ewm
        self.residual = x - self.trend_level
        self._follow(x)
        if self._settled < self.warmup:
            # The first losses set the scale and the trend; none of them is tested, since a
            # residual against a trend of a few documents means little. (Feeding them to river
            # in a batch at the end of the warm-up, as this once did, reported a drift among
            # them on the last warm-up document, with later losses already in river's state.)
            self._settled += 1
            if self.scale is None:
                self._warming.append(x)
                if len(self._warming) == self.warmup:
                    self.scale = spread(self._warming) or 1.0  # a constant stream: any will do
                    self._warming = []
            return self
        assert self.scale is not None
        self._drift = self._feed(self.residual, x, self.scale)
        return self

    def _follow(self, x: float) -> None:
        """The trend: an exponentially weighted mean of the losses, the plain mean until
        `1 / alpha` documents are in (a new loss never weighs less than `1 / n`), so it does
        not start biased toward the first document."""
        if not self.trend:
            return
        self._ewm_n += 1
        weight = max(self._alpha, 1.0 / self._ewm_n)
        self._ewm += weight * (x - self._ewm)

    def _feed(self, residual: float, x: float, scale: float) -> bool:
        before = self._level()
        self._river.update(residual / scale)
        self.seen += 1
        self._sum += x
        detected = self._changed = bool(self._river.drift_detected)
        if detected and self.direction == "up" and not self.native_direction:
            detected = self._level() > before
        return detected

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def reset(self) -> None:
        """As new: the scale and the trend too are estimated again (the scale unless given)."""
        self._river = self._build()
        self._drift = self._changed = False
        self.scale = self.fixed_scale
        self._warming = []
        self.trend_level = 0.0
        self.residual = math.nan
        self._ewm = 0.0
        self._ewm_n = 0
        self._settled = 0  # documents in the trend since the start or the last detection
        self.seen = 0
        self._sum = 0.0

    def state(self) -> dict[str, float]:
        """`seen` and `mean`: documents tested since the last detection or reset and their mean
        loss (nats); `trend` and `residual`: the newest loss's trend and its residual against it
        (nats); `scale`: the spread residuals are divided by; the rest is river's, in the units
        of that spread."""
        mean = self._sum / self.seen if self.seen else math.nan
        scale = math.nan if self.scale is None else self.scale
        return {
            "seen": float(self.seen),
            "mean": mean,
            "trend": self.trend_level,
            "residual": self.residual,
            "scale": scale,
            **self._state(),
        }


class ADWINDetector(RiverDetector[drift.ADWIN]):
    """ADWIN (Bifet & Gavalda, 2007): an adaptive window cut where two sub-windows' means differ.

    Its `delta` bounds the probability of a false cut at each step, so it is the false-alarm
    rate; its bound is written for values in a unit range, which scaled losses roughly are. It
    checks every 8 documents; river's default of 32 adds up to 24 documents of latency for a
    saving too small to measure next to a model step.
    """

    name = "adwin"
    defaults: ClassVar[dict[str, float]] = {"delta": 0.002, "clock": 8}
    knob = "delta"

    def _build(self) -> drift.ADWIN:
        return drift.ADWIN(**self.params)

    def _level(self) -> float:
        return float(self._river.estimation)

    def _state(self) -> dict[str, float]:
        width = float(self._river.width)
        return {
            "width": width,
            "estimation": float(self._river.estimation),
            # river's `variance` is the window's sum of squared deviations, not their mean
            "variance": float(self._river.variance) / width if width else math.nan,
        }

    @property
    def false_alarm_rate(self) -> float:
        return float(self.params["delta"])


class PageHinkleyDetector(RiverDetector[drift.PageHinkley]):
    """Page-Hinkley (Page, 1954): a cumulative sum of deviations from the mean against a threshold.

    `delta` is the change it tolerates and `threshold` the evidence it needs, both in units of
    the losses' spread. On a stationary stream, a random walk with unit steps and drift -delta
    exceeds the threshold with probability at most exp(-2 delta threshold) (Kingman's bound):
    that is its false-alarm rate. With delta 0.2 and threshold 25, about 5 alarms per 100,000
    documents; a rise of `a` spreads takes about threshold / (a - delta) documents: one
    spread in about 30, two in about 15. Delta 0.1 and threshold 50 allow the same rate but
    are slower for any rise above 0.3 spreads (55 and 25 documents): on the tests' switch of
    source they took over 40 documents in 54 runs of 200, against none.
    """

    name = "page-hinkley"
    defaults: ClassVar[dict[str, float]] = {"delta": 0.2, "threshold": 25.0, "min_instances": 30}
    knob = "threshold"
    native_direction = True

    def _build(self) -> drift.PageHinkley:
        return drift.PageHinkley(**self.params, mode=self.direction)

    def _level(self) -> float:
        return self._sum / self.seen if self.seen else 0.0

    @property
    def false_alarm_rate(self) -> float:
        return math.exp(-2 * self.params["delta"] * self.params["threshold"])


class KSWINDetector(RiverDetector[drift.KSWIN]):
    """KSWIN (Raab et al., 2020): a Kolmogorov-Smirnov test of the newest documents' losses
    against a sample of the window before them.

    One test per document at level `alpha`, so `alpha` is its false-alarm rate. river's default
    of 0.005 would re-warm the learner every 200 documents on a steady stream; 1e-4 still
    catches a rise of two spreads within about 25 documents. (The test is scale-free anyway.)
    """

    name = "kswin"
    defaults: ClassVar[dict[str, float]] = {
        "alpha": 1e-4,
        "window_size": 100,
        "stat_size": 30,
        "seed": 0,
    }
    knob = "alpha"

    def _build(self) -> drift.KSWIN:
        return drift.KSWIN(**self.params)

    def _level(self) -> float:
        window = self._river.window
        return sum(window) / len(window) if window else 0.0

    def _state(self) -> dict[str, float]:
        return {"p_value": float(self._river.p_value), "window_mean": self._level()}

    @property
    def false_alarm_rate(self) -> float:
        return float(self.params["alpha"])


DETECTORS: dict[str, type[RiverDetector[Any]]] = {
    cls.name: cls for cls in (ADWINDetector, PageHinkleyDetector, KSWINDetector)
}


@dataclass(frozen=True)
class DetectorConfig:
    """A detector by name, its direction, its scale, its trend and any parameters not at their
    defaults.

    The spec form is `name[:option]...`, an option being a number (the detector's main knob:
    ADWIN's delta, KSWIN's alpha, Page-Hinkley's threshold), `key=value` for any other
    parameter (`scale`, `warmup` and `trend` included; `trend=0` watches the raw loss), or `up`
    for the direction.

    >>> DetectorConfig.parse("kswin:0.001:window_size=200:up")
    DetectorConfig(name='kswin', direction='up', params=(('alpha', 0.001), ('window_size', 200.0)), scale=None, warmup=50, trend=100)
    """  # noqa: E501

    name: str = "adwin"
    direction: Direction = "both"
    params: tuple[tuple[str, float], ...] = ()
    scale: float | None = None  # nats; None: estimated on the first `warmup` losses
    warmup: int = DEFAULT_WARMUP
    trend: int = DEFAULT_TREND  # half-life in documents of the trend; 0: the raw loss

    def __post_init__(self) -> None:
        if self.name not in DETECTORS:
            raise ValueError(
                f"--detector {self.name!r} is not known; choose from {', '.join(DETECTORS)}"
            )
        self.build()  # the detector validates its own parameters

    @classmethod
    def parse(cls, spec: str) -> DetectorConfig:
        name, *options = spec.strip().split(":")
        if name not in DETECTORS:
            raise ValueError(f"--detector {spec!r}: choose from {', '.join(DETECTORS)}")
        direction: Direction = "both"
        params: list[tuple[str, float]] = []
        scale: float | None = None
        warmup = DEFAULT_WARMUP
        trend = DEFAULT_TREND
        for option in options:
            key, _, value = option.rpartition("=")
            try:
                if option in DIRECTIONS:
                    direction = "up" if option == "up" else "both"
                elif key == "scale":
                    scale = float(value)
                elif key == "warmup":
                    warmup = int(value)
                elif key == "trend":
                    trend = int(value)
                else:
                    params.append((key or DETECTORS[name].knob, float(value)))
            except ValueError:
                raise ValueError(
                    f"--detector {spec!r}: {option!r} is not a number, key=number or 'up'"
                ) from None
        return cls(name, direction, tuple(params), scale, warmup, trend)

    def build(self) -> RiverDetector[Any]:
        return DETECTORS[self.name](
            self.direction, self.scale, self.warmup, self.trend, **dict(self.params)
        )

    def __str__(self) -> str:
        knob = DETECTORS[self.name].knob
        parts = [self.name, *(f"{v:g}" if k == knob else f"{k}={v:g}" for k, v in self.params)]
        if self.scale is not None:
            parts.append(f"scale={self.scale:g}")
        if self.warmup != DEFAULT_WARMUP:
            parts.append(f"warmup={self.warmup}")
        if self.trend != DEFAULT_TREND:
            parts.append(f"trend={self.trend}")
        if self.direction == "up":
            parts.append("up")
        return ":".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "direction": self.direction,
            "params": dict(sorted(self.build().params.items())),
            "scale": self.scale,
            "warmup": self.warmup,
            "trend": self.trend,
        }
