"""Supervised fine-tuning: losses and batch mixing, multi-view evaluation, metrics, self-distillation.

Symmetric with :mod:`videomap.pretrain`; the job runner in :mod:`videomap.tasks.finetune` only
wires these to the engine.
"""

from .distill import DISTILL_LOSSES, FeatureDistiller, build_distiller, feature_distill_loss, student_of
from .evaluate import evaluate_views
from .losses import head_outputs, make_loss, soft_cross_entropy
from .metrics import AccuracyAccumulator, accuracy, average_view_probs, topk_correct

__all__ = [
    "DISTILL_LOSSES", "AccuracyAccumulator", "FeatureDistiller", "accuracy", "average_view_probs",
    "build_distiller", "evaluate_views", "feature_distill_loss", "head_outputs", "make_loss",
    "soft_cross_entropy", "student_of", "topk_correct",
]
