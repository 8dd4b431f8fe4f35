"""`/v1/documents` (ingest, status) and `/v1/score`."""

from __future__ import annotations

import math
import threading

import anyio
from fastapi import APIRouter, Request, Response

from livelm.document import Document
from livelm.learner import DocScore
from livelm.server.deps import READ, WRITE, RuntimeDep, SettingsDep, check_documents
from livelm.server.errors import NotFoundError, TooLargeError
from livelm.server.inference import TokenLimitError, encode_within
from livelm.server.routes.disconnect import run_cancellable
from livelm.server.schemas.documents import (
    DocumentReceipt,
    DocumentScore,
    DocumentStatusOut,
    IngestRequest,
    IngestResponse,
    ScoreRequest,
    ScoreResponse,
    finite,
)

router = APIRouter(prefix="/v1", tags=["documents"])


@router.post("/documents", status_code=202, dependencies=WRITE)
def post_documents(
    body: IngestRequest, runtime: RuntimeDep, settings: SettingsDep
) -> IngestResponse:
    """Store documents for learning; they are on disk when this answers.

    Re-sending a document (same id, same text) stores nothing and reports its state; the same
    id with another text is a 409, and nothing of the request is stored. A disk that cannot
    store (full, read-only) is a 503 with a Retry-After, and nothing is stored either.
    """
    check_documents([d.text for d in body.documents], settings)
    docs = [
        Document(
            text=d.text,
            id="" if d.id is None else str(d.id),
            time=d.time,
            meta=d.merged_meta(),
        )
        for d in body.documents
    ]
    accepted = runtime.ingest(docs)
    return IngestResponse(
        accepted=sum(not a.duplicate for a in accepted),
        duplicates=sum(a.duplicate for a in accepted),
        documents=[
            DocumentReceipt(id=a.id, seq=a.seq, state=a.state, duplicate=a.duplicate)
            for a in accepted
        ],
    )


@router.get("/documents/{doc_id:path}", dependencies=READ)
def get_document(doc_id: str, runtime: RuntimeDep) -> DocumentStatusOut:
    """A document's state: queued, learned (and in which version), or rejected (and why)."""
    status = runtime.document_status(doc_id)
    if status is None:
        raise NotFoundError(f"no document with id {doc_id!r}", param="id")
    return DocumentStatusOut(
        id=status.id,
        seq=status.seq,
        state=status.state,
        version=status.version,
        loss=finite(status.loss),
        reason=status.reason,
        time=status.time,
        accepted_at=status.accepted_at,
        done_at=status.done_at,
    )


@router.post("/score", dependencies=READ)
async def score(
    body: ScoreRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> ScoreResponse:
    """Each document's loss, perplexity and surprise under the live version (or the kept
    version `model` names: `livelm@N`); nothing is stored or learned.

    At most `--max-score-tokens` tokens per request (a 413 past it, before any model work);
    the work stops when the client disconnects.
    """
    check_documents([d.text for d in body.documents], settings)
    version = await runtime.models.resolve(body.model)
    docs = [Document(d.text, id="" if d.id is None else str(d.id)) for d in body.documents]
    limit = settings.max_score_tokens
    try:
        encoded = await anyio.to_thread.run_sync(encode_within, runtime.codec, docs, limit)
    except TokenLimitError as e:
        raise TooLargeError(
            f"documents 0 to {e.index} already hold {e.tokens} tokens to score; the limit is "
            f"{limit} per request (--max-score-tokens): send fewer or shorter documents",
            param="documents",
        ) from None

    def work(gone: threading.Event) -> list[DocScore]:
        return runtime.score(encoded, version, cancelled=gone.is_set)

    scores = await run_cancellable(request, work, runtime.metrics, "score")
    response.headers["X-Livelm-Version"] = str(version.number)
    out = []
    for s in scores:
        loss = finite(s.loss)
        out.append(
            DocumentScore(
                id=s.id,
                tokens=s.tokens,
                loss=loss,
                perplexity=finite(math.exp(min(loss, 700.0))) if loss is not None else None,
                surprise=None if loss is None else runtime.learner.monitor.surprise(loss),
            )
        )
    model = settings.served_name if body.model is None else body.model
    return ScoreResponse(model=model, version=version.number, documents=out)
