"""`livelm serve`: the HTTP server that learns from the documents it is sent while it serves.

`serve` is the command as a typed function; `add_serve_parser` and `run_serve` plug it into the
`livelm` entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from livelm.model import DEFAULT_MODEL
from livelm.policy import known_strategies, parse_strategy
from livelm.server import ServerSettings
from livelm.server.memory import cap_kernel_caches, tune_malloc
from livelm.server.settings import API_KEYS_ENV_VAR
from livelm.source.reconcile import REBASE_FLAG
from livelm.source.storage import StorageUnavailable

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEMO_EVERY = 10  # the demo feeds every 10th State of the Union paragraph: 1790 to 2021 sooner


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: a free one).

    Made with an explicit IPPROTO_TCP: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
    on connections whose socket says so, and with it on, a response written in two pieces
    waits for the client's delayed ACK, 40 ms on Linux, on every request.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


# Startup errors whose message names the flag or file that fixes them (a data directory in use,
# a queue that disagrees with the store, a disk that refuses writes): one line, no traceback.
_REFUSALS: tuple[type[BaseException], ...] = (
    ValueError,
    RuntimeError,
    FileNotFoundError,
    StorageUnavailable,
)
_UVICORN_STARTUP_FAILED = "Application startup failed. Exiting."


class _StartupRefusal:
    """Wraps the app so that a startup refused for a reason in `_REFUSALS` ends the command
    with its one-line message, instead of uvicorn logging the lifespan's traceback.

    Starlette reports a failed lifespan by sending its traceback to uvicorn, which logs it; the
    send happens while the exception is being handled, so the wrapper can tell which it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.refused: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet(message: Message) -> None:
            error = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(error, _REFUSALS):
                self.refused = error
                message = {**message, "message": ""}  # uvicorn logs a non-empty one
            await send(message)

        try:
            await self.app(scope, receive, quiet)
        except _REFUSALS:
            if self.refused is None:
                raise

    def filter(self, record: logging.LogRecord) -> bool:
        """Drops uvicorn's own line about a refused startup: `serve` says why instead."""
        return self.refused is None or record.getMessage() != _UVICORN_STARTUP_FAILED


