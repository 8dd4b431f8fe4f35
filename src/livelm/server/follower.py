"""A serving replica: `livelm serve --follow STORE` serves the versions that learner workers
(`livelm learn`) publish into a snapshot store, and learns nothing itself.

A thread polls the store's live version (`SnapshotStore.live()`: the newest version, or the one
a rollback made live) every `poll_s`, and when it changes loads that version's weights into its
model and makes a serving copy of it live, as the single-process server does after a publish.
A replica that starts late loads the live version at once. A rollback through any replica writes
the store's live marker, so every replica, and the learners, follow it.

LoRA versions are read with PEFT (`PeftModel.from_pretrained` on the base model, then each new
adapter loaded in place); full-weight versions are model directories.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from livelm.learner.core import resolve_attention, skip_adapter_input_cast
from livelm.model import autocast_dtype_for
from livelm.model.device import in_fresh_thread
from livelm.policy.monitor import SurpriseMonitor
from livelm.server.metrics import Metrics
from livelm.server.versions import ServingVersion, serving_copy
from livelm.store import Manifest, SnapshotStore, load_weights

log = logging.getLogger(__name__)


class Follower:
    """Keeps a model on the store's live version; the face `Runtime` needs of a learner."""

    def __init__(
        self,
        *,
        base: PreTrainedModel,
        store: SnapshotStore,
        metrics: Metrics,
        on_live: Callable[[ServingVersion], None],
        poll_s: float = 0.2,
        wait_s: float = 600.0,
    ) -> None:
        self.base = base
        self.store = store
        self.metrics = metrics
        self._on_live = on_live
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.model: torch.nn.Module | None = None
        self.autocast: torch.dtype | None = None
        self.live: Manifest | None = None
        self.monitor = SurpriseMonitor()  # a replica sees no stream: surprises stay None
        self.error: BaseException | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bootstrap(self) -> None:
        """Load the live version, waiting up to `wait_s` for a learner to publish one."""
        deadline = time.monotonic() + self.wait_s
        while (live := self.store.live()) is None:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"--follow {self.store.root}: no version appeared in {self.wait_s:.0f} s; "
                    "start a learner (livelm learn --store ...) first"
                )
            time.sleep(self.poll_s)
        self._load(live)

    def _model_for(self, manifest: Manifest, directory: Path) -> torch.nn.Module:
        """The model, shaped as the version's learner shaped it, on first use."""
        if self.model is not None:
            return self.model
        device = next(self.base.parameters()).device
        precision = str(manifest.config.get("precision", "auto"))
        self.autocast = autocast_dtype_for(device, precision)
        attention = str(manifest.config.get("attention", "auto"))
        self.base.set_attn_implementation(resolve_attention(attention, device))
        self.base.eval()
        if manifest.kind == "lora":
            if self.autocast is not None:
                self.base.to(self.autocast)  # type: ignore[arg-type]  # as the learner did
            # Trainable, as the learner's: a serving copy folds them in (see `serving_copy`).
            model = PeftModel.from_pretrained(self.base, directory, is_trainable=True)
            if self.autocast is not None:
                skip_adapter_input_cast(model)
            self.model = model
        else:
            self.base.requires_grad_(True)
            self.model = self.base
        return self.model

    def serving_version(self, version: int) -> ServingVersion:
        """A serving copy of a stored version: the live one, or one a request names. The model
        is only a place to load into: each load overwrites all it learns."""
        with self._lock:
            manifest = self.store.manifest(version)
            directory = self.store.path(version)
            model = self._model_for(manifest, directory)
            load_weights(model, directory)
            return ServingVersion(manifest, serving_copy(model, self.autocast))

    def _load(self, version: int) -> None:
        with self._lock:  # held on: the last version loaded is the last to go live
            serving = self.serving_version(version)
            manifest = serving.manifest
            self.live = manifest
            self.metrics.went_live(manifest)
            self._on_live(serving)
        log.info("version %d live (following %s)", version, self.store.root)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="livelm-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.poll_s):
                live = self.store.live()
                if live is not None and (self.live is None or live != self.live.version):
                    in_fresh_thread(partial(self._load, live))  # beside the engine
        except BaseException as e:  # reported by /readyz; the replica keeps serving
            log.exception("the follower stopped")
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def notify(self) -> None:
        """Documents go to the stream: the learners, not this replica, take them."""

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def rollback(self, version: int) -> Manifest:
        """Make an older version live for every replica and learner of the store."""
        self.store.manifest(version)  # an unknown version fails here, before anything changes
        self.store.set_live(version)
        self.metrics.rollbacks.inc()
        self._load(version)
        assert self.live is not None
        return self.live
