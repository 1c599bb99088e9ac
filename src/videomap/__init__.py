"""videomap: efficient video understanding with Mamba and hybrid Mamba-Transformer backbones.

Models with weights::

    model = videomap.create_model("videomap_tiny", num_classes=10, pretrained="encoder.safetensors")
    model = videomap.from_pretrained("runs/finetune/final")  # a save_pretrained directory
"""

from .models import create_model, from_pretrained, list_models

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "from_pretrained", "list_models"]
