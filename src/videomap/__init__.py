"""videomap: efficient video understanding with Mamba and hybrid Mamba-Transformer backbones.

Models with weights::

    model = videomap.create_model("videomap_tiny", num_classes=10, pretrained="encoder.safetensors")
    model = videomap.from_pretrained("runs/finetune/final")  # a save_pretrained directory
    model = videomap.create_model("videomap_middle", pretrained="hf-hub:ORG/NAME")  # from the Hugging Face Hub

``videomap.register_with_transformers()`` makes transformers' Auto classes load exported
directories without remote code (docs/huggingface.md).
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "from_pretrained", "list_models", "register_with_transformers"]

if TYPE_CHECKING:
    from .models import create_model, from_pretrained, list_models
    from .models.hf import register_with_transformers


def __getattr__(name: str):
    # Lazy, so that ``import videomap.cli`` does not import torch: the command sets OpenMP's wait
    # policy first, which only works before the OpenMP runtime is loaded (threads.py).
    if name in ("create_model", "from_pretrained", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "register_with_transformers":  # imports transformers, so only on use
        from .models.hf import register_with_transformers

        return register_with_transformers
    raise AttributeError(f"module 'videomap' has no attribute {name!r}")
