"""Memory that fits: few malloc arenas, large blocks unmapped and freed memory given back, bounded
kernel caches and /v1/score micro-batches, and one copy of the frozen base for the learner and
every serving version."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from peft.tuners.lora import LoraLayer

from livelm.server import create_app, memory
from livelm.server.gate import PriorityGate
from livelm.server.memory import Trimmer
from livelm.server.runtime import Runtime
from tests.server_util import request_held, tiny_settings, wait_done

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Eight threads allocate at once, then the script counts malloc's arenas (`malloc_info`).
# `memory` is livelm.server.memory, `libc` glibc with malloc and free typed, `rss()` the
# resident set in MB: every script starts with them (`_run`).
ARENAS = """
import os, sys, tempfile, threading
capped = memory.tune_malloc(int(sys.argv[1]), 0) == ["MALLOC_ARENA_MAX"]
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    blocks = [libc.malloc(4096) for _ in range(1000)]
    barrier.wait()
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "info.xml")
f = libc.fopen(path.encode(), b"w"); libc.malloc_info(0, f); libc.fclose(f)
print(capped, open(path).read().count("<heap nr="))
"""

# An 8 MB block freed (glibc raises its mmap threshold to 8 MB), then 100 blocks of 2 MB, touched,
# all freed but the last; the resident set growth, in MB, from before the 2 MB blocks.
LARGE_BLOCKS = """
import sys
memory.tune_malloc(0, int(sys.argv[1]))
libc.free(libc.malloc(8 << 20))
before = rss()
blocks = [libc.malloc(2 << 20) for _ in range(100)]
for b in blocks:
    ctypes.memset(b, 1, 2 << 20)
for b in blocks[:-1]:
    libc.free(b)
print(rss() - before)
"""

# 200 MB in 100 KB blocks (below malloc's mmap threshold: from the heap), touched, then all freed
# but the last, which keeps the heap from shrinking by itself; the resident set before and after
# `trim()`.
TRIM = """
blocks = [libc.malloc(100_000) for _ in range(2000)]
for b in blocks:
    ctypes.memset(b, 1, 100_000)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
memory.trim()
print(before, rss())
"""


# bf16 matmuls of 300 new shapes; the growth of the resident set, in MB. `memory` is imported
# first, as `serve` does: the caches read their capacity when the first kernel is made.
KERNELS = """
import sys
memory.cap_kernel_caches(int(sys.argv[1]))
import torch
import torch.nn.functional as F
w = torch.randn(1536, 576).to(torch.bfloat16)
F.linear(torch.randn(1, 576, dtype=torch.bfloat16), w)
before = rss()
for m in range(2, 302):
    F.linear(torch.randn(m, 576, dtype=torch.bfloat16), w)
print(rss() - before)
"""


def _run(script: str, *args: str) -> list[str]:
    """`script` in a fresh Python (malloc's state is per process) with `memory` imported
    alone, without the package (which imports torch)."""
    load = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('memory', {memory.__file__!r})\n"
        "memory = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(memory)\n"
        "import ctypes\n"
        'libc = ctypes.CDLL("libc.so.6")\n'
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def rss():\n"
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(l.split()[1]) // 1024 for l in f if l.startswith('VmRSS'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", load + script, *args],
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


@glibc
def test_the_arena_cap_holds_however_many_threads_allocate() -> None:
    capped, heaps = _run(ARENAS, "2")
    assert capped == "True" and int(heaps) <= 2
    capped, heaps = _run(ARENAS, "0")  # glibc's default: an arena per thread, here
    assert capped == "False" and int(heaps) > 2


@glibc
def test_large_blocks_go_back_to_the_system_when_freed() -> None:
    (kept,) = _run(LARGE_BLOCKS, "0")  # glibc's threshold, raised to 8 MB: they stay
    assert int(kept) > 150
    (kept,) = _run(LARGE_BLOCKS, str(1 << 20))
    assert int(kept) < 20


@glibc
def test_trim_gives_freed_memory_back() -> None:
    before, after = (int(x) for x in _run(TRIM))
    assert before - after > 150, (before, after)  # MB


@glibc
def test_the_kernel_caches_stay_within_their_cap() -> None:
    (default,) = _run(KERNELS, "0")
    if int(default) < 100:
        pytest.skip(f"this CPU's bf16 matmuls cache little ({default} MB for 300 shapes)")
    (capped,) = _run(KERNELS, "16")
    assert int(capped) < int(default) / 3, (capped, default)


def test_the_trimmer_trims_once_quiet_after_serving_or_learning() -> None:
    gate = PriorityGate(max_inflight=1, quiet_s=0.01, max_wait_s=5.0)
    trimmer = Trimmer(gate, quiet_s=0.05)
    trimmer.start()
    try:
        time.sleep(0.3)
        assert trimmer.trims == 0  # nothing happened
        with request_held(gate):
            time.sleep(0.3)
            assert trimmer.trims == 0  # not while a request runs
        time.sleep(0.3)
        assert trimmer.trims == 1  # once, after it
        gate.wait_turn()
        gate.end_turn()
        time.sleep(0.3)
        assert trimmer.trims == 2  # a learner's turn (a step, a publish)
    finally:
        trimmer.stop()


def runtime_of(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def test_scores_do_not_depend_on_the_micro_batch_that_bounds_their_memory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    texts = [
        f"Day {i}: " + "the council met and voted on the park. " * (1 + 7 * i) for i in range(4)
    ]
    losses = []
    for budget in (16, 4096):
        settings = tiny_settings(tiny_model_dir, tmp_path / str(budget), score_token_budget=budget)
        with TestClient(create_app(settings)) as client:
            assert runtime_of(client).token_budget == min(
                budget, settings.learner_config.token_budget
            )
            r = client.post("/v1/score", json={"documents": [{"text": t} for t in texts]})
            assert r.status_code == 200, r.text
            losses.append([d["loss"] for d in r.json()["documents"]])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def _storages(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    """Storage address -> bytes."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def test_the_learner_and_every_serving_version_share_one_frozen_base(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with TestClient(create_app(tiny_settings(tiny_model_dir, tmp_path / "data"))) as client:
        client.post("/v1/documents", json={"id": "a", "text": "The council voted on the park."})
        assert wait_done(client, "a")["version"] == 2
        runtime = runtime_of(client)
        learner: Any = runtime.learner.learner.model  # type: ignore[union-attr]
        frozen = _storages(p for p in learner.parameters() if not p.requires_grad)
        # What a serving copy may own: one copy of what LoRA adapts (the adapters, or the
        # projections with the adapters folded in); the rest is the learner's.
        adapted = 0
        for module in learner.modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                assert isinstance(weight, torch.Tensor)
                adapted += weight.nbytes
        trainable = sum(p.nbytes for p in learner.parameters() if p.requires_grad)
        embedding = learner.get_input_embeddings().weight.untyped_storage().data_ptr()
        assert sum(frozen.values()) > adapted  # a whole copy would own more: the check can fail
        versions = [runtime.live, runtime.models.pinned.get(1)]
        assert [v.number for v in versions] == [2, 1]
        for version in versions:
            served = _storages(version.model.parameters())
            owned = sum(n for ptr, n in served.items() if ptr not in frozen)
            assert owned <= adapted + trainable, (version.number, owned, adapted, trainable)
            assert embedding in served  # the largest frozen tensor, shared
