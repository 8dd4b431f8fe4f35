"""The detector contract, run against every detector in the registry."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from scipy.stats import poisson

from livelm.policy.drift import DETECTORS, DetectorConfig, RiverDetector, spread

NAMES = sorted(DETECTORS)
CHANGE_AT = 1000
MAX_DELAY = 100  # documents after the change by which every detector must have fired


def losses(seed: int, n: int, shift: float = 0.0, at: int = CHANGE_AT) -> list[float]:
    """Per-document losses around 3.5 nats with a spread of 1; `shift` added from `at` on."""
    rng = random.Random(seed)
    return [rng.gauss(3.5 + (shift if i >= at else 0.0), 1.0) for i in range(n)]


def alarms(detector: RiverDetector[Any], xs: list[float]) -> list[int]:
    return [i for i, x in enumerate(xs) if detector.update(x).drift_detected]


@pytest.mark.parametrize("name", NAMES)
def test_fires_soon_after_a_step_change(name: str) -> None:
    fired = alarms(DETECTORS[name](), losses(0, CHANGE_AT + 300, shift=2.0))
    after = [i for i in fired if i >= CHANGE_AT]
    assert after and after[0] - CHANGE_AT <= MAX_DELAY, fired


@pytest.mark.parametrize("name", NAMES)
def test_false_alarms_stay_within_the_configured_rate(name: str) -> None:
    detector = DETECTORS[name]()
    n = 10_000
    fired = alarms(detector, losses(1, n))
    # The configured rate bounds the expected count; allow the Poisson 99th percentile of it.
    assert len(fired) <= poisson.ppf(0.99, detector.false_alarm_rate * n), fired


@pytest.mark.parametrize("name", NAMES)
def test_reset_makes_it_as_new(name: str) -> None:
    xs = losses(2, CHANGE_AT + 200, shift=2.0)
    used = DETECTORS[name]()
    alarms(used, xs)
    used.reset()
    assert not used.drift_detected and used.scale is None and used.state()["seen"] == 0
    assert alarms(used, xs) == alarms(DETECTORS[name](), xs)


@pytest.mark.parametrize("name", NAMES)
def test_a_pickled_detector_carries_on_identically(name: str) -> None:
    xs = losses(3, CHANGE_AT + 200, shift=2.0)
    detector = DETECTORS[name]()
    alarms(detector, xs[:600])
    copy = pickle.loads(pickle.dumps(detector))
    assert alarms(copy, xs[600:]) == alarms(detector, xs[600:])


@pytest.mark.parametrize("name", NAMES)
def test_direction_up_ignores_a_fall_and_reports_a_rise(name: str) -> None:
    falling = DETECTORS[name](direction="up")
    assert [i for i in alarms(falling, losses(4, 1300, shift=-2.0)) if i >= CHANGE_AT] == []
    rising = alarms(DETECTORS[name](direction="up"), losses(4, 1300, shift=2.0))
    assert any(CHANGE_AT <= i <= CHANGE_AT + MAX_DELAY for i in rising)


@pytest.mark.parametrize("name", NAMES)
def test_the_scale_makes_detection_independent_of_the_loss_spread(name: str) -> None:
    base = losses(5, CHANGE_AT + 300, shift=2.0)
    narrow = [3.5 + (x - 3.5) * 0.1 for x in base]  # a tiny model's spread: 0.1 nats
    assert alarms(DETECTORS[name](), narrow) == alarms(DETECTORS[name](), base)
    fixed = DETECTORS[name](scale=0.1)
    alarms(fixed, narrow)
    assert fixed.scale == 0.1


def test_spread_ignores_a_trend() -> None:
    rng = random.Random(6)
    noise = [rng.gauss(0.0, 0.5) for _ in range(2000)]
    trending = [x - 0.01 * i for i, x in enumerate(noise)]  # a learner's loss falling
    assert spread(trending) == pytest.approx(0.5, rel=0.05)
    assert spread([2.0] * 10) == 0.0


def test_state_describes_the_detector_at_the_drift() -> None:
    detector = DETECTORS["adwin"]()
    xs = losses(7, CHANGE_AT + 300, shift=2.0)
    first = alarms(detector, xs)
    assert first
    detector = DETECTORS["adwin"]()
    for x in xs[: first[0] + 1]:
        detector.update(x)
    state = detector.state()
    assert detector.drift_detected
    assert state["scale"] == spread(xs[: detector.warmup])
    assert 0 < state["seen"] <= first[0] + 1
    assert {"width", "estimation", "variance", "mean"} <= set(state)


def test_specs_parse_and_errors_name_the_flag() -> None:
    config = DetectorConfig.parse("kswin:0.001:window_size=200:scale=0.5:up")
    assert config == DetectorConfig("kswin", "up", (("alpha", 0.001), ("window_size", 200.0)), 0.5)
    assert DetectorConfig.parse(str(config)) == config
    detector = config.build()
    assert detector.params["window_size"] == 200 and isinstance(detector.params["window_size"], int)
    assert detector.false_alarm_rate == 0.001
    assert config.to_dict()["params"]["alpha"] == 0.001
    with pytest.raises(ValueError, match="--detector 'cusum'"):
        DetectorConfig.parse("cusum")
    with pytest.raises(ValueError, match="no parameter bogus"):
        DetectorConfig.parse("adwin:bogus=1")
    with pytest.raises(ValueError, match="not a number"):
        DetectorConfig.parse("adwin:fast")
    with pytest.raises(ValueError, match="must be positive"):
        DetectorConfig.parse("page-hinkley:-5")
