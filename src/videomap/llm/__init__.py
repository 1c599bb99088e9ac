"""Video-LLM (VideoMAP-LLaVA): registry encoders + a shared projector + any Hugging Face causal LM.

Owns the vision tower (:mod:`.vision`), the projector, the model and its save/load, instruction and
QA data with chat templates (:mod:`.data`, :mod:`.conversation`), QA evaluation (:mod:`.qa`) and the
tiny local tokenizer / LM builders (:mod:`.tiny`); the commands are in :mod:`videomap.tasks.llm`.

::

    from videomap.llm import VideoLLM, VideoLLMConfig

    model = VideoLLM.from_config(VideoLLMConfig(language_model="path/to/vicuna-7b", video_encoder="videomap_middle",
                                                video_checkpoint="encoder.safetensors"))
    model.set_trainable("align")              # stage 1: projector only
    out = model(**batch)                      # batch from videomap.llm.data.collate_instructions
    new_tokens = model.generate(prompt_ids, videos=clip[None])

The model classes are imported on first use, so ``import videomap.llm`` (and the constants the
data code needs) stays cheap: torch and transformers load only when a model is asked for.
"""

from typing import TYPE_CHECKING

from .constants import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    PLACEHOLDER_IDS,
    VIDEO_PLACEHOLDER,
    VIDEO_TOKEN_INDEX,
)

__all__ = [
    "IGNORE_INDEX", "IMAGE_PLACEHOLDER", "IMAGE_TOKEN_INDEX", "PLACEHOLDER_IDS", "VIDEO_PLACEHOLDER",
    "VIDEO_TOKEN_INDEX", "VideoLLM", "VideoLLMConfig", "VisionTower", "build_projector",
    "register_with_transformers",
]

_LAZY = {
    "VideoLLM": ".model", "VideoLLMConfig": ".model", "VisionTower": ".vision", "build_projector": ".projector",
    "register_with_transformers": "videomap.models.hf",  # the encoders as transformers models live in models/
}

if TYPE_CHECKING:
    from ..models.hf import register_with_transformers
    from .model import VideoLLM, VideoLLMConfig
    from .projector import build_projector
    from .vision import VisionTower


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'videomap.llm' has no attribute {name!r}")
