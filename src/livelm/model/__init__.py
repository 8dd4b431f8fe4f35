"""Loading causal LMs: Hugging Face directories, hub ids, GGUF files and the `smollm2` alias."""

from typing import TYPE_CHECKING

from livelm.lazy import lazy_names
from livelm.model.spec import DEFAULT_MODEL

if TYPE_CHECKING:
    from livelm.model.device import autocast_dtype_for, in_fresh_thread, resolve_device
    from livelm.model.loading import LoadedModel, cache_root, load_model

# These import torch and transformers: a default shown in `--help` needs neither.
__getattr__ = lazy_names(
    __name__,
    {
        "livelm.model.device": ("autocast_dtype_for", "in_fresh_thread", "resolve_device"),
        "livelm.model.loading": ("LoadedModel", "cache_root", "load_model"),
    },
)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "autocast_dtype_for",
    "cache_root",
    "in_fresh_thread",
    "load_model",
    "resolve_device",
]
