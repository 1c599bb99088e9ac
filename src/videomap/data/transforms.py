"""Clip transforms on tensors (no torchvision / timm needed).

Canonical layout: **(C, T, H, W)**, channels first, the layout the VideoMamba patch embedding
consumes. Geometric and photometric functions keep the input dtype: uint8 in, uint8 out (values
rounded), float in, float out. :func:`normalize` turns uint8 (0..255) or float (0..1) into a
normalised float clip.

Every random transform draws its parameters **once per clip** from an explicit
``torch.Generator`` and applies them to all frames, because per-frame crops, flips or colour
changes would inject fake motion that a video model learns to rely on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .sampling import as_generator

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize",
    "resize_short_side",
    "crop",
    "center_crop",
    "spatial_crops",
    "three_crop",
    "random_resized_crop_params",
    "random_resized_crop",
    "hflip",
    "random_hflip",
    "normalize",
    "RandAugment",
    "RandomErasing",
    "Mixup",
    "smooth_one_hot",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(high: int, g: torch.Generator) -> int:
    return int(torch.randint(max(high, 1), (), generator=g))


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def resize(clip: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear resize of every frame to ``size`` (antialiased when shrinking)."""
    _check_clip(clip)
    h, w = _pair(size)
    if clip.shape[-2:] == (h, w):
        return clip
    x = clip.permute(1, 0, 2, 3).float()  # frames as a batch: (T, C, H, W)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
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


