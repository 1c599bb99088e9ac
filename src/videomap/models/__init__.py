"""Backbones: VideoMamba, VideoHybrid (VideoMAP) and the ViT baseline, plus the registry.

Every backbone shares :class:`VideoBackbone`'s interface (embed, one block loop, final norm,
``forward_features``, ``forward_intermediates``, head), so code above this package never asks
which class it holds.

Weights: ``create_model(name, pretrained=path)`` builds a registered model and loads a checkpoint
into it; ``from_pretrained(directory)`` rebuilds a model saved with ``model.save_pretrained``;
``load_pretrained(model, path)`` loads into a model you built yourself. ``path`` may be
``"hf-hub:ORG/NAME"`` (the Hugging Face Hub, :mod:`.hub`); ``model.push_to_hub(repo)`` uploads.
The transformers classes live in :mod:`.hf`, imported only on use (it imports transformers).
"""

from .base import VideoBackbone
from .registry import MODEL_DEFS, create_model, from_pretrained, list_models
from .videomamba import VideoHybrid, VideoMamba
from .vit import VisionTransformer
from .weights import load_pretrained

__all__ = [
    "MODEL_DEFS", "VideoBackbone", "VideoHybrid", "VideoMamba", "VisionTransformer", "create_model", "from_pretrained",
    "list_models", "load_pretrained",
]
