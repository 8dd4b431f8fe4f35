"""OpenAI-compatible `/v1/completions`, `/v1/chat/completions` and `/v1/models`.

A request takes the live version once (`model` is `livelm`), or the kept version it names
(`livelm@12`, see `pinned.py`), and generates every choice with it, streamed or not; the version
is in the `X-Livelm-Version` header and in `system_fingerprint` (`livelm-v12`). `/v1/models`
lists `livelm` and a `livelm@N` for each version the store keeps.
Streams are server-sent events ending with `data: [DONE]`, as OpenAI's are.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from livelm.learner.packing import Cancelled
from livelm.server.deps import READ, LimitError, RuntimeDep, SettingsDep
from livelm.server.errors import error_body
from livelm.server.inference import FinishReason, Generation, Piece, Sampling
from livelm.server.routes.disconnect import run_cancellable
from livelm.server.runtime import Runtime
from livelm.server.schemas.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
)
from livelm.server.settings import ServerSettings
from livelm.server.versions import ServingVersion

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=READ)


def _sampling(
    body: CompletionRequest | ChatRequest, max_tokens: int, settings: ServerSettings
) -> Sampling:
    if max_tokens > settings.max_new_tokens:
        raise LimitError(
            f"max_tokens {max_tokens} is past the limit of {settings.max_new_tokens} "
            "(--max-new-tokens)",
            param="max_tokens",
        )
    return Sampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(body.stop),
    )


def _fingerprint(version: ServingVersion) -> str:
    return f"livelm-v{version.number}"


def _run(generation: Generation) -> tuple[str, FinishReason]:
    text: list[str] = []
    reason: FinishReason = "length"
    for piece in generation:
        text.append(piece.text)
        reason = piece.finish_reason or reason
    return "".join(text), reason


async def _next_piece(pieces: Iterator[Piece], generation: Generation) -> Piece | None:
    """The next piece, read in a worker thread.

    A thread cannot be interrupted, so a request cancelled meanwhile (its client left: the
    stream's response is cancelled) would wait for the next piece, which may be many tokens
    away (text held back for a stop string, a character split across tokens), or, queued for
    a model slot, a whole other request away. A sibling task therefore tells the generation to
    stop as soon as the cancellation arrives: it ends at its next token, and the thread returns.
    """
    read = False

    async def stop_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if not read:
                generation.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stop_when_cancelled)
        piece = await anyio.to_thread.run_sync(next, pieces, None)
        read = True
        tasks.cancel_scope.cancel()
    return piece


async def _pieces(generation: Generation) -> AsyncIterator[Piece]:
    """The generation's pieces; it stops when the request is cancelled (the client left)."""
    pieces: Iterator[Piece] = iter(generation)
    try:
        while (piece := await _next_piece(pieces, generation)) is not None:
            yield piece
    finally:
        generation.cancel()


def _event(chunk: BaseModel | Mapping[str, object]) -> str:
    data = chunk.model_dump_json() if isinstance(chunk, BaseModel) else json.dumps(chunk)
    return f"data: {data}\n\n"


def _stream(events: AsyncIterator[str], version: ServingVersion) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except Exception as e:  # the status line is sent: report the failure in the stream
            yield _event(error_body(500, f"generation failed: {e}"))
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        guarded(),
        media_type="text/event-stream",
        headers={"X-Livelm-Version": str(version.number), "Cache-Control": "no-cache"},
    )


async def _generate_all(
    request: Request,
    runtime: Runtime,
    prompts: list[list[int]],
    sampling: Sampling,
    version: ServingVersion,
    route: str,
) -> list[tuple[str, FinishReason, Generation]]:
    """Each prompt's generation, all started at once (the engine batches them); all stop when
    the client disconnects."""
    running: list[Generation] = []

    def stop() -> None:
        for generation in list(running):
            generation.cancel()

    def work(gone: threading.Event) -> list[tuple[str, FinishReason, Generation]]:
        done = []
        try:
            for ids in prompts:
                running.append(runtime.generate(ids, sampling, version))
            if gone.is_set():  # the client left before `stop` could see them
                stop()
            for generation in running:
                text, reason = _run(generation)
                if gone.is_set():
                    raise Cancelled
                done.append((text, reason, generation))
        finally:
            stop()  # a failure ends the others too (a finished one ignores it)
        return done

    return await run_cancellable(request, work, runtime.metrics, route, stop=stop)


