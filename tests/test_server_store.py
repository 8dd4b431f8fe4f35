"""The snapshot store: atomic versions, PEFT adapter directories, retention, pins, live."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from livelm.document import Document
from livelm.learner import Learner
from livelm.model import LoadedModel
from livelm.store import (
    Manifest,
    SnapshotStore,
    UnknownVersionError,
    load_weights,
    save_weights,
    weights_kind,
)
from tests.server_util import TINY_LEARNER


def publish(store: SnapshotStore, learner: Learner, parent: int | None = None) -> Manifest:
    manifest = Manifest(
        version=store.next_version(),
        parent=parent,
        kind=weights_kind(learner.model),
        base_model="tiny",
        position=store.next_version() * 10,
        learned=(1, 2),
        metrics={"canary_loss": 3.5},
    )
    store.publish(manifest, lambda d: save_weights(learner.model, d))
    return manifest


@pytest.fixture
def learner(tiny: LoadedModel) -> Learner:
    return Learner(copy.deepcopy(tiny.model), tiny.tokenizer, TINY_LEARNER)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids).logits
        return out


def test_a_lora_version_is_a_peft_adapter_directory(
    tiny: LoadedModel, learner: Learner, tmp_path: Path
) -> None:
    doc = learner.encode(Document("The adapter learns this sentence well."))
    for _ in range(3):
        learner.step([doc])
    store = SnapshotStore(tmp_path)
    manifest = publish(store, learner)
    path = store.path(manifest.version)
    assert path.name == "v000001"
    assert Manifest.read(path) == manifest
    assert json.loads((path / "manifest.json").read_text())["learned"] == [1, 2]

    # PEFT loads it as it is, and it computes what the learner computes.
    base = copy.deepcopy(tiny.model)
    loaded = PeftModel.from_pretrained(base, path)
    ids = torch.tensor([doc.chunks[0]])
    assert torch.allclose(logits(loaded, ids), logits(learner.model, ids), atol=1e-5)

    # And its weights go back into a fresh learner.
    fresh = Learner(copy.deepcopy(tiny.model), tiny.tokenizer, TINY_LEARNER)
    load_weights(fresh.model, path)
    assert torch.allclose(logits(fresh.model, ids), logits(learner.model, ids), atol=1e-6)


def test_a_full_weight_version_round_trips(tiny: LoadedModel, tmp_path: Path) -> None:
    full = Learner(copy.deepcopy(tiny.model), tiny.tokenizer, TINY_LEARNER.replace(update="full"))
    full.step([full.encode(Document("Every weight moves a little."))])
    store = SnapshotStore(tmp_path)
    manifest = publish(store, full)
    assert manifest.kind == "full" and (store.path(1) / "model.safetensors").is_file()
    other = copy.deepcopy(tiny.model)
    load_weights(other, store.path(1))
    ids = torch.tensor([[0, 5, 6, 7]])
    assert torch.allclose(logits(other, ids), logits(full.model, ids), atol=1e-6)


def test_a_half_written_version_is_never_seen(learner: Learner, tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    publish(store, learner)

    def crash(directory: Path) -> None:
        save_weights(learner.model, directory)
        raise KeyboardInterrupt  # killed in the middle of a publish

    with pytest.raises(KeyboardInterrupt):
        store.publish(Manifest(2, 1, "lora", "tiny", 5), crash)
    assert store.versions() == [1] and store.live() == 1
    # A crash that leaves the temporary directory behind (kill -9) is cleaned up on open.
    (tmp_path / ".tmp-v000002-deadbeef").mkdir()
    assert SnapshotStore(tmp_path).versions() == [1]
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="next version is 2"):
        store.publish(Manifest(5, 1, "lora", "tiny", 5), lambda d: None)


def test_rollback_then_a_newer_publish_is_live(learner: Learner, tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for parent in (None, 1, 2):
        publish(store, learner, parent)
    store.set_live(1)
    assert store.live() == 1 and SnapshotStore(tmp_path).live() == 1  # durable
    assert publish(store, learner, 1).version == 4
    assert store.live() == 4
    with pytest.raises(UnknownVersionError):
        store.set_live(9)
    with pytest.raises(UnknownVersionError):
        store.manifest(9)


def test_retention_keeps_the_last_k_the_pinned_and_the_live(
    learner: Learner, tmp_path: Path
) -> None:
    store = SnapshotStore(tmp_path, keep_last=2)
    for _ in range(3):
        publish(store, learner)
    store.pin(1)
    store.set_live(2)
    for _ in range(3):
        publish(store, learner)
    assert store.retain() == [2, 3, 4]
    assert store.versions() == [1, 5, 6]
    store.set_live(5)
    publish(store, learner)  # v7 is live; 5 was only live while rolled back to
    store.pin(1, pinned=False)
    assert store.retain() == [1, 5] and store.versions() == [6, 7]
    assert store.next_version() == 8
