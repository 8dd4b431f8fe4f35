"""Refuse a `--model` that cannot load, in one line and at once, before transformers tries.

transformers, given a directory without a model or a hub id it cannot fetch, raises an error of
several lines, and without a network it first retries for the better part of a minute. These
checks name the flag and say what is wrong: a directory without `config.json`, a path that does
not exist, a hub id that is neither in the local Hugging Face cache nor reachable.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M-Instruct: `livelm.model.loading` resolves the alias
HUB_TIMEOUT_S = 10.0  # how long the hub may take to say whether a model is there

# owner/name, or a bare legacy name ("gpt2"): letters, digits, `-`, `_`, `.`; no `..`, no `--`.
_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")
_KINDS = "a Hugging Face model directory, a .gguf file, a hub id (owner/name) or 'smollm2'"


def check_model_dir(spec: str) -> None:
    """A directory given as `--model` must hold a model (its `config.json`)."""
    if not (Path(spec) / "config.json").is_file():
        raise ValueError(f"--model {spec}: a directory without config.json; expected {_KINDS}")


def looks_like_hub_id(spec: str) -> bool:
    """
    >>> [looks_like_hub_id(s) for s in ["gpt2", "HuggingFaceTB/SmolLM2-135M", "./m", "/x/y"]]
    [True, True, False, False]
    >>> looks_like_hub_id("a/b/c"), looks_like_hub_id("org/..")
    (False, False)
    """
    return bool(_HUB_ID.fullmatch(spec)) and ".." not in spec and "--" not in spec


def check_hub_id(spec: str, timeout_s: float = HUB_TIMEOUT_S) -> None:
    """A `--model` that is no local path: a hub id in the local cache, or one the hub has.

    The hub is asked once, with a timeout, on a thread (a name lookup cannot be given one);
    without a network this fails in well under a second.
    """
    if not looks_like_hub_id(spec):
        raise FileNotFoundError(f"--model {spec}: no such file or directory; expected {_KINDS}")
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return  # fetched before: transformers loads it from the cache
    where = "not a local directory, and not in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"--model {spec}: {where}, and HF_HUB_OFFLINE is set")
    found: list[BaseException | None] = []

    def ask() -> None:
        try:
            model_info(spec, timeout=timeout_s)
        except Exception as e:  # handed to the caller, which words it
            found.append(e)
        else:
            found.append(None)

    asking = threading.Thread(target=ask, name="livelm-hub-check", daemon=True)
    asking.start()
    asking.join(timeout_s + 1.0)
    if not found:
        raise ValueError(f"--model {spec}: {where}, and the hub did not answer in {timeout_s} s")
    error = found[0]
    if error is None:
        return
    if isinstance(error, GatedRepoError):
        raise ValueError(f"--model {spec}: a gated model; accept its terms and log in (hf auth)")
    if isinstance(error, RepositoryNotFoundError):
        raise ValueError(
            f"--model {spec}: {where}, and the hub has no such model (or it is private)"
        )
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise ValueError(f"--model {spec}: {where}, and the hub cannot be reached ({reason})")
