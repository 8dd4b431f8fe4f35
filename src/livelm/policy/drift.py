"""Drift detectors on the per-document loss: river's ADWIN, Page-Hinkley and KSWIN, by name.

Every detector has the same small shape: `update(x) -> self`, a read-only `drift_detected`,
`reset()`, a `state()` for the drift event, and the `false_alarm_rate` its settings allow on a
stationary stream (alarms per document). The algorithms are river's; this file adapts them to
that shape and adds:

- A signal that only the stream moves. A learner's loss falls as it learns, and a detector on
  the raw loss takes that learning curve, or its flattening, for a drift. So river watches
  each loss's residual against the loss's own trend, in units of the losses' spread
  (`livelm.policy.residual`): a trend that follows a falling loss within a few documents and a
  rising one slowly (half-life `trend`, 200 documents), so a new source stands out as a loss
  above its trend. A change river finds is reported only if the loss then stands three
  quarters of a spread above its trend or, with `direction="both"`, its recent residuals as
  far below zero: as a curve flattens, the residual creeps up by a fraction of a spread, which
  river may call a change, but the loss does not rise above its trend as it does on a new
  source. After a drift the trend starts over. `trend=0` watches the raw loss, for comparison.

  Chosen by measurement. On the tests' synthetic stream (a loss falling from 5.0 to 3.5 nats
  with a time constant of 100 documents, noise of 0.65 nats per document, and at document 250
  a switch that adds 1.25 nats, which the learner then learns away; 200 seeds), the raw loss
  set ADWIN off in the 150 documents before the switch in 140 runs, Page-Hinkley in 139, KSWIN
  in 25; the residual set Page-Hinkley off there once and the others never, and ADWIN caught
  the switch within 40 documents in 193 runs, Page-Hinkley in 199, KSWIN in 187 (medians 21,
  14 and 21 documents). On the tiny test model learning word salad, then switched to numbers
  (8 streams), whose loss falls 2 nats, some 20 spreads, before the switch, a plain
  exponentially weighted trend (half-life 100) lagged the curve by several spreads and fired
  on its flattening in most streams; this one caught every switch within 40 documents, and
  also news turning into State of the Union paragraphs under a static model (1.3 spreads).
  A trend that did not carry the fast mean ahead by its fall lagged a fast curve by ~2
  spreads (the tiny model at lr 6e-4), which Page-Hinkley and KSWIN took for a change near
  documents 80-106; carried ahead, none fired before the switch at lr 3e-4 to 2e-3. The
  other signal that only the stream moves, the frozen base model's loss on the same documents,
  costs a second forward pass (and for a full-weight learner a second copy of the model), and
  misses the drift that matters most to a learner: a source the base model finds no harder,
  but which undoes what the learner had learned.
- A warm-up: the first `warmup` documents (50) set the trend and the scale and are not tested;
  river then takes their residuals as history, so that a switch soon after has a past to
  stand out from. From then on it takes one residual per document, and an alarm is raised on
  the document whose loss tripped the detector.
- A direction: with `direction="up"` a detector reports only rises of the loss above its
  trend (the stream got harder for the model), never falls.

>>> detector = DetectorConfig.parse("adwin").build()
>>> for x in [3.0] * 500 + [5.0] * 100:
...     if detector.update(x).drift_detected:
...         break
>>> detector.drift_detected
True
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

if TYPE_CHECKING:  # river (numpy, scipy) loads when a detector first takes a loss
    from river import drift
    from river.base import DriftDetector

from livelm.policy.residual import DEFAULT_TREND, DEFAULT_WARMUP, Residual

Direction = Literal["both", "up"]
DIRECTIONS: tuple[Direction, ...] = ("both", "up")
MARGIN = 0.75  # spreads the loss must stand above (or below) its trend for a drift to count


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


R = TypeVar("R", bound="DriftDetector")


class RiverDetector(ABC, Generic[R]):
    """One river detector on the residuals of a stream of losses against their trend, scaled
    to unit spread, with a direction."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]]
    knob: ClassVar[str]  # the parameter a spec's number sets, as in `adwin:0.001`

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
        # River wants ints where its defaults are ints (window sizes, counts).
        self.params: dict[str, Any] = {
            k: type(self.defaults[k])(v) for k, v in {**self.defaults, **params}.items()
        }
        self.signal = Residual(trend, warmup, scale)
        self.reset()

    @property
    def scale(self) -> float | None:
        """The spread residuals are divided by (nats); None until the warm-up has set it."""
        return self.signal.scale

    def reset(self) -> None:
        """As new: river, the trend and the scale (unless it was given) start over."""
        self._river: R | None = None  # built on first use: settings are checked without river
        self._drift = False
        self.signal.reset()
        self.seen = 0
        self._sum = 0.0

    @property
    def river(self) -> R:
        if self._river is None:
            self._river = self._build()
        return self._river

    @abstractmethod
    def _build(self) -> R: ...

    def _state(self) -> dict[str, float]:
        return {}

    @property
    @abstractmethod
    def false_alarm_rate(self) -> float: ...

    def update(self, x: float) -> Self:
        """Takes one document's loss (nats); `drift_detected` then says whether *this* loss
        tripped the detector. River sees one value per call, so a detection is never late."""
        if self._drift:  # river restarts after a detection; so do `state()`'s counters
            self.seen, self._sum = 0, 0.0
            self.signal.restart()
        self._drift = False
        z = self.signal.update(x)
        if z is None:
            # A warm-up document: none is tested. (Testing them in a batch at the end of the
            # warm-up, as this once did, reported a drift among them on the last warm-up
            # document, with later losses already in river's state.)
            self._prefill(self.signal.history())
            return self
        self.river.update(z)
        self.seen += 1
        self._sum += x
        self._drift = bool(self.river.drift_detected) and self._reported(z)
        return self

    def _prefill(self, history: list[float]) -> None:
        """River takes the warm-up's residuals as history, so that a switch soon after the
        warm-up has a past to stand out from (ADWIN's cut and KSWIN's window need one). A
        change among them is not reported, its document being past; river restarts after it,
        and so does the trend."""
        changed = False
        for z in history:
            self.river.update(z)
            changed |= bool(self.river.drift_detected)
        if changed:
            self.signal.restart()

    def _reported(self, z: float) -> bool:
        """Whether a change river found is one to report."""
        if not self.trend:  # the raw loss: a rise is a recent mean above the one since the reset
            scale = self.signal.scale or 1.0
            return self.direction == "both" or self.signal.recent * scale > self._sum / self.seen
        # A change counts if the loss now stands away from its trend. As a learning curve
        # flattens, the residual creeps up by a fraction of a spread, which river may call a
        # change; but the loss does not rise above its trend, as it does on a new source.
        if self.signal.standing > MARGIN:
            return True
        return self.direction == "both" and self.signal.recent < -MARGIN

    @property
    def drift_detected(self) -> bool:
        return self._drift

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
            "trend": self.signal.level,
            "residual": self.signal.residual,
            "scale": scale,
            **self._state(),
        }


