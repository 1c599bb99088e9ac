"""Masked pre-training wrapper: teacher -> mask -> encoder on visible tokens -> objective."""

from __future__ import annotations

import json
import os
from typing import Literal, get_args

import torch
from torch import nn

from ..io import save_safetensors
from ..models.base import VideoBackbone, WrapsBackbone
from .masking import MaskGenerator
from .objectives import (
    DEFAULT_LOSS_ON,
    LOSS_ON,
    OBJECTIVES,
    AlignHead,
    ARDecoder,
    alignment_loss,
    cls_loss,
    next_frame_loss,
)
from .teachers import Teacher, as_teacher, clip_level_cls

AlignStudent = Literal["output", "pre_last_block"]
ALIGN_STUDENTS: tuple[str, ...] = get_args(AlignStudent)


def align_teacher_time(x: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """Teacher features (B, T, ...) at the student's ``t`` token frames: frames averaged over each
    tubelet when the student merges frames (tubelet > 1); ``None`` passes through (no attention)."""
    if x is None or x.shape[1] == t:
        return x
    if x.shape[1] % t:
        raise ValueError(f"teacher has {x.shape[1]} frames, not a multiple of the student's {t} token frames")
    return x.reshape(x.shape[0], t, x.shape[1] // t, *x.shape[2:]).mean(2)


class MaskedPretrainer(WrapsBackbone, nn.Module):
    """Encoder + objective head (``decoder``); the teacher is held outside the module tree so it is neither
    trained, wrapped by DDP, nor written into checkpoints.

    For the ``frame``/``token`` objectives the loss is the next-frame MSE (scored where ``loss_on``
    says) plus ``cls_weight`` times the MSE of the decoder's cls output against the teacher's
    clip-level cls (0 disables it). The ``video`` objective aligns the cls as one more token.

    ``student`` (``video`` objective): the tokens aligned are the encoder's normalised output
    (``"output"``) or, as the authors' masked pre-training (``video_sm/models/videomamba_pretrain.py``,
    ``x_clip_vis.append(residual)`` after the block loop), the un-normalised residual stream entering
    the last block (``"pre_last_block"``). The last block and the final norm then get no gradient
    and are frozen: they keep their initial values, as in the authors' released checkpoints.
    """

    def __init__(self, encoder: VideoBackbone, teacher: Teacher | nn.Module, objective: str = "frame",
                 mask_type: str = "attention", mask_ratio: float = 0.5, decoder_dim: int | None = None,
                 decoder_depth: int = 3, loss_on: str = DEFAULT_LOSS_ON, target_norm: str = "none",
                 cls_weight: float = 1.0, student: AlignStudent = "output") -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
        if student not in ALIGN_STUDENTS:
            raise ValueError(f"student: expected one of {ALIGN_STUDENTS}, got {student!r}")
        if student != "output" and objective != "video":
            raise ValueError(f"student={student!r} applies to the 'video' (UMT alignment) objective only, "
                             f"not {objective!r}")
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on: expected one of {LOSS_ON}, got {loss_on!r}")
        if cls_weight < 0:
            raise ValueError(f"cls_weight must be >= 0, got {cls_weight}")
        self.encoder = encoder
        self._teacher = [as_teacher(teacher)]
        self.objective = objective
        self.masker = MaskGenerator(mask_type, mask_ratio)
        self.loss_on = loss_on
        self.target_norm = target_norm
        self.cls_weight = float(cls_weight)
        c = self.teacher.feature_dim
        if not c:
            raise ValueError("teacher.feature_dim is unknown; set it on the teacher module")
        self.student = student
        if student == "pre_last_block":
            for name in encoder.modules_after_block(-2):
                encoder.get_submodule(name).requires_grad_(False)
        if objective == "video":
            self.decoder = AlignHead(encoder.embed_dim, c, max_tokens=1 + 4 * int(torch.tensor(encoder.grid).prod()))
        else:
            self.decoder = ARDecoder(encoder.embed_dim, c, encoder.grid, dim=decoder_dim, depth=decoder_depth,
                                  granularity=objective)

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    def predict(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """One masked pass: ``mask`` (B, N, True = hidden), the teacher's ``target`` (B, T', hw, C) at
        the token grid, ``pred`` (the decoder output) and the teacher output ``teacher``."""
        grid = self.encoder.check_input(video)
        teacher = self.teacher
        if next(iter(teacher.buffers()), video).device != video.device:
            teacher.to(video.device)
        tout = teacher(video, grid[1:])
        attn = align_teacher_time(tout.attn, grid[0])
        mask = self.masker(video.shape[0], grid, attn=attn, device=video.device)
        if self.student == "pre_last_block":
            tokens = self.encoder.forward_intermediates(video, [-2], mask=mask, intermediates_only=True)[0]
        else:
            tokens = self.encoder.forward_features(video, mask=mask)
        pred = self.decoder(tokens, mask) if self.objective == "video" else self.decoder(tokens, mask, grid)
        return {"mask": mask, "target": align_teacher_time(tout.patch, grid[0]), "pred": pred, "teacher": tout}

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.predict(video)
        mask, patch, pred, tout = out["mask"], out["target"], out["pred"], out["teacher"]
        grid = self.encoder.check_input(video)
        stats = {"mask_ratio": mask.float().mean().item()}
        if self.objective == "video":
            loss = alignment_loss(pred, patch, clip_level_cls(tout), mask)
        else:
            loss = next_frame_loss(pred, patch, mask, grid, self.loss_on, self.target_norm)
            if self.cls_weight > 0:
                c = cls_loss(pred, clip_level_cls(tout), self.target_norm)
                stats.update(loss_patch=loss.item(), loss_cls=c.item())
                loss = loss + self.cls_weight * c
        return loss, stats

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}

    def save_encoder(self, path: str | os.PathLike, config: dict | None = None) -> str:
        """Write the encoder (no decoder, teacher or head) as safetensors, with its model config in
        the metadata."""
        meta = {"format": "pt", "videomap": json.dumps(config or getattr(self.encoder, "model_config", {}))}
        save_safetensors(self.encoder_state_dict(), path, metadata=meta)
        return os.fspath(path)


__all__ = ["ALIGN_STUDENTS", "AlignStudent", "MaskedPretrainer"]
