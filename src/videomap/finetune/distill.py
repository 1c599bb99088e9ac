"""Self-distillation (VideoMamba §3.3): a frozen, smaller, trained model guides a larger student
by aligning their final features, alongside the usual classification loss.

What is aligned (``target``):

- ``tokens`` (default): the whole final feature map, as the authors' code does
  (``videomamba/image_sm/models/videomamba_distill.py``): every student token after the final norm
  goes through a trained head (RMSNorm + Linear to the teacher's width) and is compared with the
  teacher's token at the same position (the teacher's final-norm output); with ``loss="cos"`` both
  are L2-normalised and the loss is mean(2 - 2 cos) over all tokens.
- ``cls``: the final-norm cls token only (the classifier's input); a Linear maps the student's
  width to the teacher's when they differ.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import RMSNorm
from ..models.base import WrapsBackbone

DistillLoss = Literal["l2", "cos"]
DISTILL_LOSSES = get_args(DistillLoss)
DistillTarget = Literal["tokens", "cls"]
DISTILL_TARGETS = get_args(DistillTarget)


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

    def __init__(self, student: nn.Module, teacher: nn.Module, loss: DistillLoss = "cos",
                 target: DistillTarget = "tokens") -> None:
        super().__init__()
        if loss not in DISTILL_LOSSES:
            raise ValueError(f"distill loss: expected one of {DISTILL_LOSSES}, got {loss!r}")
        if target not in DISTILL_TARGETS:
            raise ValueError(f"distill target: expected one of {DISTILL_TARGETS}, got {target!r}")
        self.student = student
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher.eval()]
        self.loss = loss
        self.target = target
        s_dim, t_dim = student.embed_dim, teacher.embed_dim
        if target == "tokens":  # the authors' distill_head: norm + Linear, always present
            linear = nn.Linear(s_dim, t_dim)
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
            self.proj: nn.Module = nn.Sequential(OrderedDict(norm=RMSNorm(s_dim), linear=linear))
        else:
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
            target = teacher.forward_features(video)
        if self.target == "cls":
            return logits, feature_distill_loss(self.proj(feats[:, 0]), target[:, 0], self.loss)
        if target.shape[1] != feats.shape[1]:
            raise ValueError(f"self-distillation over tokens: the student has {feats.shape[1]} tokens, the "
                             f"teacher {target.shape[1]}; use the same patch size or finetune.distill_target=cls")
        return logits, feature_distill_loss(self.proj(feats), target, self.loss)


def student_of(model: nn.Module) -> nn.Module:
    """The classifier inside a self-distillation wrapper (the model itself otherwise)."""
    return model.student if isinstance(model, FeatureDistiller) else model


def build_distiller(student: nn.Module, teacher_name: str | None, checkpoint: str | None, *,
                    num_frames: int, img_size: int, loss: DistillLoss = "cos",
                    teacher_overrides: dict | None = None, target: DistillTarget = "tokens") -> nn.Module:
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
    return FeatureDistiller(student, teacher, loss=loss, target=target)
