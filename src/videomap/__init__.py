"""videomap: efficient video understanding with Mamba and hybrid Mamba-Transformer backbones."""

from .models import create_model, from_pretrained, list_models

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "from_pretrained", "list_models"]
