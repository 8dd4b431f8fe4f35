"""`/v1/recommend` (rank candidates for a reader's history) and `/v1/embeddings` (OpenAI's).

Both take the live version once (or the kept version `model` names: `livelm@N`, resolved as
every route resolves it) and run on it to their end; the version is in `X-Livelm-Version`.

Documents by id: the server knows a document by the id it was stored under (`POST
/v1/documents`): the queue keeps every accepted document's text, in every state, for as long
as the data directory lives, so a history or a candidate may name any of them (an id it does
not hold is a 404 naming the item). The monitor's buffer of recent documents is not used: it
holds only the newest few hundred. Without `candidates`, the newest `recommend_candidates`
learned documents not in the history are ranked: what the live model has just read. A
`--follow` replica keeps no queue, so it takes texts only.

Ranking is `livelm.recommend` (the methods and why `fused`, PMI fused with TF-IDF, is the
default are in `livelm.recommend.config`); TF-IDF's document frequencies come from the newest
`recommend_idf_docs` learned documents besides the request's own texts. The model's work runs
in packed micro-batches holding a serving slot of the gate, as `/v1/score` does, and stops when
the client disconnects.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence

import anyio
import numpy as np
from fastapi import APIRouter, Request, Response

from livelm.document import Document
from livelm.recommend import (
    Ranked,
    Ranker,
    RecommendError,
    RecommendLimits,
    Scorer,
    parse_method,
)
from livelm.server.deps import READ, LimitError, RuntimeDep, SettingsDep
from livelm.server.errors import ApiError, NotFoundError, TooLargeError
from livelm.server.routes.disconnect import run_cancellable
from livelm.server.runtime import Runtime
from livelm.server.schemas.recommend import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    EvidenceOut,
    ItemIn,
    RankedOut,
    RecommendRequest,
    RecommendResponse,
    RecommendUsage,
)
from livelm.server.settings import ServerSettings
from livelm.server.versions import ServingVersion

router = APIRouter(prefix="/v1", tags=["recommend"], dependencies=READ)

# Texts of the TF-IDF background are cut to this many characters: their words, not their bulk.
IDF_CHARS = 2000


def _scorer(runtime: Runtime, version: ServingVersion) -> Scorer:
    encoder = runtime.codec.encoder
    return Scorer(
        version.model,
        runtime.codec.encode,
        encoder.boundary,
        runtime.pad_id,
        max_tokens=encoder.max_tokens,
        token_budget=runtime.token_budget,
        row_tokens=runtime.row_tokens,
        on_tokens=runtime.metrics.served_tokens.labels(kind="scored").inc,
    )


def _limits(runtime: Runtime, settings: ServerSettings) -> RecommendLimits:
    return RecommendLimits.fitted(
        runtime.window,
        runtime.codec.encoder.max_tokens,
        max_history=settings.recommend_max_history,
        max_candidates=settings.recommend_max_candidates,
    )


def _count(items: Sequence[ItemIn], where: str, limit: int, setting: str) -> None:
    if len(items) > limit:
        raise LimitError(
            f"{len(items)} {where} items; the limit is {limit} (ServerSettings.{setting})",
            param=where,
        )


def _documents(
    items: Sequence[ItemIn], where: str, runtime: Runtime, settings: ServerSettings
) -> list[Document]:
    """The items as documents: texts as given, ids looked up in the queue."""
    named = [(i, str(item.id)) for i, item in enumerate(items) if item.text is None]
    known: dict[str, Document] = {}
    if named:
        if runtime.queue is None:
            raise ApiError(
                "this replica follows a store and keeps no documents: send the texts",
                param=f"{where}.{named[0][0]}.id",
            )
        known = runtime.queue.documents(doc_id for _, doc_id in named)
    out = []
    for i, item in enumerate(items):
        if item.text is not None:
            if len(item.text) > settings.max_document_chars:
                raise LimitError(
                    f"{where}.{i}.text has {len(item.text)} characters; the limit is "
                    f"{settings.max_document_chars} (--max-document-chars)",
                    param=f"{where}.{i}.text",
                )
            out.append(Document(item.text, id="" if item.id is None else str(item.id)))
            continue
        doc = known.get(str(item.id))
        if doc is None:
            raise NotFoundError(
                f"{where}.{i}: no document with id {str(item.id)!r} (ids are those the server "
                "stored from POST /v1/documents)",
                param=f"{where}.{i}.id",
            )
        out.append(doc)
    return out


def _default_candidates(
    history: Sequence[Document], runtime: Runtime, settings: ServerSettings
) -> list[Document]:
    if runtime.queue is None:
        raise ApiError(
            "this replica follows a store and keeps no documents: send candidates as texts",
            param="candidates",
        )
    read = {d.id for d in history}
    newest = runtime.queue.newest(settings.recommend_candidates + len(read))
    found = [d for d in newest if d.id not in read][: settings.recommend_candidates]
    if not found:
        raise ApiError(
            "no learned documents to rank yet: send candidates, or documents to learn first",
            param="candidates",
        )
    return found


def _out(r: Ranked, candidates: Sequence[Document], given: bool) -> RankedOut:
    return RankedOut(
        rank=r.rank,
        id=r.id,
        index=r.index if given else None,
        text=candidates[r.index].text,
        score=r.score,
        scores=r.parts,
        why=[
            EvidenceOut(history=e.history, id=e.id, method=e.method, value=e.value) for e in r.why
        ],
    )


@router.post("/recommend")
async def recommend(
    body: RecommendRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> RecommendResponse:
    """The candidates ranked for a reader's history, best first, each with its score and why
    (the history items that raised it most). History and candidates are texts or ids of stored
    documents; without candidates, the newest learned documents are ranked."""
    _count(body.history, "history", settings.recommend_max_history, "recommend_max_history")
    if body.candidates is not None:
        _count(
            body.candidates,
            "candidates",
            settings.recommend_max_candidates,
            "recommend_max_candidates",
        )
    method = parse_method(body.method)
    version = await runtime.models.resolve(body.model)

    scorer = _scorer(runtime, version)
    ranker = Ranker(scorer, _limits(runtime, settings))

    def prepare() -> tuple[list[Document], list[Document], list[str]]:
        """Look the items up and tokenize them: every refusal comes before any model work."""
        history = _documents(body.history, "history", runtime, settings)
        if body.candidates is None:
            candidates = _default_candidates(history, runtime, settings)
        else:
            candidates = _documents(body.candidates, "candidates", runtime, settings)
        try:
            ranker.check(history, candidates, method)
        except RecommendError as e:
            error = TooLargeError if e.too_large else LimitError
            raise error(str(e), param=e.field) from None
        corpus: list[str] = []
        if "tfidf" in method.parts and runtime.queue is not None:
            newest = runtime.queue.newest(settings.recommend_idf_docs)
            corpus = [d.text[:IDF_CHARS] for d in newest]
        return history, candidates, corpus

    history, candidates, corpus = await anyio.to_thread.run_sync(prepare)

    def work(gone: threading.Event) -> list[Ranked]:
        scorer.cancelled = gone.is_set
        with runtime.gate.serving():
            return ranker.recommend(
                history,
                candidates,
                method=method,
                top_k=body.top_k,
                explain=body.why,
                corpus=corpus,
                seed=body.seed,
            )

    ranked = await run_cancellable(request, work, runtime.metrics, "recommend")
    response.headers["X-Livelm-Version"] = str(version.number)
    given = body.candidates is not None
    return RecommendResponse(
        model=settings.served_name if body.model is None else body.model,
        version=version.number,
        method=method.name,
        data=[_out(r, candidates, given) for r in ranked],
        usage=RecommendUsage(history=len(history), candidates=len(candidates)),
    )


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> EmbeddingResponse:
    """OpenAI-compatible embeddings from the live version (or `livelm@N`): each input's last
    hidden states averaged over its tokens (encoded as the learner encodes a document: the
    boundary token, then the text in window-sized chunks), L2-normalized."""
    if len(body.input) > settings.max_documents_per_request:
        raise LimitError(
            f"{len(body.input)} inputs in one request; the limit is "
            f"{settings.max_documents_per_request} (--max-documents-per-request)",
            param="input",
        )
    for i, text in enumerate(body.input):
        if len(text) > settings.max_document_chars:
            raise LimitError(
                f"input.{i} has {len(text)} characters; the limit is "
                f"{settings.max_document_chars} (--max-document-chars)",
                param=f"input.{i}",
            )
    version = await runtime.models.resolve(body.model)
    scorer = _scorer(runtime, version)
    hidden = scorer.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise LimitError(
            f"dimensions {body.dimensions}: this model's embeddings have {hidden}; leave it out "
            "or send that",
            param="dimensions",
        )
    limit = settings.max_score_tokens

    def encode() -> list[list[int]]:
        encoded: list[list[int]] = []
        total = 0
        for i, text in enumerate(body.input):
            encoded.append(runtime.codec.encode(text))
            total += len(encoded[-1])
            if total > limit:
                raise TooLargeError(
                    f"inputs 0 to {i} already hold {total} tokens; the limit is {limit} per "
                    "request (--max-score-tokens): send fewer or shorter inputs",
                    param="input",
                )
            if not encoded[-1]:
                raise LimitError(f"input.{i} has no tokens", param=f"input.{i}")
        return encoded

    ids = await anyio.to_thread.run_sync(encode)

    def work(gone: threading.Event) -> np.ndarray:
        scorer.cancelled = gone.is_set
        with runtime.gate.serving():
            return scorer.embed(ids).numpy()

    vectors = await run_cancellable(request, work, runtime.metrics, "embeddings")
    response.headers["X-Livelm-Version"] = str(version.number)
    data = []
    for i, vector in enumerate(vectors):
        values = vector.astype("<f4")
        encoded: list[float] | str = (
            base64.b64encode(values.tobytes()).decode("ascii")
            if body.encoding_format == "base64"
            else [float(x) for x in values]
        )
        data.append(Embedding(index=i, embedding=encoded))
    tokens = sum(len(t) for t in ids)
    return EmbeddingResponse(
        data=data,
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
