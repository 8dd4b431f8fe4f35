"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan owns the runtime
(model, queue, store, learner thread), opened before the first request and closed after the
last. OpenAPI docs are at `/docs`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from livelm import __version__
from livelm.model.device import in_fresh_thread
from livelm.server.errors import error_body, install_error_handlers, unhandled_error
from livelm.server.metrics import Metrics
from livelm.server.routes import (
    dashboard,
    documents,
    health,
    monitor,
    openai,
    recommend,
    snapshots,
)
from livelm.server.runtime import Runtime
from livelm.server.settings import ServerSettings


class _RequestMetrics:
    """Observes every HTTP request's latency, by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(
                method=scope["method"], route=route, status=str(status)
            ).observe(time.perf_counter() - started)


class _BodyLimit:
    """Refuses request bodies past the size limit (413) or slower than the time limit (408),
    in the JSON error shape.

    A declared Content-Length past the size is refused before anything is read; a body without
    one (chunked) is counted as it arrives, and the read that crosses the limit raises the 413
    before the body reaches any route. The whole body must arrive within `timeout_s` of the
    headers: a client that stalls mid-upload would otherwise hold its request open forever.
    Reads after the body (a route waiting for the client to disconnect) have no deadline.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            message = f"the request body is too large; see --max-request-bytes ({self.limit})"
            await JSONResponse(error_body(413, message), status_code=413)(scope, receive, send)
            return
        received = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def counted() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                    message = await receive()
            except TimeoutError:
                # The rest of the body may still come: the connection cannot carry another
                # request, so it closes with the answer (not after the keep-alive timeout).
                raise HTTPException(408, headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, counted, send)


class _Unhandled:
    """Answers an error no handler knew with a 500 in the JSON error shape, logged on one line
    (its frames below it) with the request's text escaped.

    Starlette's own last resort answers in plain text and logs the exception's message as it
    is, which may carry request data; this sits inside it, so it never runs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            body = unhandled_error(scope["method"], scope["path"], e)
            if not started:  # else the status line is sent: closing the connection says it
                await JSONResponse(body, status_code=500)(scope, receive, send)


def create_app(settings: ServerSettings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # On a thread that ends (`in_fresh_thread`): loading the model would leave its OpenMP
        # pool alive with a worker thread's.
        runtime = await anyio.to_thread.run_sync(
            in_fresh_thread, lambda: Runtime(settings, metrics)
        )
        runtime.start()
        app.state.runtime = runtime
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(in_fresh_thread, runtime.close)

    # FastAPIOffline: /docs and /redoc load their scripts and styles from this server
    # (/static-offline-docs), not from a CDN, so they work on a machine without internet.
    app = FastAPIOffline(
        title="livelm",
        version=__version__,
        summary="A language model that learns from a stream of documents while it serves.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        _BodyLimit, limit=settings.max_request_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(_Unhandled)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    for module in (openai, documents, recommend, snapshots, monitor, health, dashboard):
        app.include_router(module.router)
    return app
