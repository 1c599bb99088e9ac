"""Regularisers that mix or erase image content: Mixup / CutMix, label smoothing, random erasing.

Kept apart from the clip geometry in :mod:`.transforms` because these work on normalised data and
(except random erasing, applied per clip at the end of the dataset pipeline) on whole batches
with soft targets in the training step, rather than on raw clips.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .sampling import _randint, _uniform, as_generator
from .transforms import _check_clip

__all__ = ["Mixup", "RandomErasing", "smooth_one_hot"]


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels (B,) -> label-smoothed one-hot (B, K) rows summing to 1."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, dtype=torch.float32, device=target.device)
    out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)
    return out


class Mixup:
    """Batch-level Mixup / CutMix with label smoothing, called in the training step.

    ``__call__(x, target)`` takes a batch ``(B, C, T, H, W)`` (any ``(B, ..., H, W)`` works) and
    integer labels ``(B,)`` and returns the mixed batch and soft targets ``(B, K)`` (rows sum to 1).
    Each sample is mixed with the batch in reverse order. With probability ``prob`` the batch is
    mixed at all; when both alphas are positive CutMix is chosen with ``switch_prob``. A CutMix box
    is the same in every frame and the label weight is corrected to the exact pasted area.

    Randomness comes from ``generator`` if given, else from the global ``torch.default_generator``.
    Mixup keeps no random state of its own: the global RNG is what training checkpoints save, so a
    resumed run continues the same stream of mixes.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
    ) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.label_smoothing = float(label_smoothing)

    @staticmethod
    def _beta(alpha: float, g: torch.Generator) -> float:
        # torch's Beta sampler cannot take a generator; seed a NumPy one from ours instead.
        seed = int(torch.randint(0, 2**62, (), generator=g))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None):
        """Return ``(lam, box)``; ``box`` is ``(y0, y1, x0, x1)`` for CutMix, ``None`` for Mixup."""
        g = generator if generator is not None else torch.default_generator
        active = _uniform(g) < self.prob
        use_cutmix = _uniform(g) < self.switch_prob
        if not active or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return 1.0, None
        if self.cutmix_alpha <= 0:
            use_cutmix = False
        elif self.mixup_alpha <= 0:
            use_cutmix = True
        if not use_cutmix:
            return self._beta(self.mixup_alpha, g), None
        lam = self._beta(self.cutmix_alpha, g)
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(height * cut), int(width * cut)
        cy, cx = _randint(height, g), _randint(width, g)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
        return lam, (y0, y1, x0, x1)

    def __call__(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if target.dim() != 1 or target.shape[0] != x.shape[0]:
            raise ValueError(f"expected integer labels of shape ({x.shape[0]},), got {tuple(target.shape)}")
        soft = smooth_one_hot(target, self.num_classes, self.label_smoothing)
        lam, box = self.sample_params(x.shape[-2], x.shape[-1], generator)
        if lam >= 1.0:
            return x, soft
        partner = x.flip(0)
        if box is None:
            mixed = x * lam + partner * (1.0 - lam)
        else:
            y0, y1, x0, x1 = box
            mixed = x.clone()
            mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        return mixed, soft * lam + soft.flip(0) * (1.0 - lam)


class RandomErasing:
    """Erase one random box, identical in every frame, with probability ``prob`` per clip.

    Applied after :func:`~videomap.data.transforms.normalize`; ``mode`` "pixel" fills with
    per-pixel N(0, 1) noise (the same noise in every frame), "rand" with one N(0, 1) value per
    channel, "const" with zeros. Box area is ``area`` x frame area, aspect ratio log-uniform in
    ``aspect``.
    """

    def __init__(
        self,
        prob: float = 0.25,
        area: tuple[float, float] = (0.02, 1 / 3),
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        mode: str = "pixel",
        max_attempts: int = 10,
    ) -> None:
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"unknown erasing mode {mode!r}; expected 'pixel', 'rand' or 'const'")
        self.prob = float(prob)
        self.area = area
        self.aspect = aspect
        self.mode = mode
        self.max_attempts = int(max_attempts)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        _check_clip(clip)
        g = as_generator(generator)
        if self.prob <= 0 or _uniform(g) >= self.prob:
            return clip
        c, _, h, w = clip.shape
        log_lo, log_hi = math.log(self.aspect[0]), math.log(self.aspect[1])
        for _ in range(self.max_attempts):
            target = h * w * _uniform(g, *self.area)
            aspect = math.exp(_uniform(g, log_lo, log_hi))
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top = _randint(h - eh + 1, g)
                left = _randint(w - ew + 1, g)
                if self.mode == "pixel":
                    fill = torch.randn((c, 1, eh, ew), generator=g)
                elif self.mode == "rand":
                    fill = torch.randn((c, 1, 1, 1), generator=g)
                else:
                    fill = torch.zeros((c, 1, 1, 1))
                out = clip.clone()
                out[:, :, top : top + eh, left : left + ew] = fill.to(out.dtype)
                return out
        return clip
