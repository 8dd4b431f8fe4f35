"""Benchmark of the scale-out pieces (issue "Beyond one machine"): learner ranks, replicas, Redis.

    .venv/bin/python benchmarks/scale.py --model tiny    # the tests' 2-layer model, ~2 minutes
    .venv/bin/python benchmarks/scale.py                 # SmolLM2-135M-Instruct

Starts a real `redis-server` on a free loopback port and measures, with HuffPost documents:

- learner throughput: `livelm learn` with 1 rank, then `torchrun --nproc-per-node 2` with 2
  ranks, over the same documents (each run on a fresh stream and store); documents and tokens
  per second from the first read to the last publish, as the workers report them;
- publish to replicas: one learner and two `livelm serve --follow` replicas; for each of a run
  of documents posted one at a time, the time from the version's manifest being written
  (`created`) to the last replica serving it (`/v1/models`, polled every 10 ms);
- Redis ingest: `livelm ingest` of a stream file in batches of 500, documents per second.

Prints a markdown table (the command first) and writes it to `runs/bench-scale/<model>.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from paths import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.serve import ms, news, quantile, tiny_model
from tests.redis_util import redis_server

LIVELM = [sys.executable, "-m", "livelm"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
_DONE = re.compile(r"(\d+) documents and (\d+) tokens in ([\d.]+) s")
_URL = re.compile(r"livelm serve: (http://\S+) ")


def write_jsonl(docs: list[dict[str, str]], path: Path) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def learn_run(model: str, url: str, docs: Path, ranks: int, work: Path) -> tuple[float, float]:
    """(documents/s, tokens/s) of `ranks` learners over `docs`, on a fresh stream and store."""
    source = f"{url}?stream=bench{ranks}&group=learners"
    subprocess.run([*LIVELM, "ingest", str(docs), "--to", source], check=True)
    args = ["learn", "--source", source, "--store", str(work / f"store{ranks}"), "--model", model]
    args += ["--device", "cpu", "--exit-when-idle", "3", "--block-ms", "200"]
    if ranks == 1:
        command = [*LIVELM, *args]
    else:
        command = [*TORCHRUN, "--nproc-per-node", str(ranks), "-m", "livelm", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    match = _DONE.search(out)
    assert match, out
    n, tokens, seconds = int(match[1]), int(match[2]), float(match[3])
    return n / seconds, tokens / seconds


def follow_run(model: str, url: str, docs: list[dict[str, str]], work: Path) -> list[float]:
    """Seconds from each version's manifest to the last of two replicas serving it."""
    source = f"{url}?stream=follow&group=learners"
    store = work / "store-follow"
    learner = subprocess.Popen(
        [*LIVELM, "learn", "--source", source, "--store", str(store), "--model", model,
         "--device", "cpu", "--publish-every-steps", "1", "--block-ms", "50"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    replicas, clients = [], []
    try:
        for _ in range(2):
            proc = subprocess.Popen(
                [*LIVELM, "serve", "--follow", str(store), "--model", model, "--device", "cpu",
                 "--port", "0", "--quiet", "--source", source],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            replicas.append(proc)
            assert proc.stdout is not None
            match = next(m for line in proc.stdout if (m := _URL.search(line)))
            clients.append(httpx.Client(base_url=match[1], timeout=60))
        for c in clients:
            _until(lambda c=c: _ok(c), 600)
        delays = []
        for doc in docs:
            version = _version(clients[0])
            clients[0].post("/v1/documents", json=doc).raise_for_status()
            _until(lambda v=version: all(_version(c) > v for c in clients), 300, every=0.01)
            served = time.time()
            newest = max(int(p.name[1:]) for p in store.glob("v[0-9]*"))
            manifest = json.loads((store / f"v{newest:06d}" / "manifest.json").read_text())
            delays.append(served - datetime.fromisoformat(manifest["created"]).timestamp())
        return delays
    finally:
        for p in [*replicas, learner]:
            p.terminate()
            p.wait(60)


def _ok(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _version(client: httpx.Client) -> int:
    return int(client.get("/v1/models").json()["data"][0]["version"])


def _until(check: object, timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(every)


def ingest_rate(url: str, docs: Path) -> float:
    out = subprocess.run(
        [*LIVELM, "ingest", str(docs), "--to", f"{url}?stream=ingest&group=g"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    match = re.search(r"\((\d+) documents/s\)", out.stderr)
    assert match, out.stderr
    return float(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="'tiny' for the tests' model")
    parser.add_argument("--docs", type=int, default=None, help="documents per learner run")
    parser.add_argument("--versions", type=int, default=10, help="publishes timed to replicas")
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(tiny_model(work / "tiny")) if args.model == "tiny" else args.model
        n = args.docs or (400 if args.model == "tiny" else 192)
        learn_docs = write_jsonl(news(0, n, "learn"), work / "learn.jsonl")
        many = write_jsonl(news(0, 5000, "ingest"), work / "ingest.jsonl")
        with redis_server(work / "redis") as url:
            rate = ingest_rate(url, many)
            one = learn_run(model, url, learn_docs, 1, work)
            two = learn_run(model, url, learn_docs, 2, work)
            delays = follow_run(model, url, news(5000, args.versions, "follow"), work)
    rows = [
        f"    {command}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, model {args.model}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| learner, 1 rank: documents/s, tokens/s ({n} documents) | {one[0]:.1f}, {one[1]:.0f} |",
        f"| learner, 2 ranks (torchrun, gloo): documents/s, tokens/s "
        f"| {two[0]:.1f}, {two[1]:.0f} |",
        f"| 2 ranks / 1 rank | {two[1] / one[1]:.2f}x |",
        f"| publish to the last of 2 replicas serving it: p50, p95 (ms, {len(delays)} versions) "
        f"| {ms(quantile(delays, 0.5))}, {ms(quantile(delays, 0.95))} |",
        f"| Redis ingest, `livelm ingest` in batches of 500 (documents/s) | {rate:.0f} |",
        "",
        "Each version's publish-to-last-replica time, in posting order (ms): "
        + ", ".join(ms(d) for d in delays),
    ]
    table = "\n".join(rows)
    print(table)
    out = ROOT / "runs" / "bench-scale"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.model}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