def serve(
    settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False
) -> None:
    """Serve until interrupted. Port 0 picks a free port; the address is printed once bound."""
    import uvicorn  # here, with the app: `--help` imports neither, nor torch

    from livelm.server import create_app

    settings.check_bind(host)
    # Before the server's threads exist, and before the first kernel is compiled.
    tune_malloc(settings.malloc_arenas, settings.malloc_mmap_threshold)
    cap_kernel_caches(settings.kernel_cache)
    try:
        sock = bind(host, port)
    except OSError as e:
        raise RuntimeError(f"--host {host} --port {port}: cannot listen: {e.strerror}") from None
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    if not settings.authenticated:
        print(
            "livelm serve: no API keys configured, so listening on localhost only, with every "
            "route open to this machine's users (set --api-key-read/--api-key-write)",
            flush=True,
        )
    print(f"livelm serve: {url} (API docs at {url}/docs), data in {settings.data_dir}", flush=True)
    # livelm's own progress (versions going live, guard refusals) is worth seeing by default.
    logging.getLogger("livelm").setLevel(logging.INFO)
    app = _StartupRefusal(create_app(settings))
    config = uvicorn.Config(
        app,
        log_level="warning" if quiet else "info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    logging.getLogger("uvicorn.error").addFilter(app)  # after Config: it configures logging
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down gracefully, and passes Ctrl-C on
        print("livelm serve: stopped", flush=True)
    except SystemExit:  # uvicorn exits with status 3 when the lifespan's startup fails
        if app.refused is None:
            raise
    finally:
        logging.getLogger("uvicorn.error").removeFilter(app)
    if app.refused is not None:
        raise RuntimeError(str(app.refused)) from None
    if not server.started:  # uvicorn logged why, and returned
        raise RuntimeError("the server did not start; see the error above")


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve generation and scoring over HTTP while learning from posted documents",
        description=__doc__,
    )
    d = ServerSettings()
    p.add_argument("--model", default=DEFAULT_MODEL, help="as for replay (default: smollm2)")
    p.add_argument("--data-dir", type=Path, default=d.data_dir, help="queue and snapshots")
    p.add_argument(
        "--lock-wait",
        type=float,
        default=d.lock_wait_s,
        help="seconds to wait for another server to leave --data-dir (a restart)",
    )
    p.add_argument(
        "--strategy",
        default="online",
        help="a preset or a name+key=value spec, as replay's; presets: "
        + ", ".join(known_strategies()),
    )
    p.add_argument("--lr", type=float, default=None, help="override the strategy's rate")
    p.add_argument(
        "--boundary",
        default="auto",
        help="the token every document starts with, in learning and /v1/score: auto (the "
        "document separator or a real BOS, never a chat marker), bos, eos, or a token such as "
        "'<|endoftext|>' (default: auto)",
    )
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, ...")
    p.add_argument(
        "--follow",
        type=Path,
        default=None,
        metavar="STORE",
        help="a replica: serve the versions livelm learn workers publish into STORE; learn "
        "nothing (rollback through any replica reaches all)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="with --follow: POST /v1/documents adds to this Redis stream "
        "(redis://host:port/db?stream=NAME&group=GROUP)",
    )
    p.add_argument("--host", default="127.0.0.1", help="beyond localhost only with API keys")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--served-name", default=d.served_name, help="the model id clients send")
    p.add_argument("--publish-every-steps", type=int, default=d.publish_every_steps)
    p.add_argument("--publish-every-s", type=float, default=d.publish_every_s)
    p.add_argument("--keep-last", type=int, default=d.keep_last, help="versions retained")
    p.add_argument(
        "--pinned-versions",
        type=int,
        default=d.pinned_versions,
        help="kept versions that requests name (model livelm@N) held in memory besides the "
        "live one, least recently used out first",
    )
    p.add_argument(
        REBASE_FLAG,
        action="store_true",
        help="a queue that disagrees with the snapshots (restored from an older copy, or from "
        "another server) is re-based after their position, its queued documents learned, "
        "instead of refused",
    )
    p.add_argument(
        "--guard-max-rise",
        type=float,
        default=d.guard_max_rise,
        help="refuse a version whose canary loss rises more than this over the live "
        "version's (nats/token): a jump",
    )
    p.add_argument(
        "--guard-max-total-rise",
        type=float,
        default=d.guard_max_total_rise,
        help="refuse a version whose canary loss rises more than this over the base model's "
        "(nats/token): a slow climb",
    )
    p.add_argument("--canary", type=Path, default=None, help="canary documents (stream file)")
    p.add_argument("--feed", type=Path, default=None, help="feed a stream file into the queue")
    p.add_argument("--feed-every", type=int, default=None, help="feed every n-th document")
    p.add_argument(
        "--feed-backlog",
        type=int,
        default=d.feed_backlog,
        help="the feeder waits while more documents than this wait for the learner",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help=f"feed the State of the Union addresses, 1790-2021 (every {DEMO_EVERY}th paragraph)",
    )
    p.add_argument("--api-key-read", action="append", default=[], metavar="KEY")
    p.add_argument("--api-key-write", action="append", default=[], metavar="KEY")
    p.add_argument(
        "--api-keys-file",
        type=Path,
        default=None,
        help=f"'read:KEY' lines; or set {API_KEYS_ENV_VAR}",
    )
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    p.add_argument("--max-documents-per-request", type=int, default=d.max_documents_per_request)
    p.add_argument("--max-document-chars", type=int, default=d.max_document_chars)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument(
        "--max-score-tokens",
        type=int,
        default=d.max_score_tokens,
        help="tokens one /v1/score request may have scored",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=d.body_timeout_s,
        help="seconds a client has to send a request body (408 after)",
    )
    p.add_argument("--max-inflight", type=int, default=d.max_inflight, help="model requests")
    p.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help="generations decoded together in one batch (more wait for a place)",
    )
    p.add_argument(
        "--yield-quiet-s",
        type=float,
        default=d.yield_quiet_s,
        help="the learner steps once no request has run for this long",
    )
    p.add_argument(
        "--yield-max-s",
        type=float,
        default=d.yield_max_s,
        help="or once it has waited this long (learning never starves)",
    )
    p.add_argument(
        "--learner-share",
        type=float,
        default=d.learner_share,
        help="the share of the time the learner's steps take under a steady load, beside the "
        "requests, so that freshness stays bounded (0: it steps only in quiet moments or after "
        "--yield-max-s)",
    )
    p.add_argument(
        "--malloc-arenas",
        type=int,
        default=d.malloc_arenas,
        help="at most this many malloc arenas (glibc; 0: its default of eight per core): fewer "
        "hold less freed memory; MALLOC_ARENA_MAX, when set, wins",
    )
    p.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=d.malloc_mmap_threshold,
        help="bytes from which a block is mapped for itself and given back when freed (glibc; "
        "0: its default, which rises to 32 MB); MALLOC_MMAP_THRESHOLD_, when set, wins",
    )
    p.add_argument(
        "--malloc-trim-s",
        type=float,
        default=d.malloc_trim_s,
        help="give freed memory back to the system once no request has run for this many "
        "seconds (0: never)",
    )
    p.add_argument(
        "--kernel-cache",
        type=int,
        default=d.kernel_cache,
        help="compiled CPU matmul kernels kept, one per shape, about 1 MB each (oneDNN's and "
        "PyTorch's caches; 0: their default of 1024); ONEDNN_PRIMITIVE_CACHE_CAPACITY and "
        "LRU_CACHE_CAPACITY, when set, win",
    )
    p.add_argument(
        "--score-token-budget",
        type=int,
        default=d.score_token_budget,
        help="tokens in one micro-batch of /v1/score: bounds the memory a long request takes",
    )
    p.add_argument(
        "--drift-webhook",
        default=None,
        metavar="URL",
        help="POST each drift event as JSON to this http(s) URL, from a thread of its own "
        "(a few retries; failures counted in livelm_webhook_failures_total); needs a strategy "
        "with a detector, e.g. --strategy online+detector=adwin",
    )
    p.add_argument("--quiet", action="store_true", help="log warnings only")


