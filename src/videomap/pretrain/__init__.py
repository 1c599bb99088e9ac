"""Masked pre-training: teachers, mask generators, the VideoMAP decoder and the UMT alignment head."""

from .distill import DISTILL_LOSSES, FeatureDistiller, feature_distill_loss
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
    "DISTILL_LOSSES", "MASK_TYPES", "OBJECTIVES", "ARDecoder", "AlignHead", "CLIPTeacher", "CachedTeacher",
    "FeatureDistiller", "MaskGenerator", "MaskedPretrainer", "ModuleTeacher", "PixelTeacher", "Teacher",
    "TeacherOutput", "as_teacher", "block_causal_mask", "build_teacher", "feature_distill_loss", "next_frame_loss",
]
