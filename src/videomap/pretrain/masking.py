"""Mask generators for masked pre-training.

All return a bool tensor (B, T*h*w), True = hidden, over patch tokens only (the cls token is
never part of the mask, so it is always visible). Per-frame generators hide exactly
``floor(h*w*ratio)`` patches in every frame; row generators hide ``floor(h*ratio)`` whole rows.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

MaskType = Literal["attention", "random", "tube", "frame_row", "clip_row", "none"]
MASK_TYPES = get_args(MaskType)


def _from_scores(scores: torch.Tensor, n_hide: int) -> torch.Tensor:
    """Hide the ``n_hide`` lowest-scoring entries along the last dim."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if n_hide > 0:
        idx = scores.argsort(dim=-1)[..., :n_hide]
        mask.scatter_(-1, idx, True)
    return mask


def attention_mask(attn: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """UMT attention masking: per frame draw a weighted permutation of patches (weights = the
    teacher's cls attention, without replacement) and keep the first ``N - floor(N*ratio)``."""
    b, t, n = attn.shape
    n_keep = n - math.floor(n * ratio)
    w = attn.reshape(b * t, n).float().clamp_min(0) + 1e-12
    order = torch.multinomial(w.cpu(), n, replacement=False, generator=generator).to(attn.device)
    mask = torch.ones(b * t, n, dtype=torch.bool, device=attn.device)
    mask.scatter_(1, order[:, :n_keep], False)
    return mask.reshape(b, t * n)


def random_mask(b: int, t: int, n: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    scores = torch.rand(b, t, n, generator=generator)
    return _from_scores(scores, math.floor(n * ratio)).reshape(b, t * n).to(device)


def tube_mask(b: int, t: int, n: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    """The same spatial positions hidden in every frame (VideoMAE tubes)."""
    scores = torch.rand(b, 1, n, generator=generator).expand(b, t, n)
    return _from_scores(scores, math.floor(n * ratio)).reshape(b, t * n).to(device)


def row_mask(b: int, t: int, hw: tuple[int, int], ratio: float, per_frame: bool, generator=None,
             device=None) -> torch.Tensor:
    """Hide whole rows of patches, chosen per frame (``frame_row``) or once per clip (``clip_row``)."""
    h, w = hw
    scores = torch.rand(b, t if per_frame else 1, h, generator=generator).expand(b, t, h)
    rows = _from_scores(scores, math.floor(h * ratio))
    return rows[..., None].expand(b, t, h, w).reshape(b, t * h * w).to(device)


class MaskGenerator:
    """Callable ``(batch, grid, attn=None) -> mask`` configured by type and ratio."""

    def __init__(self, kind: str = "attention", ratio: float = 0.5, seed: int | None = None) -> None:
        if kind not in MASK_TYPES:
            raise ValueError(f"mask type: expected one of {MASK_TYPES}, got {kind!r}")
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio: expected 0 <= ratio < 1, got {ratio}")
        self.kind = kind
        self.ratio = ratio
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, b: int, grid: tuple[int, int, int], attn: torch.Tensor | None = None,
                 device=None) -> torch.Tensor:
        t, h, w = grid
        n = h * w
        g = self.generator
        if self.kind == "none":
            return torch.zeros(b, t * n, dtype=torch.bool, device=device)
        if self.kind == "attention":
            if attn is None:
                raise ValueError("attention masking needs a teacher that returns attention (attn is None)")
            if attn.shape != (b, t, n):
                raise ValueError(f"teacher attention: expected {(b, t, n)}, got {tuple(attn.shape)}")
            return attention_mask(attn, self.ratio, g).to(device)
        if self.kind == "random":
            return random_mask(b, t, n, self.ratio, g, device)
        if self.kind == "tube":
            return tube_mask(b, t, n, self.ratio, g, device)
        return row_mask(b, t, (h, w), self.ratio, per_frame=self.kind == "frame_row", generator=g, device=device)
