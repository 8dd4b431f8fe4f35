"""The one learning loop shared by the server and the `learn` workers, its feeds and its guard."""

from livelm.loop.core import LearningLoop
from livelm.loop.feeds import Feed, Learned, QueueFeed, StreamFeed, Taken
from livelm.loop.guard import CanaryGuard, Verdict, canary_documents
from livelm.loop.state import LoopSettings, Pending, StepLearner

__all__ = [
    "CanaryGuard",
    "Feed",
    "Learned",
    "LearningLoop",
    "LoopSettings",
    "Pending",
    "QueueFeed",
    "StepLearner",
    "StreamFeed",
    "Taken",
    "Verdict",
    "canary_documents",
]
