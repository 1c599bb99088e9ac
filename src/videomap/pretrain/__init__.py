"""Masked pre-training: teachers, mask generators, the VideoMAP decoder and the UMT alignment head.

Self-distillation is a fine-tuning technique and lives in :mod:`videomap.finetune`.
"""

from .masking import MASK_TYPES, MaskGenerator
from .model import MaskedPretrainer
from .objectives import LOSS_ON, OBJECTIVES, AlignHead, ARDecoder, block_causal_mask, cls_loss, next_frame_loss
from .teachers import (
    CLIP_TARGETS,
    CachedTeacher,
    CLIPTeacher,
    ModuleTeacher,
    PixelTeacher,
    Teacher,
    TeacherOutput,
    as_teacher,
    build_teacher,
    clip_level_cls,
)

__all__ = [
    "CLIP_TARGETS", "LOSS_ON", "MASK_TYPES", "OBJECTIVES", "ARDecoder", "AlignHead", "CLIPTeacher",
    "CachedTeacher", "MaskGenerator", "MaskedPretrainer", "ModuleTeacher", "PixelTeacher", "Teacher",
    "TeacherOutput", "as_teacher", "block_causal_mask", "build_teacher", "clip_level_cls", "cls_loss",
    "next_frame_loss",
]
