"""Fine-tuning losses: cross-entropy with label smoothing, Mixup/CutMix soft targets, MSE for a
regression head, plus the weighted feature loss of a self-distillation wrapper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Mixup

Head = Literal["classification", "regression"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability vector per sample (mixed / smoothed labels)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def head_outputs(head: Head, num_classes: int) -> int:
    """Outputs of the classifier: one for a regression head, else the dataset's class count."""
    if head not in ("classification", "regression"):
        raise ValueError(f"finetune.head: expected 'classification' or 'regression', got {head!r}")
    return 1 if head == "regression" else num_classes


def make_loss(num_classes: int, *, head: Head = "classification", mixup: float = 0.0, cutmix: float = 0.0,
              mixup_switch_prob: float = 0.5, label_smoothing: float = 0.0,
              distill_weight: float = 1.0) -> Callable[[nn.Module, Any], Any]:
    """``loss_fn(model, batch)`` for the engine's :class:`~videomap.engine.Trainer`.

    Mixup/CutMix draw from the global torch generator, which training checkpoints save, so a
    resumed run mixes exactly as an uninterrupted one. A model returning ``(logits, extra)`` (the
    self-distillation wrapper) adds ``distill_weight * extra``.
    """
    head_outputs(head, num_classes)
    mixer = None
    if head == "classification" and (mixup > 0 or cutmix > 0):
        mixer = Mixup(num_classes, mixup_alpha=mixup, cutmix_alpha=cutmix, switch_prob=mixup_switch_prob,
                      label_smoothing=label_smoothing)

    def loss_fn(model: nn.Module, batch):
        x, y = batch[0], batch[1]
        target = None
        if mixer is not None:
            x, target = mixer(x, y)
        out = model(x)
        logits, extra = (out if isinstance(out, tuple) else (out, None))
        if head == "regression":
            loss = F.mse_loss(logits.float().squeeze(-1), y.float())
        elif target is not None:
            loss = soft_cross_entropy(logits, target)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if extra is None:
            return loss
        return loss + distill_weight * extra, {"distill": extra.item()}

    return loss_fn
