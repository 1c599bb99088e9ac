"""RandAugment for video clips: the photometric and affine ops and the policy that picks them.

A separate module because it is the one large, self-contained piece of per-clip augmentation
(fourteen ops plus the "rand-mX-nY" policy parser) and is only needed when training with
``randaug``. Ops are drawn once per clip and applied identically to every frame, and the
statistics-based ops use whole-clip statistics, so the augmentation never creates fake motion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .sampling import _randint, _uniform, as_generator
from .transforms import _check_clip, _restore

__all__ = ["RandAugment"]


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
