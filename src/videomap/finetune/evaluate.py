"""Multi-view evaluation: every clip x crop view of a video through the model, fused per video,
counted on every rank and summed across ranks."""

from __future__ import annotations

import torch
from torch import nn

from ..engine import all_reduce_sum
from .distill import student_of
from .metrics import AccuracyAccumulator


@torch.no_grad()
def evaluate_views(model: nn.Module, loader, device: torch.device, regression: bool = False) -> dict[str, float]:
    """Top-1/top-5 of the per-view softmax averaged over views, or, for a regression head, the
    squared error of the view-averaged prediction. A distillation wrapper is evaluated on its student.

    Batches are ``(video, label, ...)`` with video (B, C, T, H, W) or (B, V, C, T, H, W).
    """
    model = student_of(model)
    acc = AccuracyAccumulator(device=device)
    sq = torch.zeros(2, dtype=torch.float64, device=device)  # sum of squared errors, count
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        if x.ndim == 6:
            b, v = x.shape[:2]
            logits = model(x.flatten(0, 1)).reshape(b, v, -1)
        else:
            logits = model(x)[:, None]
        if regression:
            pred = logits.float().mean(1).squeeze(-1)
            sq += torch.stack([((pred - y.float()) ** 2).sum().double(), torch.tensor(float(len(y)), device=device)])
        else:
            acc.update(logits.float(), y)
    if regression:
        sq = all_reduce_sum(sq)
        return {"mse": float(sq[0] / sq[1].clamp_min(1)), "count": float(sq[1])}
    acc.all_reduce()
    return acc.compute()
