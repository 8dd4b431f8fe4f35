"""`livelm replay -` reads stdin as lines arrive: the strategies run side by side and learn from
the first lines while the pipe is still open; their figures match a replay of the same file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from livelm.cli.main import main
from tests.server_util import sigint_as_in_a_terminal


def lines_of(news_lines: list[str], n: int) -> list[str]:
    return [
        json.dumps({"id": f"d{i}", "time": f"2021-03-{i % 28 + 1:02d}", "text": f"{t} ({i})"})
        for i, t in enumerate((news_lines * (n // len(news_lines) + 1))[:n])
    ]


def replay_stdin(tiny_model_dir: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livelm",
            "replay",
            "-",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ | {"OMP_NUM_THREADS": "1", "LIVELM_CACHE": str(out.parent / "cache")},
        preexec_fn=sigint_as_in_a_terminal,
    )


def wait_for_report(
    proc: subprocess.Popen[bytes], out: Path, docs: int, timeout: float = 180
) -> dict[str, Any]:
    """The partial report once it covers `docs` documents for every strategy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / "metrics.json"
        if path.is_file():
            metrics: dict[str, Any] = json.loads(path.read_text())
            if min(m["docs"] for m in metrics["strategies"].values()) >= docs:
                return metrics
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    pytest.fail(f"no report of {docs} documents came")


def test_replay_learns_lines_as_they_arrive(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    lines = lines_of(news_lines, 30)
    out = tmp_path / "out"
    proc = replay_stdin(tiny_model_dir, out, "--strategy", "static,online+lr=1e-2")
    assert proc.stdin is not None
    try:
        # Fewer lines than a step of either strategy (16 and 32): only a pause makes them step.
        for line in lines[:6]:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            time.sleep(0.05)
        metrics = wait_for_report(proc, out, 6)
        assert proc.poll() is None  # the pipe is open: still reading
        assert metrics["status"] == "running"
        assert metrics["options"]["run"] == "side by side"
        online = metrics["strategies"]["online+lr=1e-2"]
        assert online["docs"] == 6 and online["updates"] >= 1  # learned, before the pipe closed
        docs = [json.loads(x) for x in (out / "docs.jsonl").read_text().splitlines()]
        assert [d["id"] for d in docs] == [f"d{i}" for i in range(6)]
        assert all(set(d["loss"]) == {"static", "online+lr=1e-2"} for d in docs)

        rest = "".join(line + "\n" for line in lines[6:]).encode()
        _, err = proc.communicate(rest, timeout=180)  # then stdin closes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["docs"] == 30
    assert all(m["docs"] == 30 for m in metrics["strategies"].values())


def test_stdin_side_by_side_scores_as_a_file_replay_does(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    stream = tmp_path / "news.jsonl"
    stream.write_text("".join(line + "\n" for line in lines_of(news_lines, 50)))
    args = ["--model", str(tiny_model_dir), "--strategy", "static,seed,online", "--quiet"]
    assert main(["replay", str(stream), *args, "--out", str(tmp_path / "file")]) == 0
    # A long --idle: steps close when full or at the end, never on a pause a busy machine makes
    proc = replay_stdin(
        tiny_model_dir, tmp_path / "stdin", "--strategy", "static,seed,online", "--idle", "600"
    )
    _, err = proc.communicate(stream.read_bytes(), timeout=180)
    assert proc.returncode == 0, err.decode()
    # The same steps in the same order: the same scores, document for document.
    # (to float rounding: the subprocess may sum over another number of threads)
    from_file = [json.loads(x) for x in (tmp_path / "file" / "docs.jsonl").read_text().splitlines()]
    from_stdin = [
        json.loads(x) for x in (tmp_path / "stdin" / "docs.jsonl").read_text().splitlines()
    ]
    assert len(from_file) == 50 and len(from_stdin) == 50
    for a, b in zip(from_file, from_stdin, strict=True):
        assert {k: v for k, v in a.items() if k != "loss"} == {
            k: v for k, v in b.items() if k != "loss"
        }
        assert a["loss"].keys() == b["loss"].keys()
        for name, loss in a["loss"].items():
            assert loss == pytest.approx(b["loss"][name], rel=1e-6), (a["id"], name)


def test_ctrl_c_while_stdin_is_open(
    tmp_path: Path, tiny_model_dir: Path, news_lines: list[str]
) -> None:
    out = tmp_path / "out"
    proc = replay_stdin(tiny_model_dir, out, "--strategy", "static,online")
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write("".join(x + "\n" for x in lines_of(news_lines, 5)).encode())
        proc.stdin.flush()
        wait_for_report(proc, out, 5)
        proc.send_signal(signal.SIGINT)  # the reader thread is blocked on the open pipe
        assert proc.wait(timeout=120) == 130
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err and "Fatal" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("livelm replay: interrupted at document 5 (the strategies side by side); ")
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["docs"] == 5
