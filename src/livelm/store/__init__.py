"""Published versions: atomic directories with a manifest, retention, pins and rollback."""

from livelm.store.manifest import Manifest, base_model_id, check_compatible
from livelm.store.snapshots import SnapshotStore, UnknownVersionError, version_name
from livelm.store.weights import load_weights, save_weights, weights_kind

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
