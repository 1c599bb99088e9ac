"""Multi-view evaluation: view-averaged softmax, top-k accuracy and a distributed accumulator.

Test-time views (clips x crops) are fused by averaging per-view *softmax probabilities*, not
logits, as in the VideoMamba evaluation protocol; a view with very confident logits then cannot
dominate the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..engine import all_reduce_sum

__all__ = ["average_view_probs", "topk_correct", "accuracy", "AccuracyAccumulator"]


def average_view_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(B, V, K)`` logits -> ``(B, K)`` mean of per-view softmax; ``(B, K)`` is one view."""
    if logits.dim() == 2:
        return logits.float().softmax(-1)
    if logits.dim() != 3:
        raise ValueError(f"expected (B, K) or (B, V, K) logits, got shape {tuple(logits.shape)}")
    return logits.float().softmax(-1).mean(1)


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is among the top-k scores, for each k (k capped at K)."""
    if scores.dim() != 2 or target.shape != scores.shape[:1]:
        raise ValueError(
            f"expected scores (B, K) and target (B,), got {tuple(scores.shape)} and {tuple(target.shape)}"
        )
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (B, kmax)
    hit = top.eq(target.view(-1, 1).to(top.device))
    return torch.stack([hit[:, : min(k, kmax)].any(1).sum() for k in ks]).to(torch.float64)


def accuracy(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent; ``scores`` may be ``(B, K)`` or per-view ``(B, V, K)``."""
    if scores.dim() == 3:
        scores = average_view_probs(scores)
    counts = topk_correct(scores, target, ks)
    return [float(c) * 100.0 / max(target.shape[0], 1) for c in counts]


class AccuracyAccumulator:
    """Running top-k correct counts (and optionally a loss sum) over an evaluation pass.

    State is kept as float64 sums so :meth:`all_reduce` is one ``SUM`` of one tensor across ranks;
    call it once before :meth:`compute` under ``torch.distributed``.
    """

    def __init__(self, ks: Sequence[int] = (1, 5), device: torch.device | str = "cpu") -> None:
        self.ks = tuple(int(k) for k in ks)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        # layout: [correct@k for k in ks] + [count, loss_sum]
        self.state = torch.zeros(len(self.ks) + 2, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def update(
        self, scores: torch.Tensor, target: torch.Tensor, loss: float | torch.Tensor | None = None
    ) -> None:
        """Add a batch; ``scores`` are logits/probs ``(B, K)`` or per-view logits ``(B, V, K)``.

        ``loss`` is the batch-mean loss; it is weighted by the batch size.
        """
        if scores.dim() == 3:
            scores = average_view_probs(scores)
        n = target.shape[0]
        self.state[: len(self.ks)] += topk_correct(scores.detach(), target, self.ks).to(self.device)
        self.state[-2] += n
        if loss is not None:
            self.state[-1] += float(loss) * n

    def all_reduce(self) -> None:
        """Sum the state over all processes (no-op in one process; NCCL gets a CUDA copy)."""
        all_reduce_sum(self.state)

    @property
    def count(self) -> int:
        return int(self.state[-2])

    def compute(self) -> dict[str, float]:
        """``{"top1": %, "top5": %, ..., "count": n, "loss": mean}`` (loss only if given)."""
        n = max(self.count, 1)
        out = {f"top{k}": float(self.state[i]) * 100.0 / n for i, k in enumerate(self.ks)}
        out["count"] = float(self.count)
        if self.state[-1] != 0:
            out["loss"] = float(self.state[-1]) / n
        return out
