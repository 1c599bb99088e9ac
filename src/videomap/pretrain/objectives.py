"""Pre-training heads: VideoMAP's autoregressive decoder (frame- or token-causal) and the
UMT / VideoMamba video-wise alignment head.

Design choices (see docs/pretraining.md):
- ``frame``/``token``: the prediction at frame t regresses the teacher features of frame t+1 at
  the same spatial position; the last frame has no target and is left out. Both use the same
  targets so that the ablation only changes the attention mask.
- What the causal mask does and does not hide: it stops the *decoder* at frame t from reading
  frames > t, but the encoder before it is bidirectional, so the visible tokens of frame t+1 have
  already been mixed into the encoder features of frame t. A target whose own token was visible
  to the encoder is therefore partly seen. ``loss_on`` picks which (t+1, p) targets are scored:
  ``all`` (default for now), ``target_hidden`` (only targets hidden from the encoder, as MAP
  scores masked tokens only) or ``masked`` (only predictions whose own input token (t, p) was
  hidden, the MAE reading of "masked positions").
- The decoder's cls output regresses the teacher's clip-level cls (``cls_weight``), so the
  encoder's cls -- later the classifier's input -- gets a pre-training signal.
- Target normalisation: ``none`` (CLIP features are already L2-normalised by the teacher),
  ``layernorm`` (per-token, MAE norm-pix style) or ``l2``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Mlp, TransformerBlock, resize_spatial_pos_embed, resize_temporal_pos_embed, sinusoid_table

Objective = Literal["frame", "token", "video"]
LossOn = Literal["all", "target_hidden", "masked"]
TargetNorm = Literal["none", "layernorm", "l2"]
OBJECTIVES = get_args(Objective)
LOSS_ON = get_args(LossOn)
# The default of ``pretrain.loss_on`` (the paper configs set it once, in configs/pretrain/_k400_base.yaml).
DEFAULT_LOSS_ON: LossOn = "all"


def block_causal_mask(num_groups: int, group_size: int, device=None) -> torch.Tensor:
    """(G*S, G*S) bool, True = may attend: group g sees groups <= g, all of its own group included."""
    groups = torch.ones(num_groups, num_groups, dtype=torch.bool, device=device).tril()
    return groups.repeat_interleave(group_size, 0).repeat_interleave(group_size, 1)


def normalize_target(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return x
    if how == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=1e-6)
    if how == "l2":
        return F.normalize(x, dim=-1)
    raise ValueError(f"target_norm: expected 'none', 'layernorm' or 'l2', got {how!r}")


def scatter_visible(visible: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Put (B, Nv, d) visible tokens back at the False positions of ``mask`` (B, N); ``fill`` elsewhere."""
    b, n = mask.shape
    full = fill.to(visible.dtype).expand(b, n, visible.shape[-1]).clone()
    full[~mask] = visible.reshape(-1, visible.shape[-1])
    return full


