"""Dependencies shared by the routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from livelm.server.auth import require_read, require_write
from livelm.server.errors import ApiError
from livelm.server.runtime import Runtime
from livelm.server.settings import ServerSettings


class LimitError(ApiError):
    """A request past one of the server's limits (each names the flag that sets it)."""

    status = 422


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


def check_documents(texts: list[str], settings: ServerSettings) -> None:
    """The per-request limits on documents: how many, and how long each."""
    if len(texts) > settings.max_documents_per_request:
        raise LimitError(
            f"{len(texts)} documents in one request; the limit is "
            f"{settings.max_documents_per_request} (--max-documents-per-request)",
            param="documents",
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_document_chars:
            raise LimitError(
                f"documents.{i}.text has {len(text)} characters; the limit is "
                f"{settings.max_document_chars} (--max-document-chars)",
                param=f"documents.{i}.text",
            )
