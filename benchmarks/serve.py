"""Benchmark of `livelm serve` (issue "livelm serve"): freshness, serving latency, ingest rate.

    .venv/bin/python benchmarks/serve.py --model tiny     # a 2-layer test model, about a minute
    .venv/bin/python benchmarks/serve.py                  # the default model (SmolLM2-135M)

Runs a real `livelm serve` process on a loopback port (default settings, CPU) and measures
from a client process, with HuffPost documents from `../shared/data`:

- freshness, with the stream idle: from `POST /v1/documents` returning to (a) the version that
  holds the document being live (`/v1/models` says so) and (b) `/v1/score` on the document
  answering from that version; polled every 10 ms;
- serving latency of `/v1/score` (one document) and of a short greedy `/v1/completions`
  (16 tokens), sequential requests, with the learner idle and then busy (a backlog of queued
  documents), with the learner's steps during the busy phase to show it was working;
- ingest throughput of `/v1/documents` in batches of 100.

Prints a markdown table (the command first) and writes it to `runs/bench-serve/<model>.md`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT.parent / "shared" / "data" / "news-huffpost-2018-2022.jsonl"
SERVE = [sys.executable, "-m", "livelm", "serve"]
_URL = re.compile(r"livelm serve: (http://\S+) ")
T = TypeVar("T")
PACE = 0.2  # seconds between requests in the paced busy phase: gaps the learner may use


def tiny_model(directory: Path) -> Path:
    """The tests' tiny Llama (2 layers, 64 wide) and its tokenizer, as a model directory."""
    sys.path.insert(0, str(ROOT))
    from tests.gguf_writer import save_tiny_model_dir

    return save_tiny_model_dir(directory)


def news(skip: int, n: int, tag: str) -> list[dict[str, str]]:
    """`n` HuffPost documents after the first `skip`, with ids unique to this run."""
    with open(NEWS) as f:
        rows = [json.loads(line) for line in itertools.islice(f, skip, skip + n)]
    return [{"id": f"{tag}-{r['id']}", "text": r["text"], "time": r["time"]} for r in rows]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(values: list[float], q: float) -> str:
    return f"{1000 * quantile(values, q):.0f}"


