"""Masked pre-training: teachers, mask generators, the VideoMAP decoder and the UMT alignment head.

Self-distillation is a fine-tuning technique and lives in :mod:`videomap.finetune`.
"""

from .masking import MASK_TYPES, MaskGenerator
from .model import MaskedPretrainer
from .objectives import OBJECTIVES, AlignHead, ARDecoder, block_causal_mask, next_frame_loss
from .teachers import (
    CachedTeacher,
    CLIPTeacher,
    ModuleTeacher,
    PixelTeacher,
    Teacher,
    TeacherOutput,
    as_teacher,
    build_teacher,
)

__all__ = [
    "MASK_TYPES", "OBJECTIVES", "ARDecoder", "AlignHead", "CLIPTeacher", "CachedTeacher",
    "MaskGenerator", "MaskedPretrainer", "ModuleTeacher", "PixelTeacher", "Teacher",
    "TeacherOutput", "as_teacher", "block_causal_mask", "build_teacher", "next_frame_loss",
]
