"""Joint space-time attention ViT on the same token layout (the UMT / TimeSformer-style baseline)."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from ..layers import TransformerBlock, drop_path_rates
from .base import VideoBackbone


class VisionTransformer(VideoBackbone):
    """Every token attends to every other token of the clip (cost quadratic in T*h*w)."""

    released_block_layers = True  # the released layer-decay code still decays ``blocks.N`` per block
    final_norm_name = "norm"

    def __init__(self, depth: int = 12, embed_dim: int = 768, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, **kwargs) -> None:
        super().__init__(embed_dim=embed_dim, **kwargs)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def block_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def run_blocks(self, x: torch.Tensor, take: Collection[int] = (),
                   stop: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stop = len(self.blocks) - 1 if stop is None else stop
        taken: list[torch.Tensor] = []
        for p, blk in enumerate(self.blocks[: stop + 1]):
            x = self.run_block(p, blk, x)
            if p in take:
                taken.append(x)
        return x, taken

    def final_norm(self, stream: torch.Tensor) -> torch.Tensor:
        return self.norm(stream)
