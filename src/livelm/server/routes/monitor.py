"""`/v1/monitor`: what the learner sees as it learns (the dashboard's data).

Surprising documents, emerging terms, drift events, a timeline of steps, versions and events,
and the learner's rates; all from bounded buffers the learner fills (see
`livelm.server.monitoring`). Drift events come only from a strategy with a detector, such as
`--strategy online+detector=adwin`.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import APIRouter, Query

from livelm.loop import LearningLoop
from livelm.server.deps import READ, RuntimeDep
from livelm.server.monitoring import unix_time
from livelm.server.schemas.monitor import DriftList, Stats, SurpriseList, TermList, Timeline

router = APIRouter(prefix="/v1/monitor", tags=["monitor"], dependencies=READ)

Limit = Annotated[int, Query(ge=1, le=100, description="how many to list (1 to 100)")]
# A step that ended this recently counts as learning, even with the queue empty.
LEARNING_RECENTLY_S = 5.0


@router.get("/surprises")
def surprises(runtime: RuntimeDep, limit: Limit = 20) -> SurpriseList:
    """The most surprising of the recent documents (loss as a z-score against the stream's
    running loss, taken before the document was learned), most surprising first. Scores start
    once the running statistics have seen 20 documents."""
    return SurpriseList(data=runtime.monitor.surprises(limit))


@router.get("/terms")
def terms(runtime: RuntimeDep, limit: Limit = 20) -> TermList:
    """Words whose share of the recent documents rose most against the earlier stream, with
    the ids of up to 5 recent documents holding each; none until documents have left the
    recent window."""
    return TermList(data=runtime.monitor.terms(limit))


@router.get("/drift")
def drift(runtime: RuntimeDep, limit: Limit = 20) -> DriftList:
    """Drift events the learner's detector reported, newest first (a strategy without a
    detector, such as the default `online`, reports none)."""
    return DriftList(data=runtime.monitor.drifts(limit))


@router.get("/timeline")
def timeline(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=2000, description="points per list (1 to 2000)")] = 500,
) -> Timeline:
    """The newest `limit` learning steps, versions and events (publish, refused, rollback,
    drift), each oldest first: the dashboard's chart."""
    points, versions, events = runtime.monitor.timeline(limit)
    return Timeline(points=points, versions=versions, events=events)


@router.get("/stats")
def stats(runtime: RuntimeDep) -> Stats:
    """The live version and its age, the queue, and the learner's rates over the last minute."""
    monitor = runtime.monitor
    live = runtime.live.manifest
    docs_per_s, tokens_per_s = monitor.rates()
    depth = runtime.backlog()
    ready, detail = runtime.ready
    since = monitor.since_step()
    learner = runtime.learner
    learning = (
        isinstance(learner, LearningLoop)
        and ready
        and (depth > 0 or (since is not None and since < LEARNING_RECENTLY_S))
    )
    age = time.time() - unix_time(live.created)
    return Stats(
        live_version=live.version,
        live_age_s=round(max(0.0, age), 3) if math.isfinite(age) else 0.0,
        queue_depth=depth,
        docs_per_s=round(docs_per_s, 3),
        tokens_per_s=round(tokens_per_s, 3),
        learned_docs=monitor.docs,
        published_docs=learner.learned_docs if isinstance(learner, LearningLoop) else 0,
        learning=learning,
        drift_events=monitor.drift_count,
        trouble=None if ready else detail,
    )
