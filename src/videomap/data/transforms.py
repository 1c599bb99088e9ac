"""Clip geometry and normalisation on tensors (no torchvision / timm needed).

Canonical layout: **(C, T, H, W)**, channels first, the layout the VideoMamba patch embedding
consumes. Geometric functions keep the input dtype: uint8 in, uint8 out (values rounded), float
in, float out. :func:`normalize` turns uint8 (0..255) or float (0..1) into a normalised float clip.

Every random transform draws its parameters **once per clip** from an explicit
``torch.Generator`` and applies them to all frames, because per-frame crops, flips or colour
changes would inject fake motion that a video model learns to rely on. Photometric augmentation
lives in :mod:`.rand_augment`, batch mixing and erasing in :mod:`.mixup`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .sampling import _randint, _uniform, as_generator

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize",
    "resize_short_side",
    "crop",
    "center_crop",
    "spatial_crops",
    "random_resized_crop_params",
    "random_resized_crop",
    "hflip",
    "random_hflip",
    "normalize",
]

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check_clip(clip: torch.Tensor) -> None:
    if clip.dim() != 4:
        raise ValueError(f"expected a (C, T, H, W) clip, got shape {tuple(clip.shape)}")


def _restore(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return x.round_().clamp_(0, 255).to(torch.uint8)
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def resize(clip: torch.Tensor, size: Size, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize every frame to ``size`` (antialiased when shrinking); ``interpolation`` is
    ``"bilinear"`` or ``"bicubic"`` (what the authors' retrieval evaluation uses)."""
    _check_clip(clip)
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation: expected 'bilinear' or 'bicubic', got {interpolation!r}")
    h, w = _pair(size)
    if clip.shape[-2:] == (h, w):
        return clip
    x = clip.permute(1, 0, 2, 3).float()  # frames as a batch: (T, C, H, W)
    x = F.interpolate(x, size=(h, w), mode=interpolation, align_corners=False, antialias=True)
    return _restore(x, clip.dtype).permute(1, 0, 2, 3).contiguous()


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Scale so the shorter side equals ``size``, keeping the aspect ratio."""
    _check_clip(clip)
    h, w = clip.shape[-2:]
    if h <= w:
        new = (size, max(1, int(round(w * size / h))))
    else:
        new = (max(1, int(round(h * size / w))), size)
    return resize(clip, new)


def crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Same spatial window for every frame."""
    return clip[..., top : top + height, left : left + width]


def center_crop(clip: torch.Tensor, size: Size) -> torch.Tensor:
    """Central ``size`` window; the clip must be at least that large."""
    _check_clip(clip)
    th, tw = _pair(size)
    h, w = clip.shape[-2:]
    if h < th or w < tw:
        raise ValueError(f"cannot crop {th}x{tw} from a {h}x{w} clip; resize first")
    return crop(clip, (h - th) // 2, (w - tw) // 2, th, tw)


def spatial_crops(clip: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """``num_crops`` square crops evenly spaced along the long side (1 = centre crop).

    With 3 this is the standard "three-crop" test view (left/centre/right for landscape video,
    top/middle/bottom for portrait) that covers the whole frame after a short-side resize.
    """
    _check_clip(clip)
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    if num_crops == 1:
        return [center_crop(clip, size)]
    h, w = clip.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} clip; resize first")
    crops = []
    for k in range(num_crops):
        if w >= h:
            left = int(round(k * (w - size) / (num_crops - 1)))
            crops.append(crop(clip, (h - size) // 2, left, size, size))
        else:
            top = int(round(k * (h - size) / (num_crops - 1)))
            crops.append(crop(clip, top, (w - size) // 2, size, size))
    return crops


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | int | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` covering a random area fraction and log-uniform aspect ratio.

    Up to ten tries; then falls back to the largest central crop with a ratio inside ``ratio``.
    """
    g = as_generator(generator)
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(height - h + 1, g)
            left = _randint(width - w + 1, g)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    clip: torch.Tensor,
    size: Size,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """One random crop box for the whole clip, resized to ``size``."""
    _check_clip(clip)
    top, left, h, w = random_resized_crop_params(clip.shape[-2], clip.shape[-1], scale, ratio, generator)
    return resize(crop(clip, top, left, h, w), size)


def hflip(clip: torch.Tensor) -> torch.Tensor:
    """Mirror all frames left-right."""
    return clip.flip(-1)


def random_hflip(
    clip: torch.Tensor, p: float = 0.5, generator: torch.Generator | int | None = None
) -> torch.Tensor:
    """Flip the whole clip with probability ``p`` (disable for SSv2: left/right labels)."""
    g = as_generator(generator)
    return hflip(clip) if _uniform(g) < p else clip


def normalize(
    clip: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) clip -> ``(x - mean) / std`` float32, per channel (dim 0)."""
    _check_clip(clip)
    x = clip.float()
    if clip.dtype == torch.uint8:
        x = x / 255.0
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    return (x - m) / s
