"""The snapshot store: published versions as directories, written atomically.

Layout under the store's root::

    v000001/            manifest.json + the weights (a PEFT adapter or a model directory)
    v000002/
    live.json           written by a rollback only: {"version": 1, "newest": 2}
    pins.json           versions kept whatever the retention: [1]
    store.json          the store's identity, written once: {"id": "3f2a...", "created": ...}

A version is written under a temporary name (`.tmp-...`), every file and the directory are
fsynced, and only then is it renamed to `vNNNNNN` (and the root fsynced): a reader, or a restart
after a crash at any moment, never sees half a version. Leftover temporary directories are
removed when the store is opened.

The live version is the newest one, unless a rollback made an older one live since: `live.json`
records the version rolled back to and the newest version at that time, so a version published
after the rollback is live again without writing anything but its own directory. Publishing is
then a single rename.

The identity lets a document queue check that it feeds this store, and no other: a queue
records the id of the store it feeds (see `livelm.source.reconcile`).

Retention keeps the newest `keep_last` versions, the pinned ones and the live one; a version is
deleted by renaming it out of the way first, so a listing never shows a half-deleted version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livelm.store.manifest import MANIFEST, Manifest, utc_now

_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_LIVE = "live.json"
_PINS = "pins.json"
_IDENTITY = "store.json"


class UnknownVersionError(KeyError):
    """A version that the store does not hold (never published, or deleted by retention)."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version

    def __str__(self) -> str:
        return f"version {self.version} is not in the store (never published, or not retained)"


def version_name(version: int) -> str:
    return f"v{version:06d}"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


class SnapshotStore:
    """Versions on disk; see the module docstring for the layout and the guarantees.

    Mutations (publish, rollback, pins, retention) are serialized by an internal lock; reads
    need none, since a version directory is complete from the moment its name exists.
    """

    def __init__(self, root: Path, *, keep_last: int = 10) -> None:
        if keep_last < 1:
            raise ValueError(f"--keep-last must be at least 1, not {keep_last}")
        self.root = root
        self.keep_last = keep_last
        self._lock = threading.RLock()
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".tmp-*"):  # a publish or a deletion cut short by a crash
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------------

    def path(self, version: int) -> Path:
        return self.root / version_name(version)

    def versions(self) -> list[int]:
        """Every published version still held, oldest first."""
        found = []
        for entry in self.root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def manifest(self, version: int) -> Manifest:
        try:
            return Manifest.read(self.path(version))
        except FileNotFoundError:
            raise UnknownVersionError(version) from None

    def newest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def _live_marker(self) -> dict[str, int] | None:
        try:
            data: dict[str, int] = json.loads((self.root / _LIVE).read_text())
        except FileNotFoundError:
            return None
        return data

    def live(self) -> int | None:
        """The version that serves: the newest, unless a rollback since chose an older one."""
        newest = self.newest()
        marker = self._live_marker()
        if newest is None or marker is None or newest > marker["newest"]:
            return newest
        return marker["version"]

    def pins(self) -> set[int]:
        try:
            return set(json.loads((self.root / _PINS).read_text()))
        except FileNotFoundError:
            return set()

    def identity(self) -> str:
        """The store's id: random, written into `store.json` the first time it is asked for,
        and the same for every process that opens the store from then on.

        Created on demand rather than on open, so that a replica can follow a store it may not
        write to. Two processes asking at once agree: each writes its own candidate under a
        temporary name and links it into place, and a link never replaces an existing file.
        """
        path = self.root / _IDENTITY
        if not path.exists():
            tmp = self.root / f".tmp-{_IDENTITY}-{uuid.uuid4().hex[:8]}"
            with open(tmp, "w") as f:
                json.dump({"id": uuid.uuid4().hex, "created": utc_now()}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                fsync_path(self.root)
            except FileExistsError:
                pass  # another process made it first: its id is the store's
            finally:
                tmp.unlink()
        identity: str = json.loads(path.read_text())["id"]
        return identity

    # -- writing --------------------------------------------------------------------------------

    def next_version(self) -> int:
        marker = self._live_marker() or {"newest": 0}
        return max(self.newest() or 0, marker["newest"]) + 1

    def publish(self, manifest: Manifest, write: Callable[[Path], None]) -> Path:
        """Write a version atomically: `write(tmp_dir)` puts the weights, then the manifest.

        Durable when this returns. The manifest's version must be `next_version()`.
        """
        with self._lock:
            expected = self.next_version()
            if manifest.version != expected:
                raise ValueError(f"the next version is {expected}, not {manifest.version}")
            final = self.path(manifest.version)
            tmp = self.root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                write(tmp)
                manifest.write(tmp)
                for file in tmp.rglob("*"):
                    if file.is_file():
                        fsync_path(file)
                fsync_path(tmp)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_path(self.root)
            return final

    def set_live(self, version: int) -> None:
        """Make a held version live (a rollback); durable when this returns."""
        with self._lock:
            if not (self.path(version) / MANIFEST).is_file():
                raise UnknownVersionError(version)
            newest = self.newest()
            assert newest is not None
            write_json_atomic(self.root / _LIVE, {"version": version, "newest": newest})

    def pin(self, version: int, pinned: bool = True) -> None:
        """Keep a version whatever the retention (or, with `pinned=False`, stop keeping it)."""
        with self._lock:
            if version not in self.versions():
                raise UnknownVersionError(version)
            pins = self.pins()
            pins = pins | {version} if pinned else pins - {version}
            write_json_atomic(self.root / _PINS, sorted(pins))

    def retain(self) -> list[int]:
        """Delete the versions that retention lets go; returns them."""
        with self._lock:
            versions = self.versions()
            keep = set(versions[-self.keep_last :]) | self.pins()
            live = self.live()
            if live is not None:
                keep.add(live)
            dropped = [v for v in versions if v not in keep]
            for version in dropped:
                doomed = self.root / f".tmp-deleted-{version_name(version)}"
                os.rename(self.path(version), doomed)
                shutil.rmtree(doomed)
            if dropped:
                fsync_path(self.root)
            return dropped
