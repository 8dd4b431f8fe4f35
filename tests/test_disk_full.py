"""Ingest on a full disk: a real `livelm serve` with its data directory on a 2 MiB tmpfs.

Filled up, `POST /v1/documents` answers 503 in the API's error shape with a Retry-After, stores
nothing, and /readyz says why it is not ready; with room again, the same request is accepted
and learned. Needs root (to mount); skipped, saying so, where mounting is not permitted.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fs_util import fill, tmpfs
from tests.server_util import ServeProcess, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted after the test whatever happens."""
    with tmpfs(tmp_path / "small", "2m") as mount_point:
        yield mount_point


def documents(tag: str) -> dict[str, object]:
    # ~120 KB: more than the queue's write-ahead log holds from before, so it must grow.
    return {
        "documents": [
            {"id": f"{tag}-{k}", "text": f"The river {k} rose after the rain. " * 800}
            for k in range(4)
        ]
    }


def test_a_full_disk_answers_503_stores_nothing_and_recovers(
    tiny_model_dir: Path, tmp_path: Path, small_disk: Path
) -> None:
    data = small_disk / "data"
    args = ["--model", str(tiny_model_dir), "--data-dir", str(data), "--device", "cpu"]
    args += ["--lr", "0.01", "--publish-every-steps", "1", "--keep-last", "2"]
    server = ServeProcess(args, tmp_path / "server.log")
    try:
        server.wait_ready()
        url = server.url
        r = httpx.post(
            f"{url}/v1/documents", json={"documents": [{"id": "warm", "text": "a"}]}, timeout=30
        )
        assert r.status_code == 202, r.text

        def learned(doc_id: str) -> bool:
            status = httpx.get(f"{url}/v1/documents/{doc_id}", timeout=30).json()
            return bool(status["state"] == "learned")

        wait_for(lambda: learned("warm"), timeout=120, every=0.1)

        filler = fill(small_disk)
        assert filler.stat().st_size > 0
        r = httpx.post(f"{url}/v1/documents", json=documents("full"), timeout=30)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["type"] == "server_error" and error["code"] == 503
        assert "cannot store" in error["message"] and "free space" in error["message"]
        assert int(r.headers["Retry-After"]) > 0
        for k in range(4):  # nothing of the request was stored
            assert httpx.get(f"{url}/v1/documents/full-{k}", timeout=30).status_code == 404
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert "disk is full" in ready.json()["detail"]

        filler.unlink()
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 200, timeout=30)
        r = httpx.post(f"{url}/v1/documents", json=documents("full"), timeout=30)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 4
        wait_for(lambda: all(learned(f"full-{k}") for k in range(4)), timeout=120, every=0.1)
    finally:
        server.kill(signal.SIGTERM)
