"""The options of a strategy: `+key=value` in a spec, `--key value` as a flag of `livelm replay`.

Each option names the config fields its value sets, on the learner (`LearnerConfig`) or on the
policy (`PolicyConfig`), and carries its help text; the CLI builds its flags from this table, so
a flag, a spec option and its help cannot drift apart. The defaults shown in the help are those
of `online`, the default strategy's learner, read from its config.

Values parse into typed fields here, at the edge; a bad value raises one `ValueError` line that
the caller prefixes with the flag or spec it came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from livelm.learner.config import STRATEGIES, LearnerConfig, Optimizer, Precision
from livelm.policy.config import DRIFT_ACTIONS, AnchorConfig
from livelm.policy.drift import DETECTORS, DetectorConfig
from livelm.policy.span import Span

# all: any strategy; learning: one that updates weights; lora: a LoRA learner.
Scope = Literal["all", "learning", "lora"]


@dataclass(frozen=True)
class Option:
    """One option: what its value sets, on which config, for which learners, and its help."""

    parse: Callable[[str], dict[str, Any]]  # value -> {config field: typed value}
    help: str
    on: Literal["learner", "policy"]
    scope: Scope = "all"  # for learner options; a policy checks its own (`learning_options`)
    # As a flag, applies to strategies that learn nothing too: it changes their scores, and a
    # comparison wants every strategy scored alike (precision).
    scores: bool = False

    def applies_to(self, learner: LearnerConfig) -> bool:
        if self.scope == "learning":
            return learner.learns
        if self.scope == "lora":
            return learner.update == "lora"
        return True

    def flag_applies_to(self, learner: LearnerConfig) -> bool:
        """Whether the `--key` flag changes a strategy with this learner: learning ones (or all,
        for a `scores` option) that the option fits."""
        return (learner.learns or self.scores) and self.applies_to(learner)


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda value: None if value.lower() in ("none", "off") else parse(value)


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _positive(value: str) -> float:
    number = _number(value)
    if not 0 < number < float("inf"):
        raise ValueError("must be a positive number")
    return number


def _non_negative(value: str) -> float:
    number = _number(value)
    if not 0 <= number < float("inf"):
        raise ValueError("must be a number >= 0")
    return number


def _at_least(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < low:
            raise ValueError(f"must be at least {low}")
        return number

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"choose from {', '.join(choices)}")
        return value

    return parse


def _names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in re.split(r"[,/]", value) if n.strip())
    if not names:
        raise ValueError("name at least one module (q_proj/v_proj, or all-linear)")
    return names


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


_ONLINE = STRATEGIES["online"]


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    return str(value)


def _learner(
    field: str,
    parse: Callable[[str], Any],
    text: str,
    scope: Scope = "learning",
    scores: bool = False,
) -> Option:
    """A learner option setting one field; its help shows the field's value in `online`."""
    shown = _show(getattr(_ONLINE, field))
    text = f"{text} (online: {shown})"
    return Option(lambda v: {field: parse(v)}, text, "learner", scope, scores)


def _policy(parse: Callable[[str], dict[str, Any]], text: str) -> Option:
    return Option(parse, text, "policy")


OPTIONS: dict[str, Option] = {
    # -- the learner ----------------------------------------------------------------------------
    "lr": _learner("lr", _positive, "peak learning rate"),
    "weight-decay": _learner(
        "weight_decay",
        _non_negative,
        "decoupled weight decay: each step shrinks the trained weights (LoRA: the adapters, so "
        "toward the base) by lr x this",
    ),
    "lr-decay-steps": _learner(
        "lr_decay_steps",
        _none_or(_at_least(1)),
        "the lr falls as 1/sqrt(1 + steps/this) from the start or the last rewarm; none: constant",
    ),
    "lr-floor": _learner(
        "lr_floor", _positive, "the falling lr never goes under this fraction of its peak"
    ),
    "warmup-steps": _learner("warmup_steps", _at_least(0), "steps of linear learning-rate warm-up"),
    "optimizer": _learner("optimizer", _choice(get_args(Optimizer)), "sgd or adamw"),
    "precision": _learner(
        "precision",
        _choice(get_args(Precision)),
        "auto (bf16 where supported), bf16 or fp32; as a flag, static's scores too",
        "all",
        scores=True,
    ),
    "docs-per-step": _learner(
        "max_docs_per_step", _at_least(1), "documents a step takes at most", "all"
    ),
    "step-tokens": _learner(
        "step_tokens",
        _none_or(_at_least(1)),
        "close a step once its documents hold this many tokens; a longer document is a step of "
        "its own; none: steps by --docs-per-step alone",
        "all",
    ),
    "rank": _learner("lora_r", _at_least(1), "LoRA rank", "lora"),
    "alpha": _learner(
        "lora_alpha", _at_least(1), "LoRA alpha; the update scales by alpha/rank", "lora"
    ),
    "targets": _learner(
        "lora_targets",
        _names,
        "modules LoRA adapts, e.g. q_proj,v_proj (in a spec q_proj/v_proj), or all-linear",
        "lora",
    ),
    "last-layers": _learner(
        "lora_last_layers",
        _none_or(_at_least(1)),
        "LoRA on the top N blocks only; none: every block",
        "lora",
    ),
    # -- the policy -----------------------------------------------------------------------------
    "replay": _policy(
        lambda v: {"replay": float(v)},
        "replayed documents per new document in each step, e.g. 0.25",
    ),
    "replay-size": _policy(
        lambda v: {"replay_size": int(v)}, "documents the replay memory holds (default 2000)"
    ),
    "replay-bytes": _policy(
        lambda v: {"replay_bytes": _bytes(v)},
        "bytes the replay memory holds, e.g. 64MB (the default)",
    ),
    "window": _policy(
        lambda v: {"window": _none_or(Span.parse)(v)},
        "replay from the last N documents, or a time span (30d, 12h) of stream time",
    ),
    "half-life": _policy(
        lambda v: {"half_life": _none_or(Span.parse)(v)},
        "replayed documents weigh 0.5 ** (age / half-life); documents or time",
    ),
    "detector": _policy(
        lambda v: {"detector": _none_or(DetectorConfig.parse)(v)},
        f"drift detector on the loss: {', '.join(DETECTORS)}[:knob][:up]",
    ),
    "on-drift": _policy(
        lambda v: {"on_drift": () if v.lower() == "none" else _actions(v)},
        f"what a drift does, comma-separated: {', '.join(DRIFT_ACTIONS)}",
    ),
    "boost": _policy(_boost, "on-drift boost: replay share and steps, e.g. 1.0:20 (the default)"),
    "anchor": _policy(
        lambda v: {"anchor": _none_or(AnchorConfig.parse)(v)},
        "pull toward the base weights: l2sp:STRENGTH or ewc:STRENGTH[:DOCS]",
    ),
    "webhook": _policy(
        lambda v: {"webhook": _none_or(str)(v)}, "POST each drift event as JSON to this http(s) URL"
    ),
}
LEARNER_OPTIONS = tuple(k for k, o in OPTIONS.items() if o.on == "learner")
POLICY_OPTIONS = tuple(k for k, o in OPTIONS.items() if o.on == "policy")