def run_serve(args: argparse.Namespace) -> None:
    """Build the settings from parsed flags and serve."""
    from livelm.model import cache_root
    from livelm.server.auth import load_api_keys
    from livelm.source.sotu import write_sotu_stream

    if args.demo and args.feed is not None:
        raise ValueError("--demo feeds the State of the Union stream; drop --feed or --demo")
    if args.follow is not None and (args.demo or args.feed is not None):
        raise ValueError("--follow serves what learners publish: it takes no --demo or --feed")
    feed, every = args.feed, args.feed_every
    if args.demo:
        feed, _ = write_sotu_stream(cache_root() / "sotu.jsonl", cache_root() / "npm")
        every = every or DEMO_EVERY
    # Parsed once, here: the flags are the strategy's options, as replay's are (a spec's own
    # options win, and the name says what runs).
    strategy = parse_strategy(args.strategy, {} if args.lr is None else {"lr": repr(args.lr)})
    strategy = dataclasses.replace(
        strategy, learner=strategy.learner.replace(boundary=args.boundary)
    )
    settings = ServerSettings(
        model=args.model,
        data_dir=args.data_dir,
        lock_wait_s=args.lock_wait,
        strategy=strategy,
        device=args.device,
        follow=args.follow,
        source=args.source,
        served_name=args.served_name,
        publish_every_steps=args.publish_every_steps,
        publish_every_s=args.publish_every_s,
        keep_last=args.keep_last,
        pinned_versions=args.pinned_versions,
        rebase_queue=args.rebase_queue,
        guard_max_rise=args.guard_max_rise,
        guard_max_total_rise=args.guard_max_total_rise,
        canary=args.canary,
        feed=feed,
        feed_every=every or 1,
        feed_backlog=args.feed_backlog,
        api_keys=load_api_keys(
            args.api_key_read,
            args.api_key_write,
            args.api_keys_file,
            os.environ.get(API_KEYS_ENV_VAR),
        ),
        max_request_bytes=args.max_request_bytes,
        max_documents_per_request=args.max_documents_per_request,
        max_document_chars=args.max_document_chars,
        max_new_tokens=args.max_new_tokens,
        max_score_tokens=args.max_score_tokens,
        body_timeout_s=args.body_timeout_s,
        max_inflight=args.max_inflight,
        max_batch=args.max_batch,
        yield_quiet_s=args.yield_quiet_s,
        yield_max_s=args.yield_max_s,
        learner_share=args.learner_share,
        malloc_arenas=args.malloc_arenas,
        malloc_mmap_threshold=args.malloc_mmap_threshold,
        malloc_trim_s=args.malloc_trim_s,
        kernel_cache=args.kernel_cache,
        score_token_budget=args.score_token_budget,
        drift_webhook=args.drift_webhook,
    )
    serve(settings, host=args.host, port=args.port, quiet=args.quiet)