@router.post("/completions", response_model=Completion)
async def completions(
    body: CompletionRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> Completion | StreamingResponse:
    sampling = _sampling(body, body.max_tokens, settings)
    version = await runtime.models.resolve(body.model)

    def encode() -> list[list[int]]:
        return [runtime.prompt_ids(p, sampling.max_tokens) for p in body.prompt]

    prompts = await anyio.to_thread.run_sync(encode)
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(index: int, text: str, reason: FinishReason | None) -> Completion:
        choice = CompletionChoice(index=index, text=text, finish_reason=reason)
        return Completion(
            id=ident,
            created=created,
            model=body.model,
            choices=[choice],
            system_fingerprint=_fingerprint(version),
        )

    if body.stream:

        async def events() -> AsyncIterator[str]:
            # One after another: a stream sees its client gone only when it writes, so the
            # prompts not yet streamed cost nothing if it has left.
            for index, ids in enumerate(prompts):
                async for piece in _pieces(runtime.generate(ids, sampling, version)):
                    yield _event(chunk(index, piece.text, piece.finish_reason))

        return _stream(events(), version)

    done = await _generate_all(request, runtime, prompts, sampling, version, "completions")
    choices, usage = [], Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    for index, (text, reason, generation) in enumerate(done):
        choices.append(CompletionChoice(index=index, text=text, finish_reason=reason))
        usage = _add(usage, generation)
    response.headers["X-Livelm-Version"] = str(version.number)
    return Completion(
        id=ident,
        created=created,
        model=body.model,
        choices=choices,
        usage=usage,
        system_fingerprint=_fingerprint(version),
    )


def _add(usage: Usage, generation: Generation) -> Usage:
    prompt = usage.prompt_tokens + generation.prompt_tokens
    completion = usage.completion_tokens + generation.completion_tokens
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    body: ChatRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> ChatCompletion | StreamingResponse:
    sampling = _sampling(body, body.new_tokens(settings.max_new_tokens), settings)
    version = await runtime.models.resolve(body.model)
    codec = runtime.codec

    def encode() -> list[int]:
        prompt = codec.chat_prompt([{"role": m.role, "content": m.text} for m in body.messages])
        return runtime.prompt_ids(prompt, sampling.max_tokens, raw=codec.has_chat_template)

    ids = await anyio.to_thread.run_sync(encode)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:

        def chunk(delta: ChatDelta, reason: FinishReason | None = None) -> ChatCompletionChunk:
            choice = ChatChunkChoice(index=0, delta=delta, finish_reason=reason)
            return ChatCompletionChunk(
                id=ident,
                created=created,
                model=body.model,
                choices=[choice],
                system_fingerprint=_fingerprint(version),
            )

        async def events() -> AsyncIterator[str]:
            yield _event(chunk(ChatDelta(role="assistant", content="")))
            async for piece in _pieces(runtime.generate(ids, sampling, version)):
                if piece.text:
                    yield _event(chunk(ChatDelta(content=piece.text)))
                if piece.finish_reason is not None:
                    yield _event(chunk(ChatDelta(), piece.finish_reason))

        return _stream(events(), version)

    [(text, reason, generation)] = await _generate_all(
        request, runtime, [ids], sampling, version, "chat"
    )
    response.headers["X-Livelm-Version"] = str(version.number)
    return ChatCompletion(
        id=ident,
        created=created,
        model=body.model,
        choices=[ChatChoice(index=0, message=ChatMessageOut(content=text), finish_reason=reason)],
        usage=_add(Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0), generation),
        system_fingerprint=_fingerprint(version),
    )


def _timestamp(created: str) -> int:
    return int(datetime.fromisoformat(created).timestamp())


@router.get("/models")
def models(runtime: RuntimeDep, settings: SettingsDep) -> ModelList:
    """`livelm`, the live version, then `livelm@N` for each version kept, newest first."""
    live = runtime.live
    name = settings.served_name
    cards = [ModelCard(id=name, created=_timestamp(live.manifest.created), version=live.number)]
    for number, created in runtime.models.kept():
        cards.append(ModelCard(id=f"{name}@{number}", created=_timestamp(created), version=number))
    return ModelList(data=cards)