class ARDecoder(nn.Module):
    """VideoMAP decoder: Linear to ``dim``, learned mask token at hidden positions, learned decoder
    position embeddings, cls removed, ``depth`` Transformer blocks under a causal mask, cls put back,
    LayerNorm, MLP to the teacher width ("add the cls token back after the Transformer layers and
    use an MLP for mapping"). Output 0 is the cls prediction (see :func:`cls_loss`)."""

    def __init__(self, enc_dim: int, target_dim: int, grid: tuple[int, int, int], dim: int | None = None,
                 depth: int = 3, mlp_ratio: float = 4.0, granularity: str = "frame", head_dim: int = 64) -> None:
        super().__init__()
        if granularity not in ("frame", "token"):
            raise ValueError(f"granularity: expected 'frame' or 'token', got {granularity!r}")
        dim = dim or enc_dim
        self.granularity = granularity
        self.grid = tuple(grid)
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[1] * grid[2], dim))  # [0] unused: no cls
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, grid[0], dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, max(1, dim // head_dim), mlp_ratio=mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = Mlp(dim, dim, out_dim=target_dim)
        for p in (self.mask_token, self.pos_embed, self.temporal_pos_embedding):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed", "temporal_pos_embedding"}

    def attn_mask(self, grid: tuple[int, int, int], device=None) -> torch.Tensor:
        t, h, w = grid
        if self.granularity == "frame":
            return block_causal_mask(t, h * w, device)
        return block_causal_mask(t * h * w, 1, device)

    def decode(self, full: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``full``: (B, 1 + t*h*w, dim) decoder-width tokens (cls first) -> (B, 1 + t*h*w, target_dim)."""
        t, h, w = grid
        spatial = resize_spatial_pos_embed(self.pos_embed, (h, w), old_hw=self.grid[1:])[:, 1:]
        temporal = resize_temporal_pos_embed(self.temporal_pos_embedding, t)
        pos = (spatial[:, None] + temporal[:, :, None]).reshape(1, t * h * w, -1)
        cls, x = full[:, :1], full[:, 1:] + pos.to(full.dtype)
        mask = self.attn_mask(grid, full.device)
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        return self.head(self.norm(torch.cat([cls, x], dim=1)))

    def forward(self, enc_tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        x = self.embed(enc_tokens)
        full = scatter_visible(x[:, 1:], mask, self.mask_token)
        return self.decode(torch.cat([x[:, :1], full], dim=1), grid)


def next_frame_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int, int],
                    loss_on: str = DEFAULT_LOSS_ON, target_norm: str = "none") -> torch.Tensor:
    """MSE between predictions at frames 0..T-2 and the teacher features of frames 1..T-1.

    pred: (B, 1 + T*hw, C) decoder output; target: (B, T, hw, C); mask: (B, T*hw) True = hidden.
    ``loss_on``: ``all`` scores every (t+1, p) target; ``target_hidden`` only targets whose token
    (t+1, p) was hidden from the encoder; ``masked`` only predictions whose own input token (t, p)
    was hidden. Samples without a scored position contribute nothing.
    """
    t, h, w = grid
    if t < 2:
        raise ValueError("next-frame prediction needs at least 2 frames (after the tubelet), got 1")
    b = pred.shape[0]
    p = pred[:, 1:].reshape(b, t, h * w, -1)[:, :-1].float()
    y = normalize_target(target[:, 1:].float(), target_norm)
    err = (p - y).pow(2).mean(-1)  # (B, T-1, hw): prediction at (t, p) vs target at (t+1, p)
    if loss_on == "all":
        return err.mean()
    hidden = mask.reshape(b, t, h * w)
    if loss_on == "target_hidden":
        m = hidden[:, 1:].float()
    elif loss_on == "masked":
        m = hidden[:, :-1].float()
    else:
        raise ValueError(f"loss_on: expected one of {LOSS_ON}, got {loss_on!r}")
    return (err * m).sum() / m.sum().clamp_min(1.0)


def cls_loss(pred: torch.Tensor, clip_cls: torch.Tensor, target_norm: str = "none") -> torch.Tensor:
    """MSE between the decoder's cls output ``pred[:, 0]`` and the teacher's clip-level cls (B, C)."""
    return (pred[:, 0].float() - normalize_target(clip_cls.float(), target_norm)).pow(2).mean()


class AlignHead(nn.Module):
    """UMT / VideoMamba video-wise alignment: visible student tokens + fixed sinusoidal positions
    -> Linear -> LayerNorm -> L2, compared with the same frame's teacher features."""

    def __init__(self, enc_dim: int, target_dim: int, max_tokens: int = 1 + 64 * 14 * 14) -> None:
        super().__init__()
        self.proj = nn.Linear(enc_dim, target_dim)
        self.norm = nn.LayerNorm(target_dim)
        self.register_buffer("pos", sinusoid_table(max_tokens, enc_dim)[None], persistent=False)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, enc_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n = mask.shape
        if n + 1 > self.pos.shape[1]:
            raise ValueError(f"AlignHead was built for at most {self.pos.shape[1] - 1} tokens, got {n}")
        pos = self.pos[:, 1:n + 1].expand(b, n, -1)[~mask].reshape(b, -1, self.pos.shape[-1])
        pos = torch.cat([self.pos[:, :1].expand(b, 1, -1), pos], dim=1)
        return F.normalize(self.norm(self.proj(enc_tokens + pos.to(enc_tokens.dtype))), dim=-1)


def alignment_loss(student: torch.Tensor, teacher_patch: torch.Tensor, teacher_clip_cls: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 cos) over visible tokens and the cls token (vs the teacher's clip-level cls, B x C)."""
    b = mask.shape[0]
    tgt = teacher_patch.reshape(b, mask.shape[1], -1)[~mask].reshape(b, -1, teacher_patch.shape[-1])
    tgt = torch.cat([teacher_clip_cls.float()[:, None], tgt.float()], dim=1)
    cos = (student.float() * F.normalize(tgt, dim=-1)).sum(-1)
    return (2 - 2 * cos).mean()
