"""Helpers for the server tests: settings around the tiny model, waiting, a real uvicorn."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from livelm.cli.serve import bind
from livelm.learner import get_strategy
from livelm.server import ServerSettings
from livelm.server.gate import PriorityGate

# Fast, visible learning on the tiny model; fp32 so that results do not depend on the CPU.
TINY_LEARNER = get_strategy("online").replace(lr=1e-2, warmup_steps=0, precision="fp32")


def tiny_settings(model_dir: Path, data_dir: Path, **changes: Any) -> ServerSettings:
    fields: dict[str, Any] = {
        "model": str(model_dir),
        "data_dir": data_dir,
        "device": "cpu",
        "learner": TINY_LEARNER,
        "yield_max_s": 0.5,
    }
    return ServerSettings(**(fields | changes))


def wait_for(check: Any, timeout: float = 30.0, every: float = 0.02) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {check}")


def wait_done(client: TestClient, doc_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until a document is learned or rejected; returns its status."""

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(f"/v1/documents/{doc_id}").json()
        return status if status["state"] != "queued" else None

    result: dict[str, Any] = wait_for(done, timeout)
    return result


def greedy(client: TestClient, prompt: str, tokens: int = 12) -> tuple[str, int]:
    """A greedy completion and the version that made it."""
    r = client.post(
        "/v1/completions",
        json={"model": "livelm", "prompt": prompt, "max_tokens": tokens, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], int(r.headers["X-Livelm-Version"])


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port, in a thread; yields the base URL."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=120)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


SERVE = [sys.executable, "-m", "livelm", "serve"]
_URL = re.compile(r"livelm serve: (http://\S+) ")


class ServeProcess:
    """One real `livelm serve ARGS` process on a free loopback port, its stderr in `log`."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [*SERVE, *args, "--port", "0", "--quiet"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                # One thread: the tiny model gains nothing from more, and on a busy CI machine
                # OpenMP teams that outnumber the free cores slow a step a hundredfold.
                env=os.environ | {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
            )
        self._url = ""

    @property
    def url(self) -> str:
        """The address it printed once bound (before it loads anything)."""
        assert self.proc.stdout is not None
        while not self._url:
            line = self.proc.stdout.readline()
            assert line, f"the server exited without an address; see {self.log}"
            if match := _URL.search(line):
                self._url = match.group(1)
        return self._url

    def wait_ready(self) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120, every=0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait()


def sigint_as_in_a_terminal() -> None:
    """`preexec_fn` for a child that a test stops with SIGINT, as Ctrl-C would: a job started in
    the background by a non-interactive shell (CI, nohup) inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def request_held(gate: PriorityGate) -> Iterator[threading.Event]:
    """A model request holding one of `gate`'s serving slots, in a thread, until the block ends
    or the event it yields is set."""
    release = threading.Event()

    def request() -> None:
        with gate.serving():
            release.wait()

    worker = threading.Thread(target=request)
    worker.start()
    time.sleep(0.02)  # it holds its slot
    try:
        yield release
    finally:
        release.set()
        worker.join()
