"""Domain errors, and the one place they become HTTP responses.

Every error answers in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, so
the `openai` client raises its usual exceptions with our message in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from livelm.source.queue import ConflictError
from livelm.store import UnknownVersionError


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


class NotReadyError(ApiError):
    status = 503
    kind = "server_error"


_KIND_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
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
        elif exc.status_code == 413:
            limit = request.app.state.settings.max_request_bytes
            message = f"the request body is too large; see --max-request-bytes ({limit})"
        elif message == HTTPStatus(exc.status_code).phrase and exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        return _respond(exc.status_code, message, headers=exc.headers)