class ADWINDetector(RiverDetector["drift.ADWIN"]):
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
        from river import drift

        return drift.ADWIN(**self.params)

    def _state(self) -> dict[str, float]:
        width = float(self.river.width)
        return {
            "width": width,
            "estimation": float(self.river.estimation),
            # river's `variance` is the window's sum of squared deviations, not their mean
            "variance": float(self.river.variance) / width if width else math.nan,
        }

    @property
    def false_alarm_rate(self) -> float:
        return float(self.params["delta"])


class PageHinkleyDetector(RiverDetector["drift.PageHinkley"]):
    """Page-Hinkley (Page, 1954): a cumulative sum of deviations from the mean against a threshold.

    `delta` is the change it tolerates and `threshold` the evidence it needs, both in units of
    the losses' spread. On a stationary stream, a random walk with unit steps and drift -delta
    exceeds the threshold with probability at most exp(-2 delta threshold) (Kingman's bound):
    that is its false-alarm rate. With delta 0.2 and threshold 25, about 5 alarms per 100,000
    documents; a rise of `a` spreads takes about threshold / (a - delta) documents: one
    spread in about 30, two in about 15. Delta 0.1 and threshold 50 allow the same rate but
    are slower for any rise above 0.3 spreads (55 and 25 documents): on the tests' switch of
    source they took over 40 documents in 37 runs of 200, these in none.
    """

    name = "page-hinkley"
    defaults: ClassVar[dict[str, float]] = {"delta": 0.2, "threshold": 25.0, "min_instances": 30}
    knob = "threshold"

    def _build(self) -> drift.PageHinkley:
        from river import drift

        return drift.PageHinkley(**self.params, mode=self.direction)

    @property
    def false_alarm_rate(self) -> float:
        return math.exp(-2 * self.params["delta"] * self.params["threshold"])


class KSWINDetector(RiverDetector["drift.KSWIN"]):
    """KSWIN (Raab et al., 2020): a Kolmogorov-Smirnov test of the newest documents' losses
    against a sample of the window before them.

    One test per document at level `alpha`, so `alpha` is its false-alarm rate. river's default
    of 0.005 would re-warm the learner every 200 documents on a steady stream; 1e-4 still
    catches a rise of two spreads within about 25 documents. (The test is scale-free anyway.)
    After a detection its window fills again before the next test: 80 documents rather than
    river's 100, so that it is back sooner, for a little power (on the tests' synthetic switch
    it caught 189 runs of 200 within 40 documents).
    """

    name = "kswin"
    defaults: ClassVar[dict[str, float]] = {
        "alpha": 1e-4,
        "window_size": 80,
        "stat_size": 30,
        "seed": 0,
    }
    knob = "alpha"

    def _build(self) -> drift.KSWIN:
        from river import drift

        return drift.KSWIN(**self.params)

    def _state(self) -> dict[str, float]:
        window = self.river.window
        mean = sum(window) / len(window) if window else math.nan
        return {"p_value": float(self.river.p_value), "window_mean": mean}

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
    DetectorConfig(name='kswin', direction='up', params=(('alpha', 0.001), ('window_size', 200.0)), scale=None, warmup=50, trend=200)
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
