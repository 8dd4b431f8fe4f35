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
    (off,) = parse_strategies("online+anchor=none")
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


def test_learner_options_compose_onto_the_preset_and_show_in_the_name() -> None:
    (s,) = parse_strategies(
        "online-drift+lr=1e-3+rank=8+alpha=16+step-tokens=512+docs-per-step=32"
        "+warmup-steps=0+targets=q_proj/v_proj+last-layers=1+optimizer=sgd+precision=fp32"
        "+weight-decay=0.5+lr-decay-steps=50+lr-floor=0.5"
    )
    assert s.learner == STRATEGIES["online"].replace(
        lr=1e-3,
        lora_r=8,
        lora_alpha=16,
        step_tokens=512,
        max_docs_per_step=32,
        warmup_steps=0,
        lora_targets=("q_proj", "v_proj"),
        lora_last_layers=1,
        optimizer="sgd",
        precision="fp32",
        weight_decay=0.5,
        lr_decay_steps=50,
        lr_floor=0.5,
    )
    assert s.policy == POLICY_PRESETS["online-drift"][1]  # the preset's policy is kept
    (off,) = parse_strategies("online+step-tokens=none+last-layers=none+lr-decay-steps=none")
    assert off.learner == STRATEGIES["online"].replace(step_tokens=None, lr_decay_steps=None)


def test_learner_flags_apply_where_they_fit_and_a_spec_wins() -> None:
    flags = {"lr": "1e-3", "rank": "8", "step-tokens": "256", "targets": "q_proj,v_proj"}
    static, seed, online, mine = parse_strategies("static,seed,online,online+lr=5e-4", flags)
    assert static.name == "static" and static.learner == STRATEGIES["static"]
    # seed updates every weight: the LoRA flags pass it by, the others apply.
    assert seed.name == "seed+lr=1e-3+step-tokens=256"
    assert seed.learner == STRATEGIES["seed"].replace(lr=1e-3, step_tokens=256)
    assert online.name == "online+lr=1e-3+rank=8+step-tokens=256+targets=q_proj/v_proj"
    assert online.learner.lora_targets == ("q_proj", "v_proj") and online.learner.lora_r == 8
    assert mine.name == "online+lr=5e-4+rank=8+step-tokens=256+targets=q_proj/v_proj"
    assert mine.learner.lr == 5e-4
    # --precision changes scores, so it reaches static too: every strategy is scored alike.
    scored, online_fp32 = parse_strategies("static,online", {"precision": "fp32"})
    assert scored.name == "static+precision=fp32" and scored.learner.precision == "fp32"
    assert online_fp32.learner.precision == "fp32"
    # A spec shapes static's scoring steps, which needs no learning.
    (scoring,) = parse_strategies("static+docs-per-step=64+step-tokens=4096+precision=fp32")
    assert scoring.learner == STRATEGIES["static"].replace(
        max_docs_per_step=64, step_tokens=4096, precision="fp32"
    )


@pytest.mark.parametrize(
    ("spec", "flags", "message"),
    [
        ("online+lr=-1", None, "--strategy 'online\\+lr=-1': lr=-1: must be a positive number"),
        ("online+lr=fast", None, "lr=fast: 'fast' is not a number"),
        ("online+rank=0", None, "rank=0: must be at least 1"),
        ("online+weight-decay=-1", None, "weight-decay=-1: must be a number >= 0"),
        ("static+weight-decay=1", None, "static learns nothing, so weight-decay would do nothing"),
        ("online+step-tokens=many", None, "step-tokens=many: 'many' is not a whole number"),
        ("online+optimizer=adam", None, "optimizer=adam: choose from sgd, adamw"),
        ("online+precision=fp16", None, "precision=fp16: choose from auto, bf16, fp32"),
        ("online+targets=/", None, "targets=/: name at least one module"),
        ("online-full+rank=8", None, "rank is a LoRA option and online-full updates every weight"),
        ("static+lr=1e-3", None, "static learns nothing, so lr would do nothing"),
        ("online", {"lr": "0"}, "--lr 0: must be a positive number"),
        ("online", {"docs-per-step": "0"}, "--docs-per-step 0: must be at least 1"),
        ("seed", {"rank": "8"}, "--rank applies to LoRA strategies, and --strategy 'seed'"),
        ("static", {"step-tokens": "64"}, "--step-tokens applies to learning strategies"),
        ("online", {"speed": "2"}, "--speed is not a strategy option"),
    ],
)
def test_learner_option_errors_name_the_option(
    spec: str, flags: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_strategies(spec, flags)
