"""`/healthz` (the process answers), `/readyz` (it serves and learns) and `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from livelm.server.deps import READ, RuntimeDep
from livelm.server.schemas.snapshots import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(runtime: RuntimeDep) -> Health | JSONResponse:
    """200 while a version is live, the learner runs and the queue can store documents (its
    disk has room and takes writes); 503 (with why) otherwise."""
    ready, detail = runtime.ready
    health = Health(
        status="ready" if ready else "unavailable",
        live_version=runtime.live.number,
        detail=detail,
    )
    if not ready:
        return JSONResponse(health.model_dump(), status_code=503)
    return health


@router.get("/metrics", dependencies=READ, response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics."""
    runtime.metrics.set_documents(runtime.document_counts())
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
