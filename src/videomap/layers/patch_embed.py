"""Video patch embedding."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = (tubelet, patch, patch): (B, C, T, H, W) -> (B, d, T', h, w)."""

    def __init__(self, patch_size: int = 16, tubelet_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.in_chans = in_chans
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
