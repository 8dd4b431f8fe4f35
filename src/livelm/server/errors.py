"""Domain errors, and the one place they become HTTP responses.

Every error answers in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, so
the `openai` client raises its usual exceptions with our message in them.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from livelm.logsafe import printable
from livelm.source.queue import ConflictError
from livelm.source.storage import StorageUnavailable
from livelm.store import UnknownVersionError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client caused or can act on; `status` is its HTTP status."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFoundError(ApiError):
    status = 404
    kind = "not_found_error"


class AuthenticationError(ApiError):
    status = 401
    kind = "authentication_error"


class PermissionDeniedError(ApiError):
    status = 403
    kind = "permission_error"


class TooLargeError(ApiError):
    """A request that asks for more work than one request may (each names its flag)."""

    status = 413
    kind = "request_too_large"


class ClientGone(Exception):
    """The client disconnected before its answer was ready: its work stopped, nothing is sent
    (the status, 499 as nginx logs it, shows in the request metrics only)."""


# What a 503 for a full or read-only disk asks a client to wait before it sends again.
STORAGE_RETRY_AFTER_S = 5


class NotReadyError(ApiError):
    status = 503
    kind = "server_error"


_KIND_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
}


def error_body(
    status: int, message: str, *, kind: str | None = None, param: str | None = None
) -> dict[str, dict[str, Any]]:
    default = "invalid_request_error" if status < 500 else "server_error"
    kind = kind or _KIND_BY_STATUS.get(status, default)
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _respond(
    status: int,
    message: str,
    *,
    kind: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, kind=kind, param=param), status_code=status, headers=headers
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def describe_validation(errors: list[Any]) -> tuple[str, str | None]:
    """One readable line for pydantic's errors, and the first offending field."""
    lines = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            reason = e.get("ctx", {}).get("error", "invalid JSON")
            lines.append(f"the body is not valid JSON: {reason} at character {e['loc'][-1]}")
            continue
        message = str(e.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        lines.append(f"{_location(tuple(e.get('loc', ())))}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = errors[0] if errors else {}
    param = None if first.get("type") == "json_invalid" else _location(tuple(first.get("loc", ())))
    return "; ".join(lines) + more, param


def install_error_handlers(app: FastAPI) -> None:
    """Map every domain and framework error to a 4xx/5xx in the OpenAI error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _respond(exc.status, exc.message, kind=exc.kind, param=exc.param, headers=headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(StorageUnavailable)
    async def _storage(request: Request, exc: StorageUnavailable) -> JSONResponse:
        # Nothing was stored, and the same request succeeds once the disk has room again.
        log.warning("%s", exc)
        return _respond(503, str(exc), headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)})

    @app.exception_handler(UnknownVersionError)
    async def _unknown_version(request: Request, exc: UnknownVersionError) -> JSONResponse:
        return _respond(404, str(exc), param="version")

    @app.exception_handler(ConflictError)
    async def _conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return _respond(409, str(exc), param="id")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, param = describe_validation(errors)
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        return _respond(400 if malformed else 422, message, param=param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            message = f"the body is not valid UTF-8 (byte {cause.start}); send UTF-8 JSON"
        elif exc.status_code == 400 and cause is not None:  # FastAPI's "error parsing the body"
            message = f"the body cannot be read as JSON: {cause}"
        elif exc.status_code == 413:
            limit = request.app.state.settings.max_request_bytes
            message = f"the request body is too large; see --max-request-bytes ({limit})"
        elif exc.status_code == 408:
            limit = request.app.state.settings.body_timeout_s
            message = f"the request body did not arrive within {limit:g} s; see --body-timeout-s"
        elif message == HTTPStatus(exc.status_code).phrase and exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        return _respond(exc.status_code, message, headers=exc.headers)


def unhandled_error(method: str, path: str, exc: Exception) -> dict[str, dict[str, Any]]:
    """Log a failure no handler knew, on one line plus its frames, and the 500 body to send.

    The message and path may carry request data: they are escaped (`printable`), and the
    traceback is the frames only, so no client text can start a line of the log. The body
    names the error's type, not its message, which may hold another client's data.
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error(
        "unhandled %s in %s %s: %s\n%s",
        type(exc).__name__,
        method,
        printable(path),
        printable(exc),
        frames.rstrip(),
    )
    message = f"the server failed on this request ({type(exc).__name__}); see the server's log"
    return error_body(500, message)
