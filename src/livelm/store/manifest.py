"""A version's manifest: what it is, where it came from, and which documents it holds.

Written as sorted JSON beside the weights, last, inside the temporary directory that is then
renamed into place: a version directory without a complete manifest never exists.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"
Kind = Literal["lora", "full"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Manifest:
    """One published version.

    `position` is the queue position the version covers: every document accepted at or before
    it was learned into this version or an earlier one, or rejected. `learned` lists the queue
    positions (`seq`) of the documents first learned into this version, so a restart can finish
    acknowledging them and a check can prove each document was learned exactly once.
    `entries` does the same for a Redis stream source: the stream entry ids first learned here.
    """

    version: int
    parent: int | None
    kind: Kind
    base_model: str
    position: int
    learned: tuple[int, ...] = ()
    entries: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"versions start at 1, not {self.version}")
        if self.parent is not None and self.parent >= self.version:
            raise ValueError(f"parent {self.parent} must be older than version {self.version}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["learned"] = list(self.learned)
        data["entries"] = list(self.entries)
        return dict(sorted(data.items()))

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        data = json.loads((directory / MANIFEST).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}  # newer fields are ignored
        data["learned"] = tuple(data.get("learned", ()))
        data["entries"] = tuple(data.get("entries", ()))
        return cls(**data)


def base_model_id(spec: str) -> str:
    """A `--model` as versions record what they adapt: a path made absolute, else as given."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def check_compatible(manifest: Manifest, base_model: str, kind: Kind, where: str) -> None:
    """Refuse to continue from a version of another model or kind (`where`: the flag and
    directory that hold it, for the message)."""
    if (manifest.base_model, manifest.kind) != (base_model, kind):
        raise RuntimeError(
            f"{where} holds {manifest.kind} versions of {manifest.base_model}; this one learns "
            f"{kind} weights of {base_model}: choose another directory"
        )
