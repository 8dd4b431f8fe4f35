"""Published versions: atomic directories with a manifest, retention, pins and rollback."""

from typing import TYPE_CHECKING

from livelm.lazy import lazy_names
from livelm.store.manifest import Manifest, base_model_id, check_compatible
from livelm.store.snapshots import SnapshotStore, UnknownVersionError, version_name

if TYPE_CHECKING:
    from livelm.store.weights import load_weights, save_weights, weights_kind

# Weights import torch and safetensors: the store's directories and manifests need neither.
__getattr__ = lazy_names(
    __name__, {"livelm.store.weights": ("load_weights", "save_weights", "weights_kind")}
)

__all__ = [
    "Manifest",
    "SnapshotStore",
    "UnknownVersionError",
    "base_model_id",
    "check_compatible",
    "load_weights",
    "save_weights",
    "version_name",
    "weights_kind",
]
