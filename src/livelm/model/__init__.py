"""Loading causal LMs: Hugging Face directories, hub ids, GGUF files and the `smollm2` alias."""

from livelm.model.device import autocast_dtype_for, resolve_device
from livelm.model.loading import DEFAULT_MODEL, LoadedModel, cache_root, load_model

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "autocast_dtype_for",
    "cache_root",
    "load_model",
    "resolve_device",
]
