"""The score-and-learn step, its configuration, and the prequential loop over a stream."""

from typing import TYPE_CHECKING

from livelm.lazy import lazy_names
from livelm.learner.config import STRATEGIES, LearnerConfig, get_strategy

if TYPE_CHECKING:
    from livelm.learner.core import DocScore, Learner, StepReport
    from livelm.learner.encoding import EncodedDocument, Encoder
    from livelm.learner.prequential import Stepper, Tally, batches, prequential

# These import torch or transformers: the configs, and so a command's `--help`, need neither.
__getattr__ = lazy_names(
    __name__,
    {
        "livelm.learner.core": ("DocScore", "Learner", "StepReport"),
        "livelm.learner.encoding": ("EncodedDocument", "Encoder"),
        "livelm.learner.prequential": ("Stepper", "Tally", "batches", "prequential"),
    },
)

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
