"""The vision side of the Video-LLM: a registry backbone turned into a sequence of visual tokens.

LLaVA-style models feed the LM patch features of one chosen encoder layer. A video gives
``T' * h * w`` of them (``T' = T / tubelet``), which for long clips exceeds what the LM context can
hold, so the token grid can be average-pooled over space and time before the projector. Images
go through a video backbone as a one-tubelet clip: the backbones resize their temporal position
table to the clip's length on the fly, so a VideoMAP model serves as the image encoder at T=1.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..models import VideoBackbone, create_model, list_models, load_pretrained

log = logging.getLogger(__name__)

__all__ = ["VisionTower", "build_backbone"]


def build_backbone(name: str, *, num_frames: int, img_size: int, checkpoint: str | os.PathLike | None = None,
                   overrides: dict | None = None, what: str = "video_encoder") -> VideoBackbone:
    """A headless registry backbone, with ``checkpoint`` loaded strictly when given.

    Strict because an encoder that silently kept random tensors would still "work" inside the LM;
    the classifier head, pre-training heads and an image checkpoint's missing temporal table are
    the only tolerated differences (see :func:`videomap.models.load_pretrained`).
    """
    names = list_models()
    if name not in names:
        raise ValueError(f"{what}: unknown encoder {name!r}; choices: {', '.join(names)}")
    kwargs = dict(overrides or {})
    kwargs.setdefault("num_frames", num_frames)
    kwargs.setdefault("img_size", img_size)
    kwargs["num_classes"] = 0
    model = create_model(name, **kwargs)
    if checkpoint:
        load_pretrained(model, checkpoint, strict=True)
        log.info("%s: loaded %s from %s", what, name, os.fspath(checkpoint))
    else:
        log.warning("%s: %s has random weights (no checkpoint given)", what, name)
    return model


def _pooled_len(n: int, stride: int) -> int:
    return math.ceil(n / stride)


class VisionTower(nn.Module):
    """A backbone plus the choice of features the LM receives.

    Args:
        backbone: a registry model (``videomap.models``).
        feature_layer: python index over ``backbone.block_names()``; the last block (-1) gives the
            backbone's normalised output, any other block its un-normalised residual stream.
        use_cls: keep the cls token (first, un-pooled) in front of the patch tokens.
        spatial_pool / temporal_pool: average-pooling strides over the (h, w) token grid and over
            time; a grid not divisible by a stride keeps a smaller last window (ceil), so no token
            is dropped.
        frozen: no gradients, no_grad forward, eval mode regardless of the parent's ``train()``.
    """

    def __init__(self, backbone: VideoBackbone, feature_layer: int = -1, use_cls: bool = False,
                 spatial_pool: int = 1, temporal_pool: int = 1, frozen: bool = True) -> None:
        super().__init__()
        n = len(backbone.block_names())
        if not -n <= feature_layer < n:
            raise ValueError(f"feature_layer: expected an index in [-{n}, {n}) over the {n} blocks of "
                             f"{getattr(backbone, 'model_name', type(backbone).__name__)}, got {feature_layer}")
        for arg, value in (("spatial_pool", spatial_pool), ("temporal_pool", temporal_pool)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}: expected an integer >= 1, got {value!r}")
        self.backbone = backbone
        self.feature_layer = feature_layer
        self.layer_index = feature_layer % n
        self.use_cls = use_cls
        self.spatial_pool = spatial_pool
        self.temporal_pool = temporal_pool
        self.frozen = False
        self.set_frozen(frozen)

    # ------------------------------------------------------------------ state
    @property
    def hidden_size(self) -> int:
        return self.backbone.embed_dim

    def set_frozen(self, frozen: bool = True) -> None:
        """Frozen: parameters need no gradient and the tower stays in eval mode (dropout/drop path
        off) even when the Video-LLM around it is put in training mode."""
        self.frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            super().train(False)

    def train(self, mode: bool = True) -> VisionTower:
        return super().train(mode and not self.frozen)

    # ------------------------------------------------------------------ token counts
    def num_tokens(self, num_frames: int, img_size: int | tuple[int, int]) -> int:
        """Visual tokens produced for a clip of ``num_frames`` frames (1 for an image) of ``img_size``."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        b = self.backbone
        t = max(1, num_frames // b.tubelet_size)
        grid = (_pooled_len(t, self.temporal_pool), _pooled_len(h // b.patch_size, self.spatial_pool),
                _pooled_len(w // b.patch_size, self.spatial_pool))
        return grid[0] * grid[1] * grid[2] + int(self.use_cls)

    # ------------------------------------------------------------------ features
    def _check(self, pixels: torch.Tensor, ndim: int, arg: str, layout: str) -> None:
        c = self.backbone.in_chans
        if (not isinstance(pixels, torch.Tensor) or pixels.ndim != ndim or pixels.shape[1] != c
                or not pixels.dtype.is_floating_point):
            got = f"{pixels.dtype} {tuple(pixels.shape)}" if isinstance(pixels, torch.Tensor) \
                else type(pixels).__name__
            size = self.backbone.img_size
            example = (f"(N, {c}, {self.backbone.num_frames}, {size}, {size})" if ndim == 5
                       else f"(N, {c}, {size}, {size})")
            raise ValueError(f"{arg}: expected a float tensor of shape {layout}, e.g. {example}, got {got}")

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, K, D) visual tokens."""
        self._check(videos, 5, "videos", "(N, C, T, H, W)")
        return self._features(videos)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, K_img, D): the image as a clip of one tubelet (the frame repeated
        ``tubelet_size`` times, so a backbone with tubelets of 2 frames accepts it)."""
        self._check(images, 4, "images", "(N, C, H, W)")
        clip = images.unsqueeze(2).expand(-1, -1, self.backbone.tubelet_size, -1, -1)
        return self._features(clip)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Videos (5-D) or images (4-D)."""
        return self.encode_image(pixels) if isinstance(pixels, torch.Tensor) and pixels.ndim == 4 \
            else self.encode_video(pixels)

    def _features(self, clip: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        param = next(b.parameters())
        clip = clip.to(param.device)
        if not torch.is_autocast_enabled(param.device.type):
            clip = clip.to(param.dtype)
        grid = b.check_input(clip)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.layer_index == len(b.block_names()) - 1:
                tokens = b.forward_features(clip)
            else:
                tokens = b.forward_intermediates(clip, [self.layer_index], stop_early=True,
                                                 intermediates_only=True)[0]
            return self._pool(tokens, grid)

    def _pool(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        t, h, w = grid
        n, _, d = patches.shape
        if self.spatial_pool > 1 or (self.temporal_pool > 1 and t > 1):
            kt = min(self.temporal_pool, t)
            x = patches.reshape(n, t, h, w, d).permute(0, 4, 1, 2, 3)
            x = F.avg_pool3d(x, kernel_size=(kt, self.spatial_pool, self.spatial_pool), ceil_mode=True)
            patches = x.flatten(2).transpose(1, 2)
        return torch.cat([cls, patches], dim=1) if self.use_cls else patches
