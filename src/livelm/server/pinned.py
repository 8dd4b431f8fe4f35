"""Each kept version is a model: `livelm@12` answers with version 12 while it is in the store.

A request names a version in its `model` field (`livelm` or nothing: the live one). The live
version is always in memory; another is loaded from the store on demand into a serving copy
made exactly as the live ones are (its weights loaded into a model shaped as the learner's, then
`serving_copy`: LoRA folded into the projections, in the serving dtype), and kept in a small LRU.

Pinned versions are merged too, not served as adapters on the shared base: a pinned version
then runs at the live version's speed (an A/B test compares answers, not two code paths), and
it answers with the very weights it answered with when it was live, bit for bit, which is what
pinning is for (reproducible answers); adapters on the base would agree only to bf16 rounding.
The price is memory: each version held costs its merged projections (about 210 MB in bf16 for
SmolLM2-135M with every linear adapted; a full-weight learner's, a model in the serving dtype),
so the LRU is small (`--pinned-versions`, 2 by default; 0 merges one for each request), and an
A/B test or a reproducible answer costs one load and one merge (0.2 s of CPU for SmolLM2-135M).
A request holding a version keeps it to its end, evicted or not, as it keeps a live version
that a newer one replaced.

Loading runs in the request's worker thread; requests that want the same version at the same
time wait for one load. Loads are serialized (one model to load into), so at most one copy
beyond the LRU's is being made at any moment.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

import anyio
import torch
from peft import PeftModel

from livelm.model.device import in_fresh_thread
from livelm.server.errors import ApiError, NotFoundError
from livelm.server.versions import ServingVersion, serving_copy
from livelm.store import Manifest, SnapshotStore, UnknownVersionError, load_weights
from livelm.store.manifest import MANIFEST

_PINNED = re.compile(r"^(?P<name>.*)@(?P<version>[^@]*)$")
_NUMBER = re.compile(r"^[1-9][0-9]{0,11}$")


def parse_model(model: str | None, served: str) -> int | None:
    """The version a request's `model` names: None for the live one (`served`, or no model).

    >>> parse_model("livelm@12", "livelm"), parse_model("livelm", "livelm"), parse_model(None, "x")
    (12, None, None)
    """
    if model is None or model == served:
        return None
    match = _PINNED.match(model)
    if match is None or match.group("name") != served:
        raise NotFoundError(
            f"model {model!r} is not served here; this server serves {served!r} (the live "
            f"version) and {served + '@N'!r} for each version it keeps (GET /v1/models)",
            param="model",
        )
    number = match.group("version")
    if not _NUMBER.match(number):
        raise ApiError(
            f"model {model!r}: a version is a positive whole number, as in {served + '@3'!r} "
            "(GET /v1/models lists them)",
            param="model",
        )
    return int(number)


class VersionLoader:
    """Serving copies of stored versions for a server that learns: the version's weights are
    loaded into a private model shaped as the learner's, then copied by `serving_copy`, exactly
    as the learner's model is copied when a version goes live.

    Made from the learner's model between learning steps (the loop calls `on_live` under its
    lock). For LoRA the private model is a copy of the adapters (the frozen base is shared),
    made then; for a full-weight learner it is a copy of the whole model, made on first use
    from a live serving copy (which nothing writes; in the serving dtype, as what is loaded
    into it will be served), so that a server nobody asks for an older version never pays for
    it. `dtype` is the serving dtype (the learner's autocast dtype; None: fp32).
    """

    def __init__(self, source: torch.nn.Module, dtype: torch.dtype | None) -> None:
        self.dtype = dtype
        # The learner's frozen tensors: shared by every copy, never written.
        self._shared = {id(p): p for p in source.parameters() if not p.requires_grad}
        self._scratch = _owned_copy(source, self._shared) if isinstance(source, PeftModel) else None
        self._lock = threading.Lock()

    def load(self, manifest: Manifest, directory: Path, live: ServingVersion) -> ServingVersion:
        with self._lock:
            if self._scratch is None:
                self._scratch = _owned_copy(live.model, self._shared)
            load_weights(self._scratch, directory)
            return ServingVersion(manifest, serving_copy(self._scratch, self.dtype))


def _owned_copy(model: torch.nn.Module, shared: dict[int, torch.nn.Parameter]) -> torch.nn.Module:
    """A copy of `model` that shares the `shared` tensors and owns the others, trainable (so
    that `serving_copy` copies them in turn)."""
    clone = copy.deepcopy(model, dict[int, object](shared))
    for p in clone.parameters():
        if id(p) not in shared:
            p.grad = None
            p.requires_grad_(True)
    return clone


class PinnedVersions:
    """The versions requests pinned, most recently used last, at most `capacity` of them.

    `load(version)` makes one (it may raise: nothing is kept then, and every request waiting
    for that load gets the error); `get` is blocking, to be called off the event loop.
    """

    def __init__(self, load: Callable[[int], ServingVersion], capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"--pinned-versions must be at least 0, not {capacity}")
        self.capacity = capacity
        self.loads = 0  # versions loaded since the start (the LRU's misses)
        self._load = load
        self._held: OrderedDict[int, ServingVersion] = OrderedDict()
        self._loading: dict[int, Future[ServingVersion]] = {}
        self._lock = threading.Lock()

    def held(self) -> list[int]:
        """The versions in memory, least recently used first."""
        with self._lock:
            return list(self._held)

    def forget(self, version: int) -> None:
        """Drop a version (the store deleted it); requests that hold it finish on it."""
        with self._lock:
            self._held.pop(version, None)

    def get(self, version: int) -> ServingVersion:
        with self._lock:
            held = self._held.get(version)
            if held is not None:
                self._held.move_to_end(version)
                return held
            pending = self._loading.get(version)
            mine = pending is None
            if pending is None:
                pending = self._loading[version] = Future()
        if not mine:
            return pending.result()  # another request is loading it: one load for all
        try:
            loaded = self._load(version)
        except BaseException as e:
            with self._lock:
                del self._loading[version]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._loading[version]
            self.loads += 1
            if self.capacity:
                self._held[version] = loaded
                while len(self._held) > self.capacity:
                    self._held.popitem(last=False)
        pending.set_result(loaded)
        return loaded


class VersionModels:
    """The models a server answers as: `served` (the live version, from `live()`) and
    `served@N` for each version the store keeps, those not live loaded by `load` into an LRU of
    `capacity`."""

    def __init__(
        self,
        store: SnapshotStore,
        served: str,
        *,
        live: Callable[[], ServingVersion],
        load: Callable[[int], ServingVersion],
        capacity: int,
    ) -> None:
        self.store = store
        self.served = served
        self.pinned = PinnedVersions(load, capacity)
        self._live = live
        self._created: dict[int, str] = {}  # each kept version's creation time (immutable)

    async def resolve(self, model: str | None) -> ServingVersion:
        """The version a request's `model` names; one not in memory is loaded in a worker
        thread. A version the store does not keep is a 404 naming the model."""
        number = parse_model(model, self.served)
        if number is None:
            return self._live()
        try:
            return await anyio.to_thread.run_sync(in_fresh_thread, partial(self._version, number))
        except (UnknownVersionError, FileNotFoundError) as e:
            if isinstance(e, FileNotFoundError) and self._holds(number):
                raise  # a missing file of a version still kept: not the client's doing
            raise NotFoundError(
                f"model {model!r}: version {number} is not in the store (never published, or "
                "deleted by retention; pin a version to keep it); GET /v1/models lists the "
                "versions kept",
                param="model",
            ) from None

    def _holds(self, number: int) -> bool:
        return (self.store.path(number) / MANIFEST).is_file()

    def _version(self, number: int) -> ServingVersion:
        live = self._live()
        if number == live.number:
            return live
        if not self._holds(number):
            self.pinned.forget(number)  # deleted by retention: its copy goes too
            raise UnknownVersionError(number)
        return self.pinned.get(number)

    def kept(self) -> list[tuple[int, str]]:
        """(version, creation time) of each version the store keeps, newest first."""
        known, kept = self._created, {}
        for number in reversed(self.store.versions()):
            created = known.get(number)
            if created is None:
                try:
                    created = self.store.manifest(number).created
                except UnknownVersionError:  # deleted since the listing
                    continue
            kept[number] = created
        self._created = kept  # one swap: concurrent listings never see it half-built
        return list(kept.items())
