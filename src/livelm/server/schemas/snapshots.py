"""Response bodies of `/v1/snapshots`, `/healthz` and `/readyz`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from livelm.store import Manifest


def _finite_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite metrics are sent as null."""
    return {
        k: None if isinstance(v, float) and not (v == v and abs(v) != float("inf")) else v
        for k, v in metrics.items()
    }


class Snapshot(BaseModel):
    version: int
    parent: int | None
    created: str
    kind: str = Field(description="lora: a PEFT adapter directory; full: a model directory")
    base_model: str
    position: int = Field(description="the queue position this version covers")
    documents: int = Field(description="documents first learned into this version")
    metrics: dict[str, Any]
    live: bool
    pinned: bool

    @classmethod
    def of(cls, manifest: Manifest, *, live: bool, pinned: bool) -> Snapshot:
        return cls(
            version=manifest.version,
            parent=manifest.parent,
            created=manifest.created,
            kind=manifest.kind,
            base_model=manifest.base_model,
            position=manifest.position,
            documents=len(manifest.learned),
            metrics=_finite_values(manifest.metrics),
            live=live,
            pinned=pinned,
        )


class SnapshotDetail(Snapshot):
    path: str = Field(description="the version's directory")
    files: list[str]
    learned: list[int] = Field(description="queue positions of the documents it first learned")
    config: dict[str, Any]


class SnapshotList(BaseModel):
    live: int
    snapshots: list[Snapshot] = Field(description="newest first")


class Health(BaseModel):
    status: str
    live_version: int | None = None
    detail: str | None = None
