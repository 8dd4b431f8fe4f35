"""Strategies: a learner config and a policy, by preset name, composed from options.

`--strategy` is a comma-separated list of specs. A spec is a preset name, optionally followed by
`+key=value` options that change its policy:

    online+replay=0.25+detector=adwin+on-drift=rewarm/reset+anchor=l2sp:0.01

The keys are the policy flags of `livelm replay` without their dashes (`replay`, `replay-size`,
`replay-bytes`, `window`, `half-life`, `detector`, `on-drift`, `boost`, `anchor`, `webhook`);
inside a spec, lists take `/` (`on-drift=rewarm/reset`) since `,` separates specs, and `none`
turns an option off. The policy flags themselves (`--replay 0.25`) apply to every *learning*
strategy named, where a spec's own options win; a strategy they changed is named with them
appended, so the report says what ran. `static` only takes options that need no learning
(`static+detector=adwin` watches the stream without learning from it).

Presets live here rather than beside `STRATEGIES` in `livelm.learner.config` because policies
build on learners, not the other way round; each names a learner strategy, so a change to
`online` carries over to every `online-*` preset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from livelm.learner.config import STRATEGIES, LearnerConfig
from livelm.policy.anchor import AnchorConfig
from livelm.policy.config import DRIFT_ACTIONS, PolicyConfig
from livelm.policy.drift import DetectorConfig
from livelm.policy.span import Span


@dataclass(frozen=True)
class Strategy:
    """What one run of `replay` (or one server) uses: a name, a learner and its policy."""

    name: str
    learner: LearnerConfig
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def to_dict(self) -> dict[str, Any]:
        """The learner's fields, with the policy's under `policy`; sorted, for reports."""
        return dict(sorted({**self.learner.to_dict(), "policy": self.policy.to_dict()}.items()))


# name -> (learner strategy, policy). Measured on news in BENCHMARKS.md ("Drift and forgetting").
POLICY_PRESETS: dict[str, tuple[str, PolicyConfig]] = {
    # A quarter of each step replays the reservoir: the whole stream so far, uniformly.
    "online-replay": ("online", PolicyConfig(replay=0.25)),
    # Replay the last 500 documents only, the older of them weighing less.
    "online-window": (
        "online",
        PolicyConfig(replay=0.25, window=Span(500), half_life=Span(250)),
    ),
    # Watch the loss; on a drift, restart the warm-up with fresh moments and replay more.
    "online-drift": (
        "online",
        PolicyConfig(
            replay=0.125,
            detector=DetectorConfig("adwin"),
            on_drift=("rewarm", "reset", "boost"),
            boost=0.5,
        ),
    ),
    # Pulled toward the base weights (L2-SP). On 120 news documents, 0.1 kept 99% of online's
    # gain and 1.0 kept 86%; the pull grows with the distance, so with the stream's length.
    "online-anchored": ("online", PolicyConfig(anchor=AnchorConfig("l2sp", 0.1))),
    # The same with EWC, whose Fisher information comes from reference documents.
    "online-ewc": ("online", PolicyConfig(anchor=AnchorConfig("ewc", 0.1))),
    # The recommended combination: anchored, a quarter replayed from the reservoir (which paid
    # for its 8% of compute with a slightly better perplexity), ADWIN reporting drifts.
    "online-guarded": (
        "online",
        PolicyConfig(
            replay=0.25, anchor=AnchorConfig("l2sp", 0.1), detector=DetectorConfig("adwin")
        ),
    ),
}


def known_strategies() -> list[str]:
    return [*STRATEGIES, *POLICY_PRESETS]


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda value: None if value.lower() in ("none", "off") else parse(value)


def _actions(value: str) -> tuple[str, ...]:
    actions = tuple(a.strip() for a in re.split(r"[,/]", value) if a.strip())
    unknown = [a for a in actions if a not in DRIFT_ACTIONS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: choose from {', '.join(DRIFT_ACTIONS)}")
    return actions


def _bytes(value: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", value.lower())
    if match is None:
        raise ValueError(f"{value!r} is not a size (write 65536, 512KB, 64MB or 1GB)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _boost(value: str) -> dict[str, Any]:
    share, _, steps = value.partition(":")
    changes: dict[str, Any] = {"boost": float(share)}
    if steps:
        changes["boost_steps"] = int(steps)
    return changes


# option key -> the PolicyConfig fields its value sets
_OPTIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "replay": lambda v: {"replay": float(v)},
    "replay-size": lambda v: {"replay_size": int(v)},
    "replay-bytes": lambda v: {"replay_bytes": _bytes(v)},
    "window": lambda v: {"window": _none_or(Span.parse)(v)},
    "half-life": lambda v: {"half_life": _none_or(Span.parse)(v)},
    "detector": lambda v: {"detector": _none_or(DetectorConfig.parse)(v)},
    "on-drift": lambda v: {"on_drift": () if v.lower() == "none" else _actions(v)},
    "boost": _boost,
    "anchor": lambda v: {"anchor": _none_or(AnchorConfig.parse)(v)},
    "webhook": lambda v: {"webhook": _none_or(str)(v)},
}
POLICY_OPTIONS = tuple(_OPTIONS)


def apply_options(policy: PolicyConfig, options: Mapping[str, str], where: str) -> PolicyConfig:
    """`policy` with `options` (key -> value, as in a spec) applied; errors name `where`."""
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if key not in _OPTIONS:
            raise ValueError(f"{where}: unknown option {key!r}; known: {', '.join(_OPTIONS)}")
        try:
            changes.update(_OPTIONS[key](value))
        except ValueError as e:
            raise ValueError(f"{where}: {key}={value}: {e}") from None
    try:
        return policy.replace(**changes)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _preset(name: str) -> tuple[LearnerConfig, PolicyConfig]:
    if name in STRATEGIES:
        return STRATEGIES[name], PolicyConfig()
    if name in POLICY_PRESETS:
        learner, policy = POLICY_PRESETS[name]
        return STRATEGIES[learner], policy
    known = ", ".join(known_strategies())
    raise ValueError(f"--strategy {name!r} is not known; choose from {known}")


def parse_strategy(spec: str, flags: Mapping[str, str] | None = None) -> Strategy:
    """One spec (`preset[+key=value]...`), with the policy flags for learning strategies."""
    name, *parts = spec.strip().split("+")
    learner, policy = _preset(name.strip())
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or key.strip() in options:
            raise ValueError(f"--strategy {spec!r}: write name+key=value, each key once")
        options[key.strip()] = value.strip()
    inherited = {k: v for k, v in (flags or {}).items() if k not in options}
    if not learner.learns:
        inherited = {}  # the flags are for learning strategies; static takes options only
    policy = apply_options(policy, {**inherited, **options}, f"--strategy {spec!r}")
    if not learner.learns and policy.learning_options():
        raise ValueError(
            f"--strategy {spec!r} learns nothing, so {', '.join(policy.learning_options())} "
            "would do nothing"
        )
    full_name = spec.strip() + "".join(f"+{k}={v.replace(',', '/')}" for k, v in inherited.items())
    return Strategy(full_name, learner, policy)


def parse_strategies(spec: str, flags: Mapping[str, str] | None = None) -> tuple[Strategy, ...]:
    """Comma-separated specs; `flags` (option key -> value) apply to the learning ones."""
    for key, value in (flags or {}).items():
        if key not in _OPTIONS:
            raise ValueError(f"--{key} is not a policy flag; known: {', '.join(_OPTIONS)}")
        try:
            _OPTIONS[key](value)
        except ValueError as e:
            raise ValueError(f"--{key} {value}: {e}") from None
    strategies = tuple(parse_strategy(s, flags) for s in spec.split(",") if s.strip())
    if flags and not any(s.learner.learns for s in strategies):
        raise ValueError(
            f"--{next(iter(flags))} applies to learning strategies, and --strategy {spec!r} "
            "names none (give static its options as static+key=value)"
        )
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"--strategy {spec!r} names a strategy twice")
    return strategies
