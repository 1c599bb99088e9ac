"""Stochastic depth."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Drops a whole residual branch per sample with probability ``p`` (stochastic depth)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(max_rate: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``max_rate`` over ``n`` blocks."""
    if n <= 1:
        return [0.0] * n
    return [max_rate * i / (n - 1) for i in range(n)]
