"""Frozen teachers that give per-frame targets for masked pre-training.

Protocol: ``teacher(frames)`` with frames (B, 3, T, H, W) (normalised as the student sees them)
returns a :class:`TeacherOutput` with

- ``patch``: (B, T, h*w, C) per-frame patch features on the student's token grid,
- ``cls``:   (B, T, C) per-frame global features,
- ``attn``:  (B, T, h*w) per-frame cls->patch attention (non-negative, sums to 1 per frame) or
  ``None`` when the teacher has no notion of saliency,
- ``clip_cls``: (B, C) the clip-level global target, or ``None``: then it is the frame average of
  ``cls`` (see :func:`clip_level_cls`).

Any ``nn.Module`` returning that (or a tuple in that order) can be used through :func:`as_teacher`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD


@dataclass
class TeacherOutput:
    patch: torch.Tensor
    cls: torch.Tensor
    attn: torch.Tensor | None = None
    clip_cls: torch.Tensor | None = None


def clip_level_cls(out: TeacherOutput) -> torch.Tensor:
    """The teacher's clip-level global target (B, C): ``clip_cls`` when the teacher gives one, else
    its per-frame ``cls`` averaged over frames."""
    return out.clip_cls if out.clip_cls is not None else out.cls.float().mean(1)


class Teacher(nn.Module):
    """Base class: frozen, always in eval mode, no gradients."""

    feature_dim: int = 0

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    def compute(self, frames: torch.Tensor, grid: tuple[int, int]) -> TeacherOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, grid: tuple[int, int] | None = None) -> TeacherOutput:
        if grid is None:
            grid = (frames.shape[-2] // 16, frames.shape[-1] // 16)
        return self.compute(frames, grid)


def _resample_grid(x: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """(N, src_h*src_w, C) -> (N, dst_h*dst_w, C) by bilinear resampling on the grid."""
    if tuple(src) == tuple(dst):
        return x
    n, _, c = x.shape
    x = x.transpose(1, 2).reshape(n, c, *src)
    x = F.interpolate(x.float(), size=dst, mode="bilinear", align_corners=False)
    return x.reshape(n, c, -1).transpose(1, 2)


class PixelTeacher(Teacher):
    """Teacher-free targets from the pixels themselves, for offline runs (no CLIP weights).

    ``target="frames"``: per-patch normalised pixels of each frame (MAE ``norm_pix`` style).
    ``target="motion"``: each patch's pixel change since the previous frame (zero for frame 0), so
    the next-frame objective regresses how frame t+1 *differs* from frame t. On static
    backgrounds a frame target is mostly "copy the background", which teaches nothing about what
    moves; the change is non-zero only where something moves, so predicting it needs the velocity.

    ``attn`` is a saliency proxy, not attention: the per-patch pixel standard deviation
    normalised to sum to 1, so attention masking keeps textured patches visible more often.
    Pixels have no global token: ``cls`` is the mean of a frame's patch targets and ``clip_cls``
    the mean of all patch targets of the clip.
    """

    def __init__(self, patch_size: int = 16, normalize: bool = True, eps: float = 1e-6,
                 target: Literal["frames", "motion"] = "frames") -> None:
        super().__init__()
        if target not in ("frames", "motion"):
            raise ValueError(f"pixel target: expected 'frames' or 'motion', got {target!r}")
        self.patch_size = patch_size
        self.normalize = normalize
        self.eps = eps
        self.target = target
        self.feature_dim = 3 * patch_size * patch_size

    def compute(self, frames: torch.Tensor, grid: tuple[int, int]) -> TeacherOutput:
        b, c, t, h, w = frames.shape
        p = self.patch_size
        x = frames.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if (h // p, w // p) != tuple(grid):
            x = F.interpolate(x, size=(grid[0] * p, grid[1] * p), mode="bilinear", align_corners=False)
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (BT, hw, c*p*p)
        std = patches.std(-1, unbiased=False)
        if self.target == "motion":
            pix = patches.reshape(b, t, -1, patches.shape[-1])
            patch = torch.cat([torch.zeros_like(pix[:, :1]), pix[:, 1:] - pix[:, :-1]], dim=1)
        else:
            if self.normalize:
                mean = patches.mean(-1, keepdim=True)
                patches = (patches - mean) / (patches.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
            patch = patches.reshape(b, t, -1, patches.shape[-1])
        sal = std.reshape(b, t, -1) + self.eps
        return TeacherOutput(patch=patch, cls=patch.mean(2), attn=sal / sal.sum(-1, keepdim=True),
                             clip_cls=patch.mean((1, 2)))


# Which CLIP tokens become targets: "videomamba" = VideoMamba's released pre-training teacher
# (``clip_return_cls``: last-layer tokens without ``ln_post``, per-frame cls averaged over frames before
# the projection); "postnorm" = ``post_layernorm`` applied to every token, then projected.
ClipTarget = Literal["videomamba", "postnorm"]
CLIP_TARGETS = get_args(ClipTarget)


class CLIPTeacher(Teacher):
    """CLIP vision tower through ``transformers``, applied frame by frame.

    Features, by ``target`` (all projected by ``visual_projection``, 512-d for ViT-B/16, and
    L2-normalised when ``normalize``):

    - ``"videomamba"`` (default): VideoMamba's released masked pre-training teacher
      (``videomamba/video_sm/models/clip.py`` with ``clip_return_cls``): the last layer's tokens
      *without* ``post_layernorm``; the clip-level cls (``clip_cls``) is the raw per-frame cls
      averaged over frames, *then* projected and normalised. Per-frame ``cls`` is the projected raw
      cls of each frame.
    - ``"postnorm"``: ``post_layernorm`` on every token (HF applies it to the pooled token only), then
      projected; ``clip_cls`` is left to the frame average of the normalised per-frame cls.

    Attention: the last layer's cls->patch softmax attention, averaged over heads, computed from
    that layer's own q/k projections so any attention backend works. Frames are converted from
    the student's normalisation (ImageNet mean/std by default) to CLIP's, and position embeddings
    are interpolated when the frame size differs from CLIP's training size; if CLIP's patch grid
    differs from the student's, features and attention are resampled bilinearly to it.
    """

    def __init__(self, model: str | nn.Module, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD,
                 normalize: bool = True, local_files_only: bool = False, target: ClipTarget = "videomamba") -> None:
        super().__init__()
        if target not in CLIP_TARGETS:
            raise ValueError(f"clip target: expected one of {CLIP_TARGETS}, got {target!r}")
        if isinstance(model, str):
            from transformers import CLIPVisionModelWithProjection

            try:
                model = CLIPVisionModelWithProjection.from_pretrained(model, local_files_only=local_files_only)
            except OSError as e:
                raise ValueError(f"teacher: cannot load a CLIP vision model from {model!r} ({e}); pass a local "
                                 "directory holding config.json and the weights") from e
        self.clip = model
        self.vision = getattr(model, "vision_model", model)
        self.proj = getattr(model, "visual_projection", None)
        cfg = self.vision.config
        self.patch_size = cfg.patch_size
        self.feature_dim = self.proj.out_features if self.proj is not None else cfg.hidden_size
        self.normalize = normalize
        self.target = target
        scale = torch.tensor(input_std) / torch.tensor(CLIP_STD)
        shift = (torch.tensor(input_mean) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Width-``hidden`` tokens -> target features (projection, then L2 when ``normalize``)."""
        if self.proj is not None:
            x = self.proj(x)
        return F.normalize(x, dim=-1) if self.normalize else x

    def _last_layer_cls_attention(self, hidden_in: torch.Tensor) -> torch.Tensor:
        layer = self.vision.encoder.layers[-1]
        attn = layer.self_attn
        h = layer.layer_norm1(hidden_in)
        n, length, d = h.shape
        heads = attn.num_heads
        q = attn.q_proj(h[:, :1]).view(n, 1, heads, d // heads).transpose(1, 2)
        k = attn.k_proj(h).view(n, length, heads, d // heads).transpose(1, 2)
        w = torch.softmax((q @ k.transpose(-1, -2)) * (d // heads) ** -0.5, dim=-1)  # (n, heads, 1, L)
        return w.mean(1)[:, 0, 1:]

    def compute(self, frames: torch.Tensor, grid: tuple[int, int]) -> TeacherOutput:
        b, c, t, h, w = frames.shape
        x = frames.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float()
        x = x * self.in_scale + self.in_shift
        out = self.vision(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        hidden = out.last_hidden_state  # the last layer's tokens, before post_layernorm
        clip_cls = None
        if self.target == "postnorm":
            hidden = self.vision.post_layernorm(hidden)
        else:
            clip_cls = self._features(hidden[:, 0].reshape(b, t, -1).mean(1))
        tokens = self._features(hidden)
        attn = self._last_layer_cls_attention(out.hidden_states[-2])
        src = (h // self.patch_size, w // self.patch_size)
        patch = _resample_grid(tokens[:, 1:], src, grid)
        attn = _resample_grid(attn[..., None], src, grid)[..., 0].clamp_min(0)
        attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
        return TeacherOutput(patch=patch.reshape(b, t, -1, patch.shape[-1]),
                             cls=tokens[:, 0].reshape(b, t, -1), attn=attn.reshape(b, t, -1), clip_cls=clip_cls)


class ModuleTeacher(Teacher):
    """Wraps a user module that returns (patch, cls, attn) or a TeacherOutput."""

    def __init__(self, module: nn.Module, feature_dim: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.feature_dim = feature_dim or getattr(module, "feature_dim", 0)
        self.freeze()

    def compute(self, frames: torch.Tensor, grid: tuple[int, int]) -> TeacherOutput:
        out = self.module(frames)
        if not isinstance(out, TeacherOutput):
            if not isinstance(out, (tuple, list)) or len(out) not in (2, 3, 4):
                raise ValueError("teacher module must return TeacherOutput or a tuple (patch, cls[, attn[, clip_cls]])")
            out = TeacherOutput(*out)
        b, _, t = frames.shape[:3]
        if out.patch.ndim != 4 or out.patch.shape[:3] != (b, t, grid[0] * grid[1]):
            raise ValueError(f"teacher patch features: expected (B={b}, T={t}, h*w={grid[0] * grid[1]}, C), "
                             f"got {tuple(out.patch.shape)}")
        return out


def as_teacher(obj: Teacher | nn.Module) -> Teacher:
    return obj if isinstance(obj, Teacher) else ModuleTeacher(obj)


class CachedTeacher(Teacher):
    """Memoises teacher outputs per batch (LRU), keyed by a caller key or a hash of the frames.

    Useful when the same clips come back (several objectives on one batch, fixed-view datasets, or
    repeated evaluation), because the teacher forward often costs more than the student's.
    """

    def __init__(self, teacher: Teacher, max_items: int = 64) -> None:
        super().__init__()
        self.teacher = teacher
        self.feature_dim = teacher.feature_dim
        self.max_items = max_items
        self._cache: OrderedDict[object, TeacherOutput] = OrderedDict()
        self.hits = 0

    @staticmethod
    def frames_key(frames: torch.Tensor) -> str:
        data = frames.detach().float().contiguous().cpu().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16).hexdigest() + str(tuple(frames.shape))

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, grid: tuple[int, int] | None = None, key: object = None
                ) -> TeacherOutput:
        key = (self.frames_key(frames) if key is None else key, grid)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        out = self.teacher(frames, grid)
        self._cache[key] = out
        if len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
        return out


TeacherKind = Literal["clip", "pixel", "pixel_motion"]


def build_teacher(kind: TeacherKind, clip_model: str | None = None, patch_size: int = 16, cache: int = 0,
                  local_files_only: bool = False, clip_target: ClipTarget = "videomamba") -> Teacher:
    """``kind``: "pixel" / "pixel_motion" (offline, no weights: frames or frame-to-frame change, see
    :class:`PixelTeacher`) or "clip" (``clip_model``: local dir or hub id; ``clip_target``: which
    tokens, see :class:`CLIPTeacher`)."""
    if kind in ("pixel", "pixel_motion"):
        teacher: Teacher = PixelTeacher(patch_size, target="motion" if kind == "pixel_motion" else "frames")
    elif kind == "clip":
        if not clip_model:
            raise ValueError("teacher=clip needs clip_model: a local directory or a hub id")
        teacher = CLIPTeacher(clip_model, local_files_only=local_files_only, target=clip_target)
    else:
        raise ValueError(f"teacher: expected one of {get_args(TeacherKind)}, got {kind!r}")
    return CachedTeacher(teacher, cache) if cache else teacher
