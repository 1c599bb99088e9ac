"""Backbones: VideoMamba, VideoHybrid (VideoMAP) and the ViT baseline, plus the registry."""

from .base import VideoBackbone
from .checkpoint import load_checkpoint, read_state_dict
from .registry import MODEL_DEFS, create_model, from_pretrained, list_models
from .videomamba import VideoMamba
from .vit import VisionTransformer

__all__ = [
    "MODEL_DEFS", "VideoBackbone", "VideoMamba", "VisionTransformer", "create_model", "from_pretrained",
    "list_models",
    "load_checkpoint", "read_state_dict",
]
