"""Residual Mamba block with a fused add -> RMSNorm and an fp32 residual stream."""

from __future__ import annotations

import torch
from torch import nn

from .drop_path import DropPath
from .mamba import BiMamba
from .norm import RMSNorm


class MambaBlock(nn.Module):
    """``residual += drop_path(previous output); out = mixer(RMSNorm(residual))``.

    The block receives the previous block's un-added output and the residual, so the add and the
    norm happen together (the layout of Mamba/VideoMamba). The residual is kept in fp32 because
    summing dozens of bf16 branch outputs loses precision.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, **mixer_kwargs) -> None:
        super().__init__()
        self.mixer = BiMamba(dim, **mixer_kwargs)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        if self.residual_in_fp32:
            residual = residual.float()
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)))
        return hidden, residual