class Server:
    def __init__(self, model: str, data_dir: Path, log: Path) -> None:
        args = ["--model", model, "--data-dir", str(data_dir), "--port", "0", "--quiet"]
        args += ["--device", "cpu"]
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*SERVE, *args], stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        assert self.proc.stdout is not None
        match = None
        for line in self.proc.stdout:
            if match := _URL.search(line):
                break
        if match is None:
            raise RuntimeError(f"livelm serve did not start; see {log}")
        self.client = httpx.Client(base_url=match.group(1), timeout=300)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"livelm serve was not ready in 600 s; see {log}")

    def version(self) -> int:
        return int(self.client.get("/v1/models").json()["data"][0]["version"])

    def metric(self, name: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(120)


def poll(check: Callable[[], T | None], every: float, timeout: float = 300) -> T:
    """Call `check` every `every` seconds until it returns something."""
    started = time.perf_counter()
    while (value := check()) is None:
        if time.perf_counter() - started > timeout:
            raise TimeoutError("the server did not catch up")
        time.sleep(every)
    return value


def learned_version(server: Server, doc_id: str) -> int | None:
    state = server.client.get(f"/v1/documents/{doc_id}").json()
    return int(state["version"]) if state["state"] == "learned" else None


def score_after(server: Server, text: str, version: int) -> dict[str, Any] | None:
    """The score of `text` if a version other than `version` answered it."""
    body: dict[str, Any] = server.client.post("/v1/score", json={"text": text}).json()
    return body if body["version"] != version else None


def freshness(server: Server, docs: list[dict[str, str]]) -> dict[str, list[float]]:
    """Two passes over fresh documents, one per clock, so neither waits on the other's polls."""
    live, scored, drops = [], [], []
    half = len(docs) // 2
    for doc in docs[:half]:  # (a) POST -> the version holding it is live
        server.client.post("/v1/documents", json=doc).raise_for_status()
        posted = time.perf_counter()
        version = poll(partial(learned_version, server, doc["id"]), every=0.01)
        live.append(time.perf_counter() - posted)
        assert server.version() >= version  # it went live before it was acknowledged
    for doc in docs[half:]:  # (b) POST -> /v1/score answers from a version that holds it
        before = server.client.post("/v1/score", json={"text": doc["text"]}).json()
        server.client.post("/v1/documents", json=doc).raise_for_status()
        posted = time.perf_counter()
        # Every 50 ms: polls are requests too, and the learner waits for a gap between them.
        after = poll(partial(score_after, server, doc["text"], before["version"]), every=0.05)
        scored.append(time.perf_counter() - posted)
        holder = learned_version(server, doc["id"])
        assert holder is not None and holder <= after["version"]
        drops.append(before["documents"][0]["loss"] - after["documents"][0]["loss"])
    return {"live": live, "score": scored, "drop": drops}


def latencies(server: Server, n: int, text: str, pause: float = 0.0) -> dict[str, list[float]]:
    """Sequential requests, each `pause` seconds after the last answer."""
    out: dict[str, list[float]] = {"score": [], "completion": []}
    body = {"model": "livelm", "prompt": "The news today:", "max_tokens": 16, "temperature": 0}
    for _ in range(n):
        time.sleep(pause)
        started = time.perf_counter()
        server.client.post("/v1/score", json={"text": text}).raise_for_status()
        out["score"].append(time.perf_counter() - started)
        time.sleep(pause)
        started = time.perf_counter()
        server.client.post("/v1/completions", json=body).raise_for_status()
        out["completion"].append(time.perf_counter() - started)
    return out


def ingest(server: Server, docs: list[dict[str, str]], batch: int = 100) -> float:
    started = time.perf_counter()
    for i in range(0, len(docs), batch):
        server.client.post("/v1/documents", json=docs[i : i + batch]).raise_for_status()
    return len(docs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="'tiny', or any livelm --model")
    parser.add_argument("--fresh", type=int, default=None, help="freshness samples")
    parser.add_argument("--requests", type=int, default=None, help="latency samples per phase")
    parser.add_argument("--backlog", type=int, default=None, help="documents queued when busy")
    parser.add_argument("--ingest", type=int, default=5000, help="documents ingested")
    args = parser.parse_args()
    tiny = args.model == "tiny"
    fresh_n = args.fresh or (40 if tiny else 10)
    requests_n = args.requests or (200 if tiny else 40)
    backlog_n = args.backlog or (3000 if tiny else 300)
    command = "benchmarks/serve.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="livelm-bench-serve-") as tmp:
        model = str(tiny_model(Path(tmp) / "tiny")) if tiny else args.model
        server = Server(model, Path(tmp) / "data", Path(tmp) / "server.log")
        try:
            text = news(0, 1, "probe")[0]["text"]
            latencies(server, 5, text)  # warm up
            fresh = freshness(server, news(100, fresh_n, "fresh"))
            idle = latencies(server, requests_n, text)
            ingest(server, news(1000, backlog_n, "busy"))
            busy = {}
            for phase, pause in (("busy", 0.0), ("busy, paced", PACE)):
                steps = server.metric("livelm_learner_steps_total")
                started = time.perf_counter()
                busy[phase] = latencies(server, requests_n, text, pause)
                busy[phase]["steps"] = [server.metric("livelm_learner_steps_total") - steps]
                busy[phase]["seconds"] = [time.perf_counter() - started]
            queued_after = server.metric('livelm_documents{state="queued"}')
            rate = ingest(server, news(5000, args.ingest, "ingest"))
        finally:
            server.stop()

    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = [
        f"`{command}` (model: {args.model}; {os.cpu_count()} CPUs, {load})",
        "",
        "| measure | p50 | p95 / p99 | n |",
        "|---|---|---|---|",
        f"| freshness: POST to version live (ms) | {ms(fresh['live'], 0.5)} "
        f"| p95 {ms(fresh['live'], 0.95)} | {len(fresh['live'])} |",
        f"| freshness: POST to /v1/score reflecting it (ms) | {ms(fresh['score'], 0.5)} "
        f"| p95 {ms(fresh['score'], 0.95)} | {len(fresh['score'])} |",
        f"| score drop on the learned document (nats/token) | "
        f"{statistics.median(fresh['drop']):.3f} | min {min(fresh['drop']):.3f} "
        f"| {len(fresh['drop'])} |",
    ]
    for name in ("score", "completion"):
        label = "/v1/score (1 doc)" if name == "score" else "/v1/completions (16 tokens)"
        for phase, data in (("idle", idle), *busy.items()):
            lines.append(
                f"| {label}, learner {phase} (ms) | {ms(data[name], 0.5)} "
                f"| p99 {ms(data[name], 0.99)} | {requests_n} |"
            )
    for phase, data in busy.items():
        ratio = [quantile(data[n], 0.99) / quantile(idle[n], 0.99) for n in ("score", "completion")]
        lines += [
            f"| {phase}: p99 / idle p99 (score, completion) | {ratio[0]:.2f}x "
            f"| {ratio[1]:.2f}x | |",
            f"| {phase}: learner steps in the phase (seconds) | {data['steps'][0]:.0f} "
            f"| ({data['seconds'][0]:.0f} s) | |",
        ]
    lines += [
        f"| backlog left after the busy phases (of {backlog_n}) | {queued_after:.0f} | | |",
        f"| ingest, batches of 100 (documents/s) | {rate:.0f} | | {args.ingest} |",
    ]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "runs" / "bench-serve" / f"{'tiny' if tiny else Path(args.model).name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
