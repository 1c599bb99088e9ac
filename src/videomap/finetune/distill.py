"""Self-distillation (VideoMamba §3.3): a frozen, smaller, trained model guides a larger student
by aligning their final features, alongside the usual classification loss.

The aligned feature is the final-norm cls token (the input of the classifier). When the widths
differ, a learned Linear maps the student's feature to the teacher's width.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import WrapsBackbone

DistillLoss = Literal["l2", "cos"]
DISTILL_LOSSES = get_args(DistillLoss)


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """``l2``: mean squared error; ``cos``: mean(2 - 2 cos) of the L2-normalised features."""
    s, t = student.float(), teacher.float()
    if kind == "l2":
        return F.mse_loss(s, t)
    if kind == "cos":
        return (2 - 2 * F.cosine_similarity(s, t, dim=-1)).mean()
    raise ValueError(f"distill loss: expected one of {DISTILL_LOSSES}, got {kind!r}")


class FeatureDistiller(WrapsBackbone, nn.Module):
    """Wraps a student classifier; ``forward(video) -> (logits, feature loss)``.

    The teacher is held outside the module tree: it is frozen, never in train mode, not wrapped by
    DDP and not written to checkpoints.
    """

    backbone_attr = "student"

    def __init__(self, student: nn.Module, teacher: nn.Module, loss: DistillLoss = "l2") -> None:
        super().__init__()
        if loss not in DISTILL_LOSSES:
            raise ValueError(f"distill loss: expected one of {DISTILL_LOSSES}, got {loss!r}")
        self.student = student
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher.eval()]
        self.loss = loss
        s_dim, t_dim = student.embed_dim, teacher.embed_dim
        self.proj = nn.Linear(s_dim, t_dim) if s_dim != t_dim else nn.Identity()

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.student.forward_features(video)
        logits = self.student.forward_head(feats)
        teacher = self.teacher.eval()
        if next(teacher.parameters()).device != video.device:
            teacher.to(video.device)
        with torch.no_grad():
            target = teacher.forward_features(video)[:, 0]
        return logits, feature_distill_loss(self.proj(feats[:, 0]), target, self.loss)


def student_of(model: nn.Module) -> nn.Module:
    """The classifier inside a self-distillation wrapper (the model itself otherwise)."""
    return model.student if isinstance(model, FeatureDistiller) else model


def build_distiller(student: nn.Module, teacher_name: str | None, checkpoint: str | None, *,
                    num_frames: int, img_size: int, loss: DistillLoss = "l2",
                    teacher_overrides: dict | None = None) -> nn.Module:
    """Wrap ``student`` for self-distillation from a trained registry model; ``student`` itself when
    ``teacher_name`` is None."""
    if not teacher_name:
        return student
    if not checkpoint:
        raise ValueError("finetune.distill_checkpoint is required with distill_model (the trained teacher)")
    from ..models import create_model, load_pretrained

    teacher = create_model(teacher_name, num_classes=0, num_frames=num_frames, img_size=img_size,
                           **(teacher_overrides or {}))
    load_pretrained(teacher, checkpoint, strict=True)
    return FeatureDistiller(student, teacher, loss=loss)
