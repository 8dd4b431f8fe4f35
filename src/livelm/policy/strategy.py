"""Strategies: a learner config and a policy, by preset name, composed from options.

`--strategy` is a comma-separated list of specs. A spec is a preset name, optionally followed by
`+key=value` options that change its learner or its policy:

    online+lr=1e-3+rank=8+step-tokens=512+replay=0.25+detector=adwin+on-drift=rewarm/reset

The keys are the option flags of `livelm replay` without their dashes (`livelm.policy.options`
lists them: `lr`, `rank`, `step-tokens`, ... for the learner; `replay`, `detector`, `anchor`, ...
for the policy); inside a spec, lists take `/` (`on-drift=rewarm/reset`, `targets=q_proj/v_proj`)
since `,` separates specs, and `none` turns an option off. The flags themselves (`--replay 0.25`,
`--lr 1e-3`) apply to every *learning* strategy named (the LoRA ones, `--rank` and the other
LoRA flags; every one, `--precision`, so that all are scored alike), where a spec's own options
win; a strategy they changed is named with them appended, so the report says what ran.
`static` only takes options that need no learning (`static+detector=adwin` watches the stream
without learning from it; `static+docs-per-step=64` scores more documents per forward pass).

Presets live here rather than beside `STRATEGIES` in `livelm.learner.config` because policies
build on learners, not the other way round; each names a learner strategy, so a change to
`online` carries over to every `online-*` preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from livelm.learner.config import STRATEGIES, LearnerConfig
from livelm.policy.config import AnchorConfig, PolicyConfig
from livelm.policy.drift import DetectorConfig
from livelm.policy.options import OPTIONS, POLICY_OPTIONS, Option
from livelm.policy.span import Span

__all__ = [
    "POLICY_OPTIONS",
    "POLICY_PRESETS",
    "Strategy",
    "apply_options",
    "known_strategies",
    "parse_strategies",
    "parse_strategy",
]


@dataclass(frozen=True)
class Strategy:
    """What one run of `replay` (or one server) uses: a name, a learner and its policy."""

    name: str
    learner: LearnerConfig
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def to_dict(self) -> dict[str, Any]:
        """The learner's fields, with the policy's under `policy`; sorted, for reports."""
        return dict(sorted({**self.learner.to_dict(), "policy": self.policy.to_dict()}.items()))


# name -> (learner strategy, policy). Each builds on `online`, whose weight decay keeps the
# adapters near the base weights (its comment in livelm.learner.config); `--anchor` adds a pull
# toward the base on top of it.
POLICY_PRESETS: dict[str, tuple[str, PolicyConfig]] = {
    # A quarter of each step replays the reservoir: the whole stream so far, uniformly.
    "online-replay": ("online", PolicyConfig(replay=0.25)),
    # Replay the last 500 documents only, the older of them weighing less.
    "online-window": ("online", PolicyConfig(replay=0.25, window=Span(500), half_life=Span(250))),
    # Watch the stream; on a drift, restart the warm-up with fresh moments and replay more.
    "online-drift": (
        "online",
        PolicyConfig(
            replay=0.125,
            detector=DetectorConfig("adwin"),
            on_drift=("rewarm", "reset", "boost"),
            boost=0.5,
        ),
    ),
    # EWC: a pull toward the base weights, each weighed by its Fisher information, which comes
    # from reference documents.
    "online-ewc": ("online", PolicyConfig(anchor=AnchorConfig("ewc", 0.1))),
    # The recommended combination for long streams: a quarter replayed from the reservoir, ADWIN
    # reporting drifts.
    "online-guarded": ("online", PolicyConfig(replay=0.25, detector=DetectorConfig("adwin"))),
}


def known_strategies() -> list[str]:
    return [*STRATEGIES, *POLICY_PRESETS]


def _unfit(key: str, option: Option, name: str, learner: LearnerConfig) -> str:
    """Why `key` means nothing for preset `name` (whose learner it does not apply to)."""
    if option.scope == "lora" and learner.learns:
        return f"{key} is a LoRA option and {name} updates every weight"
    return f"{name} learns nothing, so {key} would do nothing"


def apply_options(
    learner: LearnerConfig, policy: PolicyConfig, options: Mapping[str, str], where: str
) -> tuple[LearnerConfig, PolicyConfig]:
    """`learner` and `policy` with `options` (key -> value, as in a spec) applied; errors name
    `where`. Options the learner has no use for are refused (see `Option.scope`)."""
    changes: dict[str, dict[str, object]] = {"learner": {}, "policy": {}}
    for key, value in options.items():
        option = OPTIONS.get(key)
        if option is None:
            raise ValueError(f"{where}: unknown option {key!r}; known: {', '.join(OPTIONS)}")
        try:
            changes[option.on].update(option.parse(value))
        except ValueError as e:
            raise ValueError(f"{where}: {key}={value}: {e}") from None
    try:
        return learner.replace(**changes["learner"]), policy.replace(**changes["policy"])
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
    """One spec (`preset[+key=value]...`), with the option flags for the strategies they fit.

    >>> s = parse_strategy("online+rank=8", {"lr": "1e-3", "replay": "0.25"})
    >>> s.name, s.learner.lora_r, s.learner.lr, s.policy.replay
    ('online+rank=8+lr=1e-3+replay=0.25', 8, 0.001, 0.25)
    """
    name, *parts = spec.strip().split("+")
    name = name.strip()
    learner, policy = _preset(name)
    where = f"--strategy {spec!r}"
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or key.strip() in options:
            raise ValueError(f"{where}: write name+key=value, each key once")
        options[key.strip()] = value.strip()
    for key in options:
        option = OPTIONS.get(key)
        if option is not None and not option.applies_to(learner):
            raise ValueError(f"{where}: {_unfit(key, option, name, learner)}")
    # The flags are for learning strategies, each where it fits (precision for static too).
    inherited = {
        k: v
        for k, v in (flags or {}).items()
        if k not in options and k in OPTIONS and OPTIONS[k].flag_applies_to(learner)
    }
    learner, policy = apply_options(learner, policy, {**inherited, **options}, where)
    if not learner.learns and policy.learning_options():
        raise ValueError(
            f"{where} learns nothing, so {', '.join(policy.learning_options())} would do nothing"
        )
    full_name = spec.strip() + "".join(f"+{k}={v.replace(',', '/')}" for k, v in inherited.items())
    return Strategy(full_name, learner, policy)


def parse_strategies(spec: str, flags: Mapping[str, str] | None = None) -> tuple[Strategy, ...]:
    """Comma-separated specs; `flags` (option key -> value) apply to the learning ones."""
    for key, value in (flags or {}).items():
        if key not in OPTIONS:
            raise ValueError(f"--{key} is not a strategy option; known: {', '.join(OPTIONS)}")
        try:
            OPTIONS[key].parse(value)
        except ValueError as e:
            raise ValueError(f"--{key} {value}: {e}") from None
    strategies = tuple(parse_strategy(s, flags) for s in spec.split(",") if s.strip())
    for key in flags or {}:
        if not any(OPTIONS[key].flag_applies_to(s.learner) for s in strategies):
            kind = "LoRA" if OPTIONS[key].scope == "lora" else "learning"
            raise ValueError(
                f"--{key} applies to {kind} strategies, and --strategy {spec!r} names none"
                + (" (give static its options as static+key=value)" if kind == "learning" else "")
            )
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"--strategy {spec!r} names a strategy twice")
    return strategies
