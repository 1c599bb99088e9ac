"""Numbers several packages share: per-channel normalisation statistics (RGB order, for pixel
values on the 0..1 scale) and the label the token losses skip.

They live in this dependency-free leaf module so that the data pipeline (which normalises clips)
and the pre-training teachers (which convert between the student's and CLIP's normalisation), or
the Video-LLM and the video-text model (whose token losses skip the same label), share one copy
without either package importing the other.
"""

from __future__ import annotations

__all__ = ["CLIP_MEAN", "CLIP_STD", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# label of every token a cross-entropy skips (prompts, visual tokens, padding, unmasked words):
# PyTorch's default ignore_index, also the Hugging Face convention
IGNORE_INDEX = -100