def three_crop(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Three crops along the long side (test-time views)."""
    return spatial_crops(clip, size, 3)


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


# ---------------------------------------------------------------------------------------------
# RandAugment
# ---------------------------------------------------------------------------------------------
def _affine(x: torch.Tensor, matrix: torch.Tensor, fill: float) -> torch.Tensor:
    """Warp frames ``x`` (T, C, H, W) with a 2x3 output->input map in centred pixel coordinates."""
    t, c, h, w = x.shape
    ys = torch.arange(h, dtype=torch.float32) + 0.5 - h / 2
    xs = torch.arange(w, dtype=torch.float32) + 0.5 - w / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # (H, W, 3)
    src = pts @ matrix.T  # (H, W, 2) source pixel coordinates
    grid = torch.stack([src[..., 0] / (w / 2), src[..., 1] / (h / 2)], dim=-1)
    grid = grid.unsqueeze(0).expand(t, h, w, 2)
    ones = torch.ones(t, 1, h, w)
    out = F.grid_sample(
        torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    img, mask = out[:, :c], out[:, c:]
    return img + (1.0 - mask) * fill


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of (T, 3, H, W), kept as (T, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x.mean(1, True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    return degenerate + factor * (x - degenerate)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    # Per-channel range over the whole clip: per-frame stretching would flicker.
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
    offset = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return (x - offset) * scale


def _equalize(x: torch.Tensor) -> torch.Tensor:
    # Histogram equalisation per channel with one histogram for the whole clip.
    out = torch.empty_like(x)
    for ch in range(x.shape[1]):
        v = x[:, ch].round().clamp(0, 255).long()
        hist = torch.bincount(v.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(hist.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            out[:, ch] = x[:, ch]
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(max=255).float()
        out[:, ch] = lut[v]
    return out


def _sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)  # border pixels stay unsmoothed
    return _blend(blurred, x, factor)


def _posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    shift = 8 - bits
    return ((x.round().clamp(0, 255).long() >> shift) << shift).float()


class RandAugment:
    """RandAugment for clips: ``num_ops`` ops per clip at magnitude ``magnitude`` (0..10).

    Ops, magnitudes and signs are drawn once per clip and applied identically to every frame;
    statistics-based ops (autocontrast, equalize, contrast) use whole-clip statistics for the same
    reason. Each chosen op is applied with probability ``prob`` (0.5 as in the common "rand-mX-nY"
    policy); ``magnitude_std`` > 0 jitters the magnitude per op. Magnitudes increase monotonically
    with strength: rotate up to 30 deg, shear 0.3, translate 45% of the side, enhance factors
    1 +- 0.9, solarize threshold down to 0, posterize down to 4 bits.

    Input: (C, T, H, W) on the 0..255 scale (uint8 or float); output has the input dtype.
    """

    OPS = (
        "identity",
        "autocontrast",
        "equalize",
        "rotate",
        "solarize",
        "color",
        "posterize",
        "contrast",
        "brightness",
        "sharpness",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    )

    def __init__(
        self,
        magnitude: float = 9.0,
        num_ops: int = 2,
        prob: float = 0.5,
        magnitude_std: float = 0.0,
        ops: Sequence[str] | None = None,
        fill: float = 128.0,
    ) -> None:
        self.magnitude = float(magnitude)
        self.num_ops = int(num_ops)
        self.prob = float(prob)
        self.magnitude_std = float(magnitude_std)
        self.ops = tuple(ops) if ops is not None else self.OPS
        unknown = set(self.ops) - set(self.OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; available: {self.OPS}")
        self.fill = float(fill)

    @classmethod
    def from_string(cls, spec: str) -> RandAugment:
        """Parse "m7-n4" / "rand-m7-n4-mstd0.5-inc1" / "m9-n2-p0.5" style policy strings."""
        kwargs: dict = {}
        for part in spec.strip().lower().split("-"):
            if part in ("", "rand"):
                continue
            match = re.fullmatch(r"(mstd|inc|m|n|p)([0-9.]+)", part)
            if match is None:
                raise ValueError(f"cannot parse RandAugment spec {spec!r} at {part!r}; expected e.g. 'm7-n4'")
            key, value = match.groups()
            if key == "m":
                kwargs["magnitude"] = float(value)
            elif key == "n":
                kwargs["num_ops"] = int(float(value))
            elif key == "p":
                kwargs["prob"] = float(value)
            elif key == "mstd":
                kwargs["magnitude_std"] = float(value)
            # "inc" is accepted for compatibility: magnitudes here always increase with strength.
        return cls(**kwargs)

    def __repr__(self) -> str:
        return (
            f"RandAugment(magnitude={self.magnitude}, num_ops={self.num_ops}, prob={self.prob}, "
            f"magnitude_std={self.magnitude_std})"
        )

    def sample_ops(self, generator: torch.Generator | int | None = None) -> list[tuple[str, float, float]]:
        """Draw ``(op, magnitude, sign)`` triples for one clip (ops skipped by ``prob`` omitted).

        A fixed number of random draws is consumed regardless of the outcome, so the stream of
        later draws does not depend on which ops were picked.
        """
        g = as_generator(generator)
        chosen = []
        for _ in range(self.num_ops):
            op = self.ops[_randint(len(self.ops), g)]
            apply = _uniform(g) < self.prob
            sign = -1.0 if _uniform(g) < 0.5 else 1.0
            noise = float(torch.randn((), generator=g))
            m = self.magnitude + self.magnitude_std * noise if self.magnitude_std > 0 else self.magnitude
            if apply:
                chosen.append((op, min(max(m, 0.0), 10.0), sign))
        return chosen

    def apply_op(self, x: torch.Tensor, op: str, magnitude: float, sign: float) -> torch.Tensor:
        """Apply one op to frames ``x`` (T, C, H, W) float on the 0..255 scale."""
        level = magnitude / 10.0
        h, w = x.shape[-2:]
        if op == "identity":
            return x
        if op == "autocontrast":
            return _autocontrast(x)
        if op == "equalize":
            return _equalize(x)
        if op == "solarize":
            threshold = 256.0 - 256.0 * level
            return torch.where(x >= threshold, 255.0 - x, x)
        if op == "posterize":
            return _posterize(x, max(1, 8 - int(round(4 * level))))
        factor = 1.0 + sign * 0.9 * level
        if op == "color":
            return _blend(_gray(x), x, factor)
        if op == "contrast":
            return _blend(_gray(x).mean(), x, factor)
        if op == "brightness":
            return x * factor
        if op == "sharpness":
            return _sharpness(x, factor) if h >= 3 and w >= 3 else x
        if op == "rotate":
            a = math.radians(30.0 * level * sign)
            m = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        elif op == "shear_x":
            m = torch.tensor([[1.0, 0.3 * level * sign, 0.0], [0.0, 1.0, 0.0]])
        elif op == "shear_y":
            m = torch.tensor([[1.0, 0.0, 0.0], [0.3 * level * sign, 1.0, 0.0]])
        elif op == "translate_x":
            m = torch.tensor([[1.0, 0.0, -0.45 * level * sign * w], [0.0, 1.0, 0.0]])
        elif op == "translate_y":
            m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -0.45 * level * sign * h]])
        else:  # pragma: no cover - guarded in __init__
            raise ValueError(op)
        return _affine(x, m, self.fill)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        _check_clip(clip)
        ops = self.sample_ops(generator)
        if not ops:
            return clip
        x = clip.permute(1, 0, 2, 3).float()  # (T, C, H, W)
        for op, magnitude, sign in ops:
            x = self.apply_op(x, op, magnitude, sign).clamp_(0.0, 255.0)
            if clip.dtype == torch.uint8:
                x = x.round_()  # uint8 semantics between ops, as with 8-bit images
        return _restore(x, clip.dtype).permute(1, 0, 2, 3).contiguous()


# ---------------------------------------------------------------------------------------------
# Random erasing
# ---------------------------------------------------------------------------------------------
class RandomErasing:
    """Erase one random box, identical in every frame, with probability ``prob`` per clip.

    Applied after :func:`normalize`; ``mode`` "pixel" fills with per-pixel N(0, 1) noise (the
    same noise in every frame), "rand" with one N(0, 1) value per channel, "const" with zeros.
    Box area is ``area`` x frame area, aspect ratio log-uniform in ``aspect``.
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


# ---------------------------------------------------------------------------------------------
# Mixup / CutMix
# ---------------------------------------------------------------------------------------------
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

    Randomness comes from ``generator`` if given, else from an internal generator seeded with
    ``seed``; :meth:`state_dict` / :meth:`load_state_dict` let a resumed run continue the stream.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
        seed: int = 0,
    ) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.label_smoothing = float(label_smoothing)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @staticmethod
    def _beta(alpha: float, g: torch.Generator) -> float:
        # torch's Beta sampler cannot take a generator; seed a NumPy one from ours instead.
        seed = int(torch.randint(0, 2**62, (), generator=g))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None):
        """Return ``(lam, box)``; ``box`` is ``(y0, y1, x0, x1)`` for CutMix, ``None`` for Mixup."""
        g = generator if generator is not None else self.generator
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
