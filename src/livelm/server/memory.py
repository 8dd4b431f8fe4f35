"""The server's memory: few malloc arenas, large blocks unmapped, freed memory given back,
bounded kernel caches.

Four things grow a server's resident set past what its tensors need; each has its measure.
Figures from `benchmarks/serve.py --quick` on this 2-core CPU, SmolLM2-135M (noisy, on a
shared machine): a server that learned 50 documents and served 1 to 32 clients held 1.63 GB
idle afterwards with glibc's and oneDNN's defaults, 1.30 GB with the arena cap and trimming,
1.00 GB with the kernel caches capped too, 0.97 GB with large blocks unmapped as well (peak
under load 1.73, 1.75, 1.53, 1.32 GB).

- **malloc arenas.** Torch allocates a CPU tensor with `malloc`. glibc's malloc gives each
  thread that allocates an arena of its own, up to eight per core, and keeps what is freed in
  each for reuse; a server has many threads that allocate (the event loop, request threads, the
  learner, generation), so its resident set grows to the sum of every arena's high-water mark.
  `tune_malloc` caps them (`M_ARENA_MAX`; a helper measured 1.53 GB instead of 1.97 under the
  same load with `MALLOC_ARENA_MAX=2`).
- **Large blocks in the arenas.** glibc maps a block of 128 KB or more for itself and unmaps it
  when freed, but each time it frees one it raises that threshold to the block's size, up to
  32 MB: the first weights freed at load (the fp32 copy a bf16 learner replaces) raise it at
  once, and from then on every activation, logit matrix and micro-batch under 32 MB is carved
  out of an arena, whose holes stay resident. `tune_malloc` fixes the threshold at 1 MB: those
  blocks go back to the system when freed (a 512-token bf16 forward took the same time, within
  this machine's noise; smaller blocks, a decode step's, stay in the arenas).
- **Freed memory kept.** What a load test or a publish freed stays in the arenas. `Trimmer`
  calls `malloc_trim(0)` (free pages of every arena back to the system) once the server has
  been quiet for a moment after serving or learning; the pages a busy server keeps reusing stay.
- **Kernel caches.** A bf16 matmul on a CPU runs a oneDNN kernel compiled for its shapes, and
  two caches keep each one: oneDNN's primitive cache and PyTorch's (ideep's) LRU, 1,024 entries
  each. Every new token count (a prompt, a packed step, a scored document) adds one per weight
  shape, about 1 MB each with the code compiled for it: 1,200 matmul shapes grew a process by
  940 MB with the defaults and by 170 MB with both capped at 128, while shapes in use all the
  time (a decode step's) stayed cached and as fast. `cap_kernel_caches` sets both capacities
  (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, `LRU_CACHE_CAPACITY`), read when the first kernel is made.

`livelm serve` sets all of it first thing, before the server's threads exist and before the
first kernel is compiled: in-process rather than by re-executing the command with `MALLOC_*`
variables in its environment, because glibc reads these settings each time it makes an arena or
a block (so setting them at start is as good), it costs no second start-up, and it holds when
`serve()` is called from Python. A variable already set in the environment (`MALLOC_ARENA_MAX`,
`MALLOC_MMAP_THRESHOLD_`, the two cache capacities) wins. Elsewhere than glibc (musl, macOS)
the malloc measures do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livelm.server.gate import PriorityGate

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
M_MMAP_THRESHOLD = -3


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, if this process runs on it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def tune_malloc(arenas: int, mmap_threshold: int) -> list[str]:
    """At most `arenas` malloc arenas, and blocks of `mmap_threshold` bytes or more mapped for
    themselves (0 leaves either at glibc's default); call before starting threads. The settings
    made, by the name of the variable that would set them (none: not glibc, or each already set
    in the environment, which glibc applied at start)."""
    libc = _libc()
    if libc is None:
        return []
    made = []
    for var, option, value in (
        ("MALLOC_ARENA_MAX", M_ARENA_MAX, arenas),
        ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold),
    ):
        if value > 0 and var not in os.environ and libc.mallopt(option, value):
            made.append(var)
    return made


KERNEL_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def cap_kernel_caches(entries: int) -> list[str]:
    """At most `entries` compiled CPU kernels in each of oneDNN's and PyTorch's caches (0:
    their defaults); call before the first bf16 matmul. The variables set (one already in the
    environment is left as it is)."""
    if entries <= 0:
        return []
    chosen = [var for var in KERNEL_CACHES if var not in os.environ]
    for var in chosen:
        os.environ[var] = str(entries)
    return chosen


def trim() -> bool:
    """Give the free pages of every malloc arena back to the system; whether any were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


class Trimmer:
    """Trims (`trim()`) once no request has run for `quiet_s` seconds after the gate saw
    requests or learner turns, at most once per `quiet_s`, from a thread of its own."""

    def __init__(self, gate: PriorityGate, quiet_s: float) -> None:
        self.gate = gate
        self.quiet_s = quiet_s
        self.trims = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livelm-trim", daemon=True)

    def start(self) -> None:
        if _libc() is not None and self.quiet_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _activity(self) -> tuple[int, int]:
        return self.gate.requests, self.gate.turns

    def _run(self) -> None:
        trimmed = self._activity()
        while not self._stop.wait(self.quiet_s):
            seen = self._activity()
            if seen == trimmed or not self.gate.quiet_for(self.quiet_s):
                continue
            started = time.perf_counter()
            trim()
            self.trims += 1
            trimmed = seen
            log.debug("malloc_trim in %.1f ms", 1000 * (time.perf_counter() - started))
