"""The score-and-learn step, its configuration, and the prequential loop over a stream."""

from livelm.learner.config import STRATEGIES, LearnerConfig, get_strategy
from livelm.learner.core import DocScore, Learner, StepReport
from livelm.learner.encoding import EncodedDocument, Encoder
from livelm.learner.prequential import Stepper, Tally, batches, prequential

__all__ = [
    "STRATEGIES",
    "DocScore",
    "EncodedDocument",
    "Encoder",
    "Learner",
    "LearnerConfig",
    "StepReport",
    "Stepper",
    "Tally",
    "batches",
    "get_strategy",
    "prequential",
]
