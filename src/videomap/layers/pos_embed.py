"""Position-embedding helpers: resizing learned tables and fixed sinusoidal tables.

Resizing is what lets an 8-frame / 224px checkpoint run at 64 frames or 112px: spatial tables
are resized bicubically on their 2-D grid, temporal tables linearly along time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_spatial_pos_embed(pos: torch.Tensor, new_hw: tuple[int, int], num_prefix: int = 1,
                             old_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize (1, num_prefix + h*w, d) on its grid to ``new_hw`` (bicubic); prefix tokens are kept."""
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    n = grid.shape[1]
    if old_hw is None:
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position embeddings; pass old_hw")
        old_hw = (side, side)
    if tuple(old_hw) == tuple(new_hw):
        return pos
    d = grid.shape[-1]
    grid = grid.reshape(1, old_hw[0], old_hw[1], d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], d).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)


def resize_temporal_pos_embed(pos: torch.Tensor, new_t: int) -> torch.Tensor:
    """Resize (1, t, d) to (1, new_t, d) by linear interpolation along time."""
    if pos.shape[1] == new_t:
        return pos
    x = pos.permute(0, 2, 1).float()
    x = F.interpolate(x, size=new_t, mode="linear", align_corners=False)
    return x.permute(0, 2, 1).to(pos.dtype)


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine/cosine table (n, dim), the one used for UMT-style alignment heads."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    table = torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()
