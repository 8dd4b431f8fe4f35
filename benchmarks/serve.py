"""Benchmark of `livelm serve` against plain transformers: speed, concurrency, memory, freshness.

    .venv/bin/python benchmarks/serve.py                  # the default model (SmolLM2-135M)
    .venv/bin/python benchmarks/serve.py --quick          # the same phases, small: a few minutes
    .venv/bin/python benchmarks/serve.py --model tiny     # the tests' 2-layer model

One run, in this order, from a client process (HuffPost documents from `../shared/data`):

1. plain transformers on the same base model, loaded by `livelm.model.load_model` (fp32, then
   cast to bf16), no server running: greedy `generate` of `--tokens` new tokens (ms/token) and a
   plain forward with the loss of one document (ms), each the median of `--repeats`;
2. a real `livelm serve` process (`--device cpu`, a temporary `--data-dir`, a free loopback
   port), measured only through its HTTP API and `/proc/<pid>/status`:
   - idle: `--idle-s` seconds after start-up and warm-up;
   - the same greedy generation through `/v1/completions` (ms/token from the response's
     `usage`) and `/v1/score` of the same document, sequential requests;
   - learning `--learn` news documents posted at once, to the last one learned;
   - freshness with the stream idle, then beside one client scoring back to back: documents
     posted at `--doc-rate` a second for `--fresh-s` seconds, each timed from its POST
     returning to its state saying `learned` (its version live; polled every 50 ms); the
     scoring client's latency against the sequential one;
   - completions (`--tokens`, greedy) from 1, 8 and 32 clients, each sending its next request
     as the last one returns, for `--load-s` seconds: tokens/s and latency;
   - idle again, `--idle-s` seconds after the load.

Memory is the server's resident set: its peak in each phase (`VmHWM`, reset at the phase's start
through `/proc/<pid>/clear_refs`, and `VmRSS` sampled every 20 ms, whichever is higher) and at
the phase's end. Prints a markdown table (the command first) and writes it to
`runs/bench-serve/<model>[-quick].md` (or `--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from paths import NEWS, ROOT

SERVE = [sys.executable, "-m", "livelm", "serve"]
_URL = re.compile(r"livelm serve: (http://\S+) ")
PROMPT = "The city council met on Tuesday to discuss the new park, and"
MB = 1 << 20


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
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- plain transformers -----------------------------------------------------------------------


def plain_baselines(model_spec: str, tokens: int, text: str, repeats: int) -> dict[str, Any]:
    """ms/token of greedy `generate` and ms of a forward with the loss, in fp32 and bf16."""
    import torch
    import torch.nn.functional as F

    from livelm.learner.encoding import Encoder
    from livelm.model import load_model

    loaded = load_model(model_spec, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    boundary = Encoder(tokenizer, 1024, "auto").boundary  # what the server puts first
    prompt = torch.tensor([[boundary, *tokenizer(PROMPT, add_special_tokens=False).input_ids]])
    doc = torch.tensor([[boundary, *tokenizer(text, add_special_tokens=False).input_ids]])
    eos = model.generation_config.eos_token_id
    out: dict[str, Any] = {"prompt_tokens": prompt.shape[1], "doc_tokens": doc.shape[1]}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)  # type: ignore[arg-type]  # transformers' stub of .to is too narrow
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        per_token, forward, made = [], [], 0
        with torch.inference_mode():
            for i in range(repeats + 1):  # the first is a warm-up
                started = time.perf_counter()
                ids = model.generate(  # type: ignore[operator]
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
                made = max(1, ids.shape[1] - prompt.shape[1])
                if i:
                    per_token.append((time.perf_counter() - started) / made)
                started = time.perf_counter()
                logits = model(input_ids=doc).logits
                F.cross_entropy(logits[0, :-1].float(), doc[0, 1:])
                if i:
                    forward.append(time.perf_counter() - started)
        out[name] = {
            "ms_per_token": 1000 * statistics.median(per_token),
            "tokens": made,
            "forward_ms": 1000 * statistics.median(forward),
        }
    del model, loaded
    return out


# -- the server -------------------------------------------------------------------------------


class Server:
    def __init__(self, model: str, data_dir: Path, log: Path, args: list[str], env: dict[str, str]):
        argv = ["--model", model, "--data-dir", str(data_dir), "--port", "0", "--quiet"]
        argv += ["--device", "cpu", *args]
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*SERVE, *argv],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=os.environ | env,
            )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        match = None
        for line in self.proc.stdout:
            if match := _URL.search(line):
                break
        if match is None:
            raise RuntimeError(f"livelm serve did not start; see {log}")
        self.url = match.group(1)
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"livelm serve exited; see {log}")
            time.sleep(0.1)
        raise RuntimeError(f"livelm serve was not ready in 900 s; see {log}")

    def metric(self, name: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(120)


def complete(client: httpx.Client, tokens: int) -> tuple[float, int]:
    """One greedy completion: seconds, tokens generated."""
    body = {"model": "livelm", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    started = time.perf_counter()
    r = client.post("/v1/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - started, max(1, int(r.json()["usage"]["completion_tokens"]))


def score(client: httpx.Client, text: str) -> float:
    started = time.perf_counter()
    client.post("/v1/score", json={"text": text}).raise_for_status()
    return time.perf_counter() - started


# -- memory -----------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class Phase:
    peak: int = 0  # bytes
    end: int = 0


@dataclass
class Memory:
    """Samples a process's resident set every `every` seconds; `phase()` measures one phase."""

    pid: int
    every: float = 0.02
    phases: dict[str, Phase] = field(default_factory=dict)
    _current: Phase | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            try:
                rss = _status(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            if (phase := self._current) is not None:
                phase.peak = max(phase.peak, rss)

    @contextmanager
    def phase(self, name: str, *, since_start: bool = False) -> Iterator[None]:
        """The peak over the phase; `since_start`: the peak since the process started."""
        if not since_start:
            # 5: reset the peak resident set (VmHWM) to the current one.
            with contextlib.suppress(OSError):
                Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        phase = self.phases[name] = Phase()
        self._current = phase
        try:
            yield
        finally:
            status = _status(self.pid)
            phase.peak = max(phase.peak, status["VmHWM"])
            phase.end = status["VmRSS"]
            self._current = None

    def stop(self) -> None:
        self._stop.set()


# -- phases -----------------------------------------------------------------------------------


def states(server: Server, ids: list[str]) -> dict[str, str]:
    return {i: server.client.get(f"/v1/documents/{i}").json()["state"] for i in ids}


def learn(server: Server, docs: list[dict[str, str]], timeout: float) -> float:
    """Post `docs` at once and wait for the last to be learned; seconds."""
    started = time.perf_counter()
    for i in range(0, len(docs), 100):
        server.client.post("/v1/documents", json=docs[i : i + 100]).raise_for_status()
    while server.metric('livelm_documents{state="queued"}') > 0:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{len(docs)} documents not learned in {timeout} s")
        time.sleep(0.2)
    return time.perf_counter() - started


@dataclass
class Freshness:
    seconds: list[float]  # of each learned document
    rejected: int
    late: int  # not learned `timeout` seconds after the last POST
    scores: list[float]  # the scoring client's latencies (seconds), if there was one


def freshness(
    server: Server, docs: list[dict[str, str]], rate: float, text: str | None, timeout: float
) -> Freshness:
    """Documents posted at `rate` a second, each timed to its state saying `learned`; with
    `text`, one client scores it back to back meanwhile."""
    stop = threading.Event()
    scores: list[float] = []
    errors: list[BaseException] = []

    def scoring() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            try:
                while not stop.is_set():
                    scores.append(score(client, text or ""))
            except BaseException as e:  # raised in the main thread, below
                errors.append(e)

    scorer = threading.Thread(target=scoring, daemon=True)
    if text is not None:
        scorer.start()
        time.sleep(1.0)  # the load is steady before the first document
    posted: dict[str, float] = {}
    done: dict[str, float] = {}
    rejected = 0

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            start = time.perf_counter()
            for i, doc in enumerate(docs):
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
                client.post("/v1/documents", json=doc).raise_for_status()
                posted[doc["id"]] = time.perf_counter()

    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    deadline = None
    while len(done) < len(docs):
        if deadline is None and not poster.is_alive():
            deadline = time.perf_counter() + timeout
        if deadline is not None and time.perf_counter() > deadline:
            break
        # Documents are learned about in order: ask about the oldest outstanding ones first,
        # and stop at the first still queued.
        for doc_id in [i for i in list(posted) if i not in done]:
            state = server.client.get(f"/v1/documents/{doc_id}").json()["state"]
            if state == "queued":
                break
            if state == "learned":
                done[doc_id] = time.perf_counter()
            else:
                rejected += 1
                done[doc_id] = float("nan")
        time.sleep(0.05)
    stop.set()
    poster.join()
    if text is not None:
        scorer.join()
    if errors:
        raise errors[0]
    seconds = [done[i] - posted[i] for i in done if done[i] == done[i]]
    return Freshness(seconds, rejected, len(docs) - len(done), scores)


@dataclass
class Load:
    clients: int
    seconds: float
    latencies: list[float]
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def load(server: Server, clients: int, seconds: float, tokens: int) -> Load:
    """`clients` clients, each sending its next greedy completion as the last returns, until
    `seconds` have passed (requests under way then finish and count)."""
    latencies: list[float] = []
    made: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = 0.0

    errors: list[BaseException] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=900) as c:
            start.wait()
            try:
                while time.perf_counter() < deadline:
                    latency, n = complete(c, tokens)
                    with lock:
                        latencies.append(latency)
                        made.append(n)
            except BaseException as e:  # raised in the main thread, below
                errors.append(e)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline = began + seconds
    start.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return Load(clients, time.perf_counter() - began, latencies, sum(made))


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    tokens: int
    repeats: int
    requests: int
    learn: int
    fresh_s: float
    doc_rate: float
    load_s: float
    idle_s: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> Sizes:
        quick = args.quick
        return cls(
            tokens=args.tokens or (16 if quick else 64),
            repeats=args.repeats or (2 if quick else 5),
            requests=args.requests or (10 if quick else 40),
            learn=args.learn or (30 if quick else 300),
            fresh_s=args.fresh_s or (20 if quick else 60),
            doc_rate=args.doc_rate,
            load_s=args.load_s or (10 if quick else 60),
            idle_s=args.idle_s or (5 if quick else 15),
        )


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="'tiny', or any livelm --model")
    parser.add_argument("--quick", action="store_true", help="every phase, small and short")
    parser.add_argument("--tokens", type=int, help="new tokens a generation (64; quick 16)")
    parser.add_argument("--repeats", type=int, help="generations and forwards timed (5; 2)")
    parser.add_argument("--requests", type=int, help="sequential requests timed (40; 10)")
    parser.add_argument("--learn", type=int, help="documents learned at once (300; 30)")
    parser.add_argument("--fresh-s", type=float, help="seconds of posting (60; 20)")
    parser.add_argument("--doc-rate", type=float, default=0.5, help="documents/s posted")
    parser.add_argument("--load-s", type=float, help="seconds per client count (60; 10)")
    parser.add_argument("--idle-s", type=float, help="seconds idle (15; 5)")
    parser.add_argument("--clients", default="1,8,32", help="client counts for completions")
    parser.add_argument("--no-plain", action="store_true", help="skip plain transformers")
    parser.add_argument("--out", type=Path, help="the table's file (runs/bench-serve/...)")
    parser.add_argument("--serve-args", default="", help="more `livelm serve` flags, quoted")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="for the server"
    )
    args = parser.parse_args()
    sizes = Sizes.of(args)
    clients = [int(c) for c in args.clients.split(",")]
    env = dict(e.split("=", 1) for e in args.env)
    command = "benchmarks/serve.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    text = news(0, 1, "probe")[0]["text"]

    with tempfile.TemporaryDirectory(prefix="livelm-bench-serve-") as tmp:
        model = str(tiny_model(Path(tmp) / "tiny")) if args.model == "tiny" else args.model
        plain = None if args.no_plain else plain_baselines(model, sizes.tokens, text, sizes.repeats)
        started = time.perf_counter()
        server = Server(
            model, Path(tmp) / "data", Path(tmp) / "server.log", shlex.split(args.serve_args), env
        )
        ready_s = time.perf_counter() - started
        memory = Memory(server.pid)
        try:
            with memory.phase("start-up and warm-up", since_start=True):
                for _ in range(2):
                    complete(server.client, sizes.tokens)
                    score(server.client, text)
            with memory.phase("idle"):
                time.sleep(sizes.idle_s)
            with memory.phase("sequential requests"):
                generation = [complete(server.client, sizes.tokens) for _ in range(sizes.repeats)]
                scores = [score(server.client, text) for _ in range(sizes.requests)]
            steps = server.metric("livelm_learner_steps_total")
            with memory.phase(f"learning {sizes.learn} documents"):
                learn_s = learn(server, news(1000, sizes.learn, "learn"), timeout=3600)
            learn_steps = server.metric("livelm_learner_steps_total") - steps
            n_fresh = max(1, round(sizes.fresh_s * sizes.doc_rate))
            with memory.phase("freshness, stream idle"):
                fresh_idle = freshness(
                    server, news(3000, n_fresh, "fresh"), sizes.doc_rate, None, 300
                )
            with memory.phase("freshness, one client scoring"):
                fresh_busy = freshness(
                    server, news(4000, n_fresh, "busy"), sizes.doc_rate, text, 300
                )
            loads = {}
            for n in clients:
                with memory.phase(f"completions, {n} client{'s' if n > 1 else ''}"):
                    loads[n] = load(server, n, sizes.load_s, sizes.tokens)
            with memory.phase("idle after"):
                time.sleep(sizes.idle_s)
        finally:
            memory.stop()
            server.stop()

    gen_s = [s / n for s, n in generation]
    gen_tokens = statistics.median(n for _, n in generation)
    livelm_ms = 1000 * statistics.median(gen_s)
    load_now = os.getloadavg()[0]
    lines = [
        f"`{command}` (model: {args.model}; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before, {load_now:.1f} after; server ready in {ready_s:.0f} s)",
        "",
        "| measure | value | detail |",
        "|---|---|---|",
        f"| livelm /v1/completions, greedy (ms/token) | {livelm_ms:.1f} | "
        f"{gen_tokens:.0f} tokens, median of {len(generation)} |",
    ]
    if plain is not None:
        best = min(plain["bf16"]["ms_per_token"], plain["fp32"]["ms_per_token"])
        for name in ("bf16", "fp32"):
            p = plain[name]
            lines.append(
                f"| plain transformers `generate`, {name} (ms/token) | {p['ms_per_token']:.1f} | "
                f"{p['tokens']} tokens, prompt {plain['prompt_tokens']} |"
            )
        lines.append(f"| livelm / best plain, generation | {livelm_ms / best:.2f}x | |")
    score_p50 = statistics.median(scores)
    lines.append(
        f"| livelm /v1/score, 1 document (ms) | {ms(score_p50)} | p99 "
        f"{ms(quantile(scores, 0.99))}, n {len(scores)} |"
    )
    if plain is not None:
        best_fwd = min(plain["bf16"]["forward_ms"], plain["fp32"]["forward_ms"])
        for name in ("bf16", "fp32"):
            lines.append(
                f"| plain forward with the loss, {name} (ms) | {plain[name]['forward_ms']:.0f} | "
                f"{plain['doc_tokens']} tokens |"
            )
        lines.append(f"| livelm / best plain, scoring | {1000 * score_p50 / best_fwd:.2f}x | |")
    for n, result in loads.items():
        lat = result.latencies
        lines.append(
            f"| completions, {n} client{'s' if n > 1 else ''}: tokens/s | "
            f"{result.tokens_per_s:.1f} | latency p50 {ms(quantile(lat, 0.5))} ms, p99 "
            f"{ms(quantile(lat, 0.99))} ms, n {len(lat)} |"
        )
    if 1 in loads and 8 in loads:
        lines.append(
            f"| 8 clients / 1 client: tokens/s, p99 latency | "
            f"{loads[8].tokens_per_s / loads[1].tokens_per_s:.2f}x | "
            f"{quantile(loads[8].latencies, 0.99) / quantile(loads[1].latencies, 0.99):.2f}x |"
        )
    lines.append(
        f"| learning {sizes.learn} documents (documents/s) | {sizes.learn / learn_s:.1f} | "
        f"{learn_s:.0f} s, {learn_steps:.0f} steps |"
    )
    for label, f in (("stream idle", fresh_idle), ("one client scoring", fresh_busy)):
        detail = f"n {len(f.seconds)}, max {max(f.seconds, default=float('nan')):.1f} s"
        if f.rejected or f.late:
            detail += f", {f.rejected} rejected, {f.late} not learned in 300 s"
        lines.append(
            f"| freshness at {sizes.doc_rate:g} documents/s, {label}: p50 / p95 (s) | "
            f"{quantile(f.seconds, 0.5):.1f} / {quantile(f.seconds, 0.95):.1f} | {detail} |"
        )
    busy = fresh_busy.scores
    lines.append(
        f"| /v1/score beside the learner, back to back (ms) | {ms(quantile(busy, 0.5))} | "
        f"p99 {ms(quantile(busy, 0.99))} = {quantile(busy, 0.99) / quantile(scores, 0.99):.2f}x "
        f"the sequential p99, n {len(busy)} |"
    )
    for name, phase in memory.phases.items():
        lines.append(
            f"| server RSS, {name} (MB): peak | {phase.peak / MB:.0f} | at its end "
            f"{phase.end / MB:.0f} |"
        )
    targets: list[tuple[str, bool, str]] = []
    if plain is not None:
        targets += [
            (
                "generation within 1.2x of plain",
                livelm_ms / best <= 1.2,
                f"{livelm_ms / best:.2f}x",
            ),
            (
                "/v1/score within 1.2x of a plain forward",
                1000 * score_p50 / best_fwd <= 1.2,
                f"{1000 * score_p50 / best_fwd:.2f}x",
            ),
        ]
    if 1 in loads and 8 in loads:
        gain = loads[8].tokens_per_s / loads[1].tokens_per_s
        growth = quantile(loads[8].latencies, 0.99) / quantile(loads[1].latencies, 0.99)
        targets.append(
            (
                "8 clients: >= 4x the tokens/s of 1, p99 grows < 8x",
                gain >= 4 and growth < 8,
                f"{gain:.2f}x, {growth:.2f}x",
            )
        )
    busy_peak = max(
        (p.peak for n, p in memory.phases.items() if n.startswith(("learning", "completions, 32"))),
        default=0,
    )
    targets += [
        (
            "peak RSS <= 2 GB learning and under 32 clients",
            busy_peak <= 2 << 30,
            f"{busy_peak / MB:.0f} MB",
        ),
        (
            "RSS back under 1.2 GB idle",
            memory.phases["idle after"].end < 1.2 * (1 << 30),
            f"{memory.phases['idle after'].end / MB:.0f} MB",
        ),
        (
            "freshness p95 < 15 s beside one scoring client",
            quantile(fresh_busy.seconds, 0.95) < 15 and not fresh_busy.late,
            f"{quantile(fresh_busy.seconds, 0.95):.1f} s",
        ),
        (
            "/v1/score p99 beside the learner within 2x idle",
            quantile(busy, 0.99) <= 2 * quantile(scores, 0.99),
            f"{quantile(busy, 0.99) / quantile(scores, 0.99):.2f}x",
        ),
    ]
    for label, met, value in targets:
        lines.append(f"| target: {label} | {'met' if met else 'missed'} | {value} |")
    table = "\n".join(lines)
    print(table)
    name = "tiny" if args.model == "tiny" else Path(args.model).name
    out = args.out or ROOT / "runs" / "bench-serve" / f"{name}{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
