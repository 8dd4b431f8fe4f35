"""Device and precision choice: CUDA when present, bf16 autocast where the hardware has it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype to use on `device`, or None for plain fp32.

    `precision` is `auto` (bf16 where the hardware supports it), `bf16` or `fp32`.
    """
    if precision == "fp32":
        return None
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    if precision == "bf16":
        if not supported:
            raise ValueError(f"--precision bf16: {device} does not support bf16")
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"--precision must be auto, bf16 or fp32, not {precision!r}")
    return torch.bfloat16 if supported else None


T = TypeVar("T")


def in_fresh_thread(work: Callable[[], T]) -> T:
    """`work()` on a new thread that ends when it returns (its result, or its exception raised
    here). For torch work in a process with more than one thread doing it (a server).

    Why: torch's CPU build runs its intra-op threads on GNU OpenMP, which keeps a pool of worker
    threads for every thread that has ever started parallel work, for as long as that thread
    lives, and counts them all. Once they outnumber the CPUs it stops spinning between parallel
    regions and sleeps instead (its "throttled" wait, not configurable), so every one of the
    hundreds of small operations of a forward waits for a wake-up: on 2 cores, SmolLM2's greedy
    decoding took 31 ms a token instead of 21 for every thread of the process, from the moment
    a second thread had done torch work (the model loaded on one thread, then the generation
    engine's on another). A thread that ends frees its pool, so bursts of work on fresh threads
    leave only the running ones counted.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # re-raised on the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name=f"{threading.current_thread().name}-work")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
