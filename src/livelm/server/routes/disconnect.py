"""Model work that stops when its client goes away.

A route's work runs in a worker thread while the request's task waits for the client to
disconnect (the ASGI `http.disconnect` message, which arrives once the body is read and the
connection closes). On a disconnect the work is told to stop, and stops at its next micro-batch
or token; the request then ends without an answer, since nobody is left to read one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio
from fastapi import Request

from livelm.learner.packing import Cancelled
from livelm.model.device import in_fresh_thread
from livelm.server.errors import ClientGone
from livelm.server.metrics import Metrics

T = TypeVar("T")


async def until_disconnected(request: Request, stop: Callable[[], None]) -> None:
    """Wait for the client to disconnect, then call `stop()`.

    Call it only once the body is read: until then `receive()` returns the body's chunks.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stop()


async def run_cancellable(
    request: Request,
    work: Callable[[threading.Event], T],
    metrics: Metrics,
    route: str,
    *,
    stop: Callable[[], None] | None = None,
) -> T:
    """`work(gone)` in a worker thread; `gone` is set, and `stop()` called, when the client
    disconnects first. `work` checks `gone` between its steps (or `stop()` ends it) and raises
    `Cancelled`; that becomes `ClientGone`, counted in `livelm_requests_cancelled`."""
    gone = threading.Event()

    def left() -> None:
        gone.set()
        if stop is not None:
            stop()

    stopped = False
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(until_disconnected, request, left)
        try:
            # On a thread that ends with the work: see `in_fresh_thread`.
            result = await anyio.to_thread.run_sync(in_fresh_thread, partial(work, gone))
        except Cancelled:
            stopped = True
        finally:
            tasks.cancel_scope.cancel()
    if stopped:
        metrics.cancelled.labels(route=route).inc()
        raise ClientGone
    return result
