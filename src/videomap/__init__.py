"""videomap: efficient video understanding with Mamba and hybrid Mamba-Transformer backbones.

Models with weights::

    model = videomap.create_model("videomap_tiny", num_classes=10, pretrained="encoder.safetensors")
    model = videomap.from_pretrained("runs/finetune/final")  # a save_pretrained directory
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "from_pretrained", "list_models"]

if TYPE_CHECKING:
    from .models import create_model, from_pretrained, list_models


def __getattr__(name: str):
    # Lazy, so that ``import videomap.cli`` does not import torch: the command sets OpenMP's wait
    # policy first, which only works before the OpenMP runtime is loaded (threads.py).
    if name in ("create_model", "from_pretrained", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'videomap' has no attribute {name!r}")
