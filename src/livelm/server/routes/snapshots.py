"""`/v1/snapshots`: list and show versions, roll back to one, pin one against retention."""

from __future__ import annotations

from fastapi import APIRouter

from livelm.server.deps import READ, WRITE, RuntimeDep
from livelm.server.runtime import Runtime
from livelm.server.schemas.snapshots import Snapshot, SnapshotDetail, SnapshotList
from livelm.store import Manifest, UnknownVersionError

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


def _snapshot(runtime: Runtime, manifest: Manifest) -> Snapshot:
    return Snapshot.of(
        manifest,
        live=manifest.version == runtime.live.number,
        pinned=manifest.version in runtime.store.pins(),
    )


@router.get("", dependencies=READ)
def list_snapshots(runtime: RuntimeDep) -> SnapshotList:
    """Every retained version, newest first."""
    snapshots = []
    for version in reversed(runtime.store.versions()):
        try:
            snapshots.append(_snapshot(runtime, runtime.store.manifest(version)))
        except UnknownVersionError:
            continue  # deleted by retention between the listing and the read
    return SnapshotList(live=runtime.live.number, snapshots=snapshots)


@router.get("/{version}", dependencies=READ)
def show_snapshot(version: int, runtime: RuntimeDep) -> SnapshotDetail:
    """A version's manifest, with its directory and files."""
    manifest = runtime.store.manifest(version)
    path = runtime.store.path(version)
    summary = _snapshot(runtime, manifest)
    return SnapshotDetail(
        **summary.model_dump(),
        path=str(path),
        files=sorted(p.name for p in path.iterdir()),
        learned=list(manifest.learned),
        config=manifest.config,
    )


@router.post("/{version}/rollback", dependencies=WRITE)
def rollback(version: int, runtime: RuntimeDep) -> Snapshot:
    """Make a retained version live; the learner continues from it. Requests already running
    finish on the version they started with."""
    manifest = runtime.rollback(version)
    return _snapshot(runtime, manifest)


@router.put("/{version}/pin", dependencies=WRITE)
def pin(version: int, runtime: RuntimeDep) -> Snapshot:
    """Keep a version whatever the retention (--keep-last)."""
    runtime.store.pin(version)
    return _snapshot(runtime, runtime.store.manifest(version))


@router.delete("/{version}/pin", dependencies=WRITE)
def unpin(version: int, runtime: RuntimeDep) -> Snapshot:
    """Let retention delete a version again once it is old enough."""
    runtime.store.pin(version, pinned=False)
    return _snapshot(runtime, runtime.store.manifest(version))
