"""Masked pre-training wrapper: teacher -> mask -> encoder on visible tokens -> objective."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..io import save_safetensors
from ..models.base import VideoBackbone, WrapsBackbone
from .masking import MaskGenerator
from .objectives import OBJECTIVES, AlignHead, ARDecoder, alignment_loss, next_frame_loss
from .teachers import Teacher, as_teacher


def _align_teacher_time(x: torch.Tensor, t: int) -> torch.Tensor:
    """Average teacher frames over each tubelet when the student merges frames (tubelet > 1)."""
    if x is None or x.shape[1] == t:
        return x
    if x.shape[1] % t:
        raise ValueError(f"teacher has {x.shape[1]} frames, not a multiple of the student's {t} token frames")
    return x.reshape(x.shape[0], t, x.shape[1] // t, *x.shape[2:]).mean(2)


class MaskedPretrainer(WrapsBackbone, nn.Module):
    """Encoder + objective head (``decoder``); the teacher is held outside the module tree so it is neither
    trained, wrapped by DDP, nor written into checkpoints."""

    def __init__(self, encoder: VideoBackbone, teacher: Teacher | nn.Module, objective: str = "frame",
                 mask_type: str = "attention", mask_ratio: float = 0.5, decoder_dim: int | None = None,
                 decoder_depth: int = 3, loss_on: str = "all", target_norm: str = "none") -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
        self.encoder = encoder
        self._teacher = [as_teacher(teacher)]
        self.objective = objective
        self.masker = MaskGenerator(mask_type, mask_ratio)
        self.loss_on = loss_on
        self.target_norm = target_norm
        c = self.teacher.feature_dim
        if not c:
            raise ValueError("teacher.feature_dim is unknown; set it on the teacher module")
        if objective == "video":
            self.decoder = AlignHead(encoder.embed_dim, c, max_tokens=1 + 4 * int(torch.tensor(encoder.grid).prod()))
        else:
            self.decoder = ARDecoder(encoder.embed_dim, c, encoder.grid, dim=decoder_dim, depth=decoder_depth,
                                  granularity=objective)

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        grid = self.encoder.check_input(video)
        teacher = self.teacher
        if next(iter(teacher.buffers()), video).device != video.device:
            teacher.to(video.device)
        tout = teacher(video, grid[1:])
        patch = _align_teacher_time(tout.patch, grid[0])
        attn = _align_teacher_time(tout.attn, grid[0])
        mask = self.masker(video.shape[0], grid, attn=attn, device=video.device)
        tokens = self.encoder.forward_features(video, mask=mask)
        if self.objective == "video":
            loss = alignment_loss(self.decoder(tokens, mask), patch, tout.cls, mask)
        else:
            pred = self.decoder(tokens, mask, grid)
            loss = next_frame_loss(pred, patch, mask, grid, self.loss_on, self.target_norm)
        return loss, {"mask_ratio": mask.float().mean().item()}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}

    def save_encoder(self, path: str | os.PathLike, config: dict | None = None) -> str:
        """Write the encoder (no decoder, teacher or head) as safetensors, with its model config in
        the metadata."""
        meta = {"format": "pt", "videomap": json.dumps(config or getattr(self.encoder, "model_config", {}))}
        save_safetensors(self.encoder_state_dict(), path, metadata=meta)
        return os.fspath(path)


__all__ = ["MaskedPretrainer"]
