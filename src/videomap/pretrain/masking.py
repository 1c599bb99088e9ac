"""Mask generators for masked pre-training.

All return a bool tensor (B, T*h*w), True = hidden, over patch tokens only (the cls token is
never part of the mask, so it is always visible). Every sample hides the same number of tokens
(the encoder drops hidden tokens and needs equal counts per sample); only some kinds also fix the
count per frame. The kinds follow VideoMamba's released generators
(``videomamba/video_sm/datasets/masking_generator.py``):

- ``attention``: ``floor(h*w*r)`` patches per frame, drawn from the teacher's attention (UMT;
  VideoMAP masks per frame).
- ``random``: ``floor(T*h*w*r)`` patches anywhere in the clip (``RandomMaskingGenerator``).
- ``random_frame``: ``floor(h*w*r)`` random patches in every frame, drawn per frame.
- ``tube``: the same ``floor(h*w*r)`` positions in every frame (``TubeMaskingGenerator``).
- ``frame_row``: ``floor(h*r)`` whole rows per frame, drawn per frame (``TubeRowMaskingGenerator``,
  despite its name).
- ``clip_row``: ``T*floor(h*r)`` whole rows drawn among all T*h rows of the clip, so frames hide
  different numbers of rows (``RandomRowMaskingGenerator``).
- ``shared_row``: the same ``floor(h*r)`` rows in every frame.
- ``none``: nothing hidden.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

MaskType = Literal["attention", "random", "random_frame", "tube", "frame_row", "clip_row", "shared_row", "none"]
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
    """``floor(t*n*ratio)`` patches hidden anywhere in the clip (VideoMamba's ``random``)."""
    scores = torch.rand(b, t * n, generator=generator)
    return _from_scores(scores, math.floor(t * n * ratio)).to(device)


def random_frame_mask(b: int, t: int, n: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    """``floor(n*ratio)`` random patches hidden in every frame, drawn per frame."""
    scores = torch.rand(b, t, n, generator=generator)
    return _from_scores(scores, math.floor(n * ratio)).reshape(b, t * n).to(device)


def tube_mask(b: int, t: int, n: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    """The same spatial positions hidden in every frame (VideoMAE tubes)."""
    scores = torch.rand(b, 1, n, generator=generator).expand(b, t, n)
    return _from_scores(scores, math.floor(n * ratio)).reshape(b, t * n).to(device)


def row_mask(b: int, t: int, hw: tuple[int, int], ratio: float, how: str, generator=None,
             device=None) -> torch.Tensor:
    """Hide whole rows of patches: ``floor(h*ratio)`` per frame drawn per frame (``frame_row``),
    ``t*floor(h*ratio)`` drawn among all t*h rows of the clip (``clip_row``), or ``floor(h*ratio)``
    drawn once and shared by every frame (``shared_row``)."""
    h, w = hw
    per_frame = math.floor(h * ratio)
    if how == "clip_row":
        rows = _from_scores(torch.rand(b, t * h, generator=generator), t * per_frame).reshape(b, t, h)
    elif how == "frame_row":
        rows = _from_scores(torch.rand(b, t, h, generator=generator), per_frame)
    elif how == "shared_row":
        rows = _from_scores(torch.rand(b, 1, h, generator=generator), per_frame).expand(b, t, h)
    else:
        raise ValueError(f"row mask: expected 'frame_row', 'clip_row' or 'shared_row', got {how!r}")
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
        if self.kind == "random_frame":
            return random_frame_mask(b, t, n, self.ratio, g, device)
        if self.kind == "tube":
            return tube_mask(b, t, n, self.ratio, g, device)
        return row_mask(b, t, (h, w), self.ratio, self.kind, generator=g, device=device)
