"""Policies around the score-and-learn step: drift detection and its actions, replay from a
reservoir or a sliding window, forgetting by age, anchoring to the base weights, and the
monitoring scores (surprise, emerging terms). `PolicyLearner` composes them behind
`Learner.step`'s signature."""

from typing import TYPE_CHECKING

from livelm.lazy import lazy_names
from livelm.policy.config import DRIFT_ACTIONS, AnchorConfig, PolicyConfig
from livelm.policy.drift import DETECTORS, Detector, DetectorConfig
from livelm.policy.events import DriftEvent
from livelm.policy.monitor import EmergingTerms, SurpriseMonitor, TopSurprises
from livelm.policy.span import Span, stream_time
from livelm.policy.strategy import (
    POLICY_OPTIONS,
    POLICY_PRESETS,
    Strategy,
    known_strategies,
    parse_strategies,
    parse_strategy,
)

if TYPE_CHECKING:
    from livelm.policy.anchor import EWC, L2SP, make_anchor
    from livelm.policy.decay import Decay, decay_weight
    from livelm.policy.memory import MemoryItem
    from livelm.policy.reservoir import Reservoir
    from livelm.policy.stack import PolicyLearner, build_learner, core_learner
    from livelm.policy.window import SlidingWindow

# These import torch, PEFT or transformers: a strategy's parsing and `--help` need none of them.
__getattr__ = lazy_names(
    __name__,
    {
        "livelm.policy.anchor": ("EWC", "L2SP", "make_anchor"),
        "livelm.policy.decay": ("Decay", "decay_weight"),
        "livelm.policy.memory": ("MemoryItem",),
        "livelm.policy.reservoir": ("Reservoir",),
        "livelm.policy.stack": ("PolicyLearner", "build_learner", "core_learner"),
        "livelm.policy.window": ("SlidingWindow",),
    },
)

__all__ = [
    "DETECTORS",
    "DRIFT_ACTIONS",
    "EWC",
    "L2SP",
    "POLICY_OPTIONS",
    "POLICY_PRESETS",
    "AnchorConfig",
    "Decay",
    "Detector",
    "DetectorConfig",
    "DriftEvent",
    "EmergingTerms",
    "MemoryItem",
    "PolicyConfig",
    "PolicyLearner",
    "Reservoir",
    "SlidingWindow",
    "Span",
    "Strategy",
    "SurpriseMonitor",
    "TopSurprises",
    "build_learner",
    "core_learner",
    "decay_weight",
    "known_strategies",
    "make_anchor",
    "parse_strategies",
    "parse_strategy",
    "stream_time",
]
