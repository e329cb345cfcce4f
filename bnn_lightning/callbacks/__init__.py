"""What changes over a run: stage handoff, activation curriculum, weight clipping, diagnostics,
the non-finite loss guard, and where the wall time goes."""

from bnn_lightning.callbacks.curriculum import ActivationCurriculum
from bnn_lightning.callbacks.diagnostics import BNNDiagnostics
from bnn_lightning.callbacks.guard import NonFiniteGuard, NonFiniteLossError
from bnn_lightning.callbacks.handoff import StageHandoff
from bnn_lightning.callbacks.timing import PhaseTimes
from bnn_lightning.callbacks.weight_clip import WeightClip

__all__ = [
    "ActivationCurriculum",
    "BNNDiagnostics",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PhaseTimes",
    "StageHandoff",
    "WeightClip",
]
