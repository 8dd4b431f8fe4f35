"""API keys and their scopes: `read` (generate, score, list) and `write` (also ingest, roll back).

Keys come from flags, a keys file or `LIVELM_API_KEYS`, and travel as `Authorization: Bearer
<key>` (what the `openai` client sends). A write key may also read. Without any key the server
is open, and `livelm serve` then binds to localhost only.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from fastapi import Request

from livelm.server.errors import AuthenticationError, PermissionDeniedError
from livelm.server.settings import API_KEYS_ENV_VAR, ApiKey, Scope, ServerSettings


def _parse_entry(entry: str, where: str) -> ApiKey:
    scope, sep, key = entry.strip().partition(":")
    if not sep:
        scope, _, key = entry.strip().partition(" ")
    scope, key = scope.strip(), key.strip()
    if scope not in ("read", "write"):
        raise ValueError(f"{where}: expected 'read:KEY' or 'write:KEY', got scope {scope!r}")
    try:
        return ApiKey(key, scope)  # type: ignore[arg-type]  # checked just above
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def load_api_keys(
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    keys_file: Path | None = None,
    env: str | None = None,
) -> tuple[ApiKey, ...]:
    """Gather keys from every source.

    A keys file holds one `read:KEY` or `write:KEY` (or `read KEY`) a line; `#` starts a
    comment. The environment variable holds the same entries separated by commas.
    """
    keys = [ApiKey(k, "read") for k in read] + [ApiKey(k, "write") for k in write]
    if keys_file is not None:
        if not keys_file.is_file():
            raise FileNotFoundError(f"--api-keys-file {keys_file}: no such file")
        for number, line in enumerate(keys_file.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(_parse_entry(line, f"{keys_file}:{number}"))
    if env:
        keys += [_parse_entry(e, API_KEYS_ENV_VAR) for e in env.split(",") if e.strip()]
    return tuple(keys)


def _scope_of(token: str, keys: Iterable[ApiKey]) -> Scope | None:
    found: Scope | None = None
    for key in keys:  # compare against every key, in constant time each
        if hmac.compare_digest(token.encode(), key.key.encode()) and found != "write":
            found = key.scope
    return found


def _authorize(request: Request, needed: Scope) -> None:
    settings: ServerSettings = request.app.state.settings
    if not settings.api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("missing API key: send the header 'Authorization: Bearer <key>'")
    scope = _scope_of(token.strip(), settings.api_keys)
    if scope is None:
        raise AuthenticationError("the API key is not valid")
    if needed == "write" and scope != "write":
        raise PermissionDeniedError(
            "this key may read only; ingesting documents, rolling back and pinning need a write key"
        )


def require_read(request: Request) -> None:
    _authorize(request, "read")


def require_write(request: Request) -> None:
    _authorize(request, "write")
