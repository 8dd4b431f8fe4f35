"""What a policy does around the score-and-learn step: replay, window, decay, drift, anchoring.

A `PolicyConfig` is frozen and validated at construction, and is written into reports as sorted
JSON beside the learner's config. The empty config is the plain learner (plus the surprise
score, which costs nothing). `AnchorConfig` is its `--anchor` spec; the penalty it names is
`livelm.policy.anchor`'s. Nothing here imports torch: the command line parses these settings,
and shows their defaults in `--help`, before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from livelm.policy.drift import DetectorConfig
from livelm.policy.span import Span

DriftAction = Literal["rewarm", "reset", "boost"]
DRIFT_ACTIONS: tuple[DriftAction, ...] = ("rewarm", "reset", "boost")

AnchorKind = Literal["l2sp", "ewc"]
ANCHOR_KINDS: tuple[AnchorKind, ...] = ("l2sp", "ewc")


@dataclass(frozen=True)
class AnchorConfig:
    """`kind:strength`, as in `--anchor l2sp:0.01`; EWC estimates its Fisher information on the
    first `fisher_docs` reference documents (`ewc:100:32` sets that count)."""

    kind: AnchorKind
    strength: float
    fisher_docs: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ANCHOR_KINDS:
            raise ValueError(f"--anchor {self.kind!r}: choose from {', '.join(ANCHOR_KINDS)}")
        if not (self.strength >= 0 and math.isfinite(self.strength)):
            raise ValueError(f"--anchor strength must be >= 0, not {self.strength}")
        if self.fisher_docs < 1:
            raise ValueError(f"--anchor: EWC needs at least 1 document, not {self.fisher_docs}")

    @classmethod
    def parse(cls, spec: str) -> AnchorConfig:
        kind, _, rest = spec.strip().partition(":")
        strength, _, docs = rest.partition(":")
        if kind not in ANCHOR_KINDS or not strength:
            raise ValueError(f"--anchor {spec!r}: write l2sp:STRENGTH or ewc:STRENGTH[:DOCS]")
        try:
            if docs:
                return cls(kind, float(strength), int(docs))
            return cls(kind, float(strength))
        except ValueError as e:
            raise ValueError(f"--anchor {spec!r}: {e}") from None

    def __str__(self) -> str:
        tail = f":{self.fisher_docs}" if self.kind == "ewc" else ""
        return f"{self.kind}:{self.strength:g}{tail}"

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"kind": self.kind, "strength": self.strength}
        if self.kind == "ewc":
            fields["fisher_docs"] = self.fisher_docs
        return fields


@dataclass(frozen=True)
class PolicyConfig:
    """Replay, window, decay, drift detection and its actions, anchoring; all off by default.

    - `replay`: replayed documents per new document in each step (0.25: one for every four).
      They come from a reservoir of `replay_size` documents and `replay_bytes` bytes, uniform
      over the whole stream, or with `window` from the most recent documents only.
    - `half_life`: replayed documents weigh `0.5 ** (age / half_life)`.
    - `detector` watches the per-document loss against its trend (a learner's own learning
      curve is not a drift); on a drift the policy runs `on_drift`:
      `rewarm` (restart the learning-rate warm-up), `reset` (forget the optimizer's moments),
      `boost` (replay at least `boost` documents per new one for `boost_steps` steps), and posts
      the event to `webhook` if one is set.
    - `anchor` pulls the weights toward the base model (L2-SP or EWC).
    - `surprise_half_life`: documents over which the running loss behind surprise scores fades.
    """

    replay: float = 0.0
    replay_size: int = 2000
    replay_bytes: int = 64 << 20
    window: Span | None = None
    half_life: Span | None = None
    detector: DetectorConfig | None = None
    on_drift: tuple[DriftAction, ...] = ()
    boost: float = 1.0
    boost_steps: int = 20
    anchor: AnchorConfig | None = None
    webhook: str | None = None
    webhook_timeout: float = 5.0
    surprise_half_life: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.replay >= 0 and math.isfinite(self.replay)):
            raise ValueError(f"--replay must be a number >= 0, not {self.replay}")
        if self.replay_size < 1:
            raise ValueError(f"--replay-size must be at least 1 document, not {self.replay_size}")
        if self.replay_bytes < 1:
            raise ValueError(f"--replay-bytes must be positive, not {self.replay_bytes}")
        if not self.uses_memory and (self.window is not None or self.half_life is not None):
            flag = "--window" if self.window is not None else "--half-life"
            raise ValueError(f"{flag} shapes replay: give --replay > 0 (or --on-drift boost)")
        unknown = [a for a in self.on_drift if a not in DRIFT_ACTIONS]
        if unknown or len(set(self.on_drift)) != len(self.on_drift):
            raise ValueError(
                f"--on-drift {','.join(self.on_drift)}: name each of "
                f"{', '.join(DRIFT_ACTIONS)} at most once"
            )
        if self.detector is None and (self.on_drift or self.webhook):
            flag = "--on-drift" if self.on_drift else "--webhook"
            raise ValueError(f"{flag} acts on drifts: give a --detector too")
        if not (self.boost > 0 and math.isfinite(self.boost)) or self.boost_steps < 1:
            raise ValueError(
                f"--boost needs a positive share and at least 1 step, "
                f"not {self.boost}:{self.boost_steps}"
            )
        if self.webhook is not None and urlsplit(self.webhook).scheme not in ("http", "https"):
            raise ValueError(f"--webhook must be an http(s) URL, not {self.webhook!r}")
        if self.webhook_timeout <= 0:
            raise ValueError(f"webhook_timeout must be positive, not {self.webhook_timeout}")
        if self.surprise_half_life < 1:
            raise ValueError(f"surprise_half_life must be >= 1, not {self.surprise_half_life}")

    @property
    def uses_memory(self) -> bool:
        return self.replay > 0 or "boost" in self.on_drift

    def learning_options(self) -> list[str]:
        """The options set here that only mean something for a learner that updates weights."""
        options = []
        if self.uses_memory:
            options.append("replay" if self.replay > 0 else "on-drift boost")
        if self.anchor is not None:
            options.append("anchor")
        if {"rewarm", "reset"} & set(self.on_drift):
            options.append("on-drift")
        return options

    def replace(self, **changes: Any) -> PolicyConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "replay": self.replay,
            "replay_size": self.replay_size,
            "replay_bytes": self.replay_bytes,
            "window": None if self.window is None else str(self.window),
            "half_life": None if self.half_life is None else str(self.half_life),
            "detector": None if self.detector is None else self.detector.to_dict(),
            "on_drift": list(self.on_drift),
            "boost": self.boost,
            "boost_steps": self.boost_steps,
            "anchor": None if self.anchor is None else self.anchor.to_dict(),
            "webhook": _redacted(self.webhook),
            "webhook_timeout": self.webhook_timeout,
            "surprise_half_life": self.surprise_half_life,
            "seed": self.seed,
        }
        return dict(sorted(fields.items()))


def _redacted(url: str | None) -> str | None:
    """Scheme and host only: webhook paths and queries often carry tokens, reports get shared."""
    if url is None:
        return None
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/..."
