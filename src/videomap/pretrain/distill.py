"""Self-distillation (VideoMamba §3.3): a frozen, smaller, trained model guides a larger student
by aligning their final features, alongside the usual classification loss.

The aligned feature is the final-norm cls token (the input of the classifier). When the widths
differ, a learned Linear maps the student's feature to the teacher's width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTILL_LOSSES = ("l2", "cos")


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """``l2``: mean squared error; ``cos``: mean(2 - 2 cos) of the L2-normalised features."""
    s, t = student.float(), teacher.float()
    if kind == "l2":
        return F.mse_loss(s, t)
    if kind == "cos":
        return (2 - 2 * F.cosine_similarity(s, t, dim=-1)).mean()
    raise ValueError(f"distill loss: expected one of {DISTILL_LOSSES}, got {kind!r}")


class FeatureDistiller(nn.Module):
    """Wraps a student classifier; ``forward(video) -> (logits, feature loss)``.

    The teacher is held outside the module tree: it is frozen, never in train mode, not wrapped by
    DDP and not written to checkpoints.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, loss: str = "l2") -> None:
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

    # layer-wise lr decay and weight-decay exclusions follow the student
    def num_lr_layers(self) -> int:
        return self.student.num_lr_layers()

    def lr_layer_id(self, name: str) -> int:
        if name.startswith("student."):
            return self.student.lr_layer_id(name[len("student."):])
        return self.num_lr_layers() - 1

    def no_weight_decay(self) -> set[str]:
        return {f"student.{n}" for n in self.student.no_weight_decay()}

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.student.forward_features(video)
        logits = self.student.forward_head(feats)
        teacher = self.teacher.eval()
        if next(teacher.parameters()).device != video.device:
            teacher.to(video.device)
        with torch.no_grad():
            target = teacher.forward_features(video)[:, 0]
        return logits, feature_distill_loss(self.proj(feats[:, 0]), target, self.loss)
