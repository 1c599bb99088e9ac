"""Per-channel normalisation statistics (RGB order, for pixel values on the 0..1 scale).

They live in this dependency-free leaf module so that the data pipeline (which normalises clips)
and the pre-training teachers (which convert between the student's and CLIP's normalisation)
share one copy of the numbers without either package importing the other.
"""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
