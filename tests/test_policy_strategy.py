"""Strategies compose from presets, `+key=value` options and the policy flags."""

from __future__ import annotations

import json

import pytest

from livelm.learner import STRATEGIES
from livelm.policy import (
    POLICY_PRESETS,
    AnchorConfig,
    DetectorConfig,
    PolicyConfig,
    Span,
    known_strategies,
    parse_strategies,
)


def test_every_preset_parses_and_learns_with_its_learner() -> None:
    for name in known_strategies():
        (strategy,) = parse_strategies(name)
        assert strategy.name == name
        if name in POLICY_PRESETS:
            assert strategy.learner == STRATEGIES[POLICY_PRESETS[name][0]]
            assert strategy.policy != PolicyConfig()


def test_a_spec_composes_options_onto_its_preset() -> None:
    (s,) = parse_strategies(
        "online+replay=0.25+detector=adwin:up+on-drift=rewarm/reset+anchor=l2sp:0.01"
        "+window=30d+half-life=7d+replay-size=500+replay-bytes=8MB+boost=2:5"
    )
    assert s.learner == STRATEGIES["online"]
    assert s.policy == PolicyConfig(
        replay=0.25,
        replay_size=500,
        replay_bytes=8 << 20,
        window=Span.parse("30d"),
        half_life=Span.parse("7d"),
        detector=DetectorConfig("adwin", "up"),
        on_drift=("rewarm", "reset"),
        boost=2.0,
        boost_steps=5,
        anchor=AnchorConfig("l2sp", 0.01),
    )
    (off,) = parse_strategies("online-anchored+anchor=none")
    assert off.policy.anchor is None


def test_flags_apply_to_learning_strategies_and_show_in_their_names() -> None:
    flags = {"replay": "0.25", "detector": "adwin", "on-drift": "rewarm,reset"}
    static, online, drift = parse_strategies("static,online,online-drift+replay=0.5", flags)
    assert static.name == "static" and static.policy == PolicyConfig()
    assert online.name == "online+replay=0.25+detector=adwin+on-drift=rewarm/reset"
    assert online.policy.replay == 0.25 and online.policy.on_drift == ("rewarm", "reset")
    # A spec's own option wins over the flag, and the flag it overrides is not in the name.
    assert drift.policy.replay == 0.5
    assert drift.name == "online-drift+replay=0.5+detector=adwin+on-drift=rewarm/reset"


def test_static_can_watch_the_stream() -> None:
    (s,) = parse_strategies("static+detector=kswin")
    assert s.policy.detector == DetectorConfig("kswin")
    with pytest.raises(ValueError, match="learns nothing, so replay"):
        parse_strategies("static+replay=0.5")
    with pytest.raises(ValueError, match="--replay applies to learning strategies"):
        parse_strategies("static", {"replay": "0.5"})


def test_the_config_is_sorted_json_with_the_policy() -> None:
    (s,) = parse_strategies("online-drift")
    config = s.to_dict()
    assert list(config) == sorted(config)
    assert config["lr"] == STRATEGIES["online"].lr
    assert config["policy"]["detector"]["name"] == "adwin"
    assert list(config["policy"]) == sorted(config["policy"])
    json.dumps(config, allow_nan=False)


@pytest.mark.parametrize(
    ("spec", "flags", "message"),
    [
        ("bogus", None, "--strategy 'bogus' is not known"),
        ("online+replay", None, "write name\\+key=value"),
        ("online+speed=2", None, "unknown option 'speed'"),
        ("online+replay=lots", None, "replay=lots"),
        ("online+window=10", None, "--window shapes replay"),
        ("online,online", None, "names a strategy twice"),
        ("online", {"detector": "cusum"}, "--detector cusum"),
        ("online", {"on-drift": "panic"}, "--on-drift panic"),
        ("online", {"replay-bytes": "lots"}, "--replay-bytes lots"),
    ],
)
def test_errors_name_what_to_change(spec: str, flags: dict[str, str] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_strategies(spec, flags)
