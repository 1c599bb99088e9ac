"""State dicts laid out exactly as the released VideoMamba checkpoints (REFERENCE §2-§3), random values."""

from __future__ import annotations

import math

import torch


def reference_layer_shapes(d: int) -> dict[str, tuple[int, ...]]:
    """Per-layer names and shapes of a VideoMamba checkpoint (REFERENCE §2)."""
    e, r = 2 * d, math.ceil(d / 16)
    shapes = {"mixer.in_proj.weight": (2 * e, d), "mixer.out_proj.weight": (d, e), "norm.weight": (d,)}
    for sfx, a in (("", "A_log"), ("_b", "A_b_log")):
        shapes.update({
            f"mixer.{a}": (e, 16), f"mixer.D{sfx}": (e,), f"mixer.conv1d{sfx}.weight": (e, 1, 4),
            f"mixer.conv1d{sfx}.bias": (e,), f"mixer.x_proj{sfx}.weight": (r + 32, e),
            f"mixer.dt_proj{sfx}.weight": (e, r), f"mixer.dt_proj{sfx}.bias": (e,),
        })
    return shapes


def official_videomamba_state_dict(d: int, depth: int, frames: int, img: int, classes: int) -> dict:
    g = torch.Generator().manual_seed(0)
    sd = {
        "cls_token": (1, 1, d), "pos_embed": (1, 1 + (img // 16) ** 2, d), "temporal_pos_embedding": (1, frames, d),
        "patch_embed.proj.weight": (d, 3, 1, 16, 16), "patch_embed.proj.bias": (d,), "norm_f.weight": (d,),
        "head.weight": (classes, d), "head.bias": (classes,),
    }
    for i in range(depth):
        sd.update({f"layers.{i}.{k}": v for k, v in reference_layer_shapes(d).items()})
    return {k: torch.randn(v, generator=g) for k, v in sd.items()}
