"""Drift detectors on the per-document loss: river's ADWIN, Page-Hinkley and KSWIN, by name.

Every detector has the same small shape: `update(x) -> self`, a read-only `drift_detected`,
`reset()`, a `state()` for the drift event, and the `false_alarm_rate` its settings allow on a
stationary stream (alarms per document). The algorithms are river's; this file adapts them to
that shape and adds two things:

- A scale. ADWIN's bound and Page-Hinkley's threshold are in the units of the input, and how
  much per-document losses spread depends on the model and the stream (0.65 nats for SmolLM2 on
  news headlines, 0.1 for a tiny test model). So each loss is divided by the spread of the first
  `warmup` losses, estimated from their successive differences (a learner's falling loss does
  not inflate it), and the defaults are in units of that spread; the first losses then go to
  river like all others, so none goes unwatched. A fixed `scale` (nats) skips the estimate.
- A direction: with `direction="up"` a detector reports only changes that raise the loss (the
  stream got harder for the model), not falls such as the model's own learning.

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
        **params: float,
    ) -> None:
        if scale is not None and not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"detector {self.name!r}: scale must be positive, not {scale}")
        if warmup < 3:
            raise ValueError(f"detector {self.name!r}: warmup must be at least 3, not {warmup}")
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
        # River wants ints where its defaults are ints (window sizes, counts).
        self.params: dict[str, Any] = {
            k: type(self.defaults[k])(v) for k, v in {**self.defaults, **params}.items()
        }
        self._river: R = self._build()
        self._drift = False
        self.scale: float | None = scale
        self._warming: list[float] = []
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
        if self._drift:  # river restarts after a detection; so do the counters of `state()`
            self.seen, self._sum = 0, 0.0
        self._drift = False
        if self.scale is not None:
            self._drift = self._feed(x, self.scale)
            return self
        self._warming.append(x)
        if len(self._warming) == self.warmup:
            # The scale is known now: river sees the warm-up losses too, so no document goes
            # unwatched; a drift among them is reported here, at the end of the warm-up.
            scale = spread(self._warming) or 1.0  # a constant stream: any scale will do
            self.scale = scale
            self._drift = any([self._feed(w, scale) for w in self._warming])
            self._warming = []
        return self

    def _feed(self, x: float, scale: float) -> bool:
        before = self._level()
        self._river.update(x / scale)
        self.seen += 1
        self._sum += x
        detected = bool(self._river.drift_detected)
        if detected and self.direction == "up" and not self.native_direction:
            detected = self._level() > before
        return detected

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def reset(self) -> None:
        """As new: the scale too is estimated again, unless it was given."""
        self._river = self._build()
        self._drift = False
        self.scale = self.fixed_scale
        self._warming = []
        self.seen = 0
        self._sum = 0.0

    def state(self) -> dict[str, float]:
        """`seen` and `mean`: documents since the last detection or reset and their mean loss
        (nats); `scale`: the spread losses are divided by; the rest is river's, in those units."""
        mean = self._sum / self.seen if self.seen else math.nan
        scale = math.nan if self.scale is None else self.scale
        return {"seen": float(self.seen), "mean": mean, "scale": scale, **self._state()}


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
    that is its false-alarm rate. With delta 0.1 and threshold 50, about 5 alarms per 100,000
    documents; a rise of one spread is caught in about 55 documents, of two in about 25.
    """

    name = "page-hinkley"
    defaults: ClassVar[dict[str, float]] = {"delta": 0.1, "threshold": 50.0, "min_instances": 30}
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
    """A detector by name, its direction, its scale and any parameters not at their defaults.

    The spec form is `name[:option]...`, an option being a number (the detector's main knob:
    ADWIN's delta, KSWIN's alpha, Page-Hinkley's threshold), `key=value` for any other
    parameter (`scale` and `warmup` included), or `up` for the direction.

    >>> DetectorConfig.parse("kswin:0.001:window_size=200:up")
    DetectorConfig(name='kswin', direction='up', params=(('alpha', 0.001), ('window_size', 200.0)), scale=None, warmup=50)
    """  # noqa: E501

    name: str = "adwin"
    direction: Direction = "both"
    params: tuple[tuple[str, float], ...] = ()
    scale: float | None = None  # nats; None: estimated on the first `warmup` losses
    warmup: int = DEFAULT_WARMUP

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
        for option in options:
            key, _, value = option.rpartition("=")
            try:
                if option in DIRECTIONS:
                    direction = "up" if option == "up" else "both"
                elif key == "scale":
                    scale = float(value)
                elif key == "warmup":
                    warmup = int(value)
                else:
                    params.append((key or DETECTORS[name].knob, float(value)))
            except ValueError:
                raise ValueError(
                    f"--detector {spec!r}: {option!r} is not a number, key=number or 'up'"
                ) from None
        return cls(name, direction, tuple(params), scale, warmup)

    def build(self) -> RiverDetector[Any]:
        return DETECTORS[self.name](self.direction, self.scale, self.warmup, **dict(self.params))

    def __str__(self) -> str:
        knob = DETECTORS[self.name].knob
        parts = [self.name, *(f"{v:g}" if k == knob else f"{k}={v:g}" for k, v in self.params)]
        if self.scale is not None:
            parts.append(f"scale={self.scale:g}")
        if self.warmup != DEFAULT_WARMUP:
            parts.append(f"warmup={self.warmup}")
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
        }
