"""Model registry: architecture definitions as data, built by :func:`create_model`."""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from .videomamba import VideoHybrid, VideoMamba
from .vit import VisionTransformer

# name -> (class, architecture kwargs). Sizes: see docs/models.md for the parameter counts.
MODEL_DEFS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    # VideoMamba (pure SSM), spatial-first bidirectional scan
    "videomamba_tiny": (VideoMamba, dict(depth=24, embed_dim=192)),
    "videomamba_small": (VideoMamba, dict(depth=24, embed_dim=384)),
    "videomamba_middle": (VideoMamba, dict(depth=32, embed_dim=576)),
    # VideoHybrid (VideoMAP): a Transformer block after every 4 Mamba layers
    "videomap_tiny": (VideoHybrid, dict(depth=24, embed_dim=192, attn_every=4, attn_mlp_ratio=2.0)),
    "videomap_small": (VideoHybrid, dict(depth=24, embed_dim=384, attn_every=4, attn_mlp_ratio=2.0)),
    "videomap_middle": (VideoHybrid, dict(depth=32, embed_dim=576, attn_every=4, attn_mlp_ratio=2.0)),
    "videomap_base": (VideoHybrid, dict(depth=32, embed_dim=768, attn_every=4, attn_mlp_ratio=2.0)),
    "videomap_large": (VideoHybrid, dict(depth=32, embed_dim=1024, attn_every=4, attn_mlp_ratio=2.0)),
    # joint space-time attention baselines
    "vit_tiny": (VisionTransformer, dict(depth=12, embed_dim=192, num_heads=3)),
    "vit_base": (VisionTransformer, dict(depth=12, embed_dim=768, num_heads=12)),
}


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing ``pattern``."""
    return sorted(n for n in MODEL_DEFS if pattern in n)


def model_kwargs(name: str, **overrides: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and the full constructor kwargs for a registered name plus overrides."""
    if name not in MODEL_DEFS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cls, arch = MODEL_DEFS[name]
    return cls, {**arch, **overrides}


def create_model(name: str, num_classes: int = 400, num_frames: int = 8, img_size: int = 224,
                 drop_path_rate: float = 0.0, pretrained: str | os.PathLike | None = None,
                 partial_load: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model, optionally with weights.

    ``pretrained``: a checkpoint (safetensors or PyTorch file, a directory written by
    ``save_pretrained`` or ``videomap export --format hf``, or ``"hf-hub:ORG/NAME"`` on the
    Hugging Face Hub) loaded with position tables resized to ``num_frames`` / ``img_size``.
    The classifier head may be missing or of another size (it is then left as initialised) and
    tensors the model lacks are logged, but a tensor of another shape is a ``ValueError``: the
    checkpoint belongs to another architecture. ``partial_load=True`` loads whatever fits instead.
    See :func:`videomap.models.load_pretrained`.
    """
    cls, kwargs = model_kwargs(name, num_classes=num_classes, num_frames=num_frames, img_size=img_size,
                               drop_path_rate=drop_path_rate, **overrides)
    model = cls(**kwargs)
    model.model_name = name
    model.model_config = {"name": name, **kwargs}
    if pretrained:
        from .hub import is_hub_id, resolve_hub_path
        from .weights import load_pretrained

        if is_hub_id(pretrained):
            pretrained = resolve_hub_path(pretrained)

        load_pretrained(model, pretrained, strict=False, partial=partial_load)
    return model


def read_model_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` directory: ``{"name": ..., **constructor kwargs}``."""
    cfg_path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{os.fspath(directory)}: no config.json (expected a directory written by "
                                "save_pretrained)")
    with open(cfg_path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
    if isinstance(config, dict) and config.get("model_type") == "videomap":  # videomap export --format hf
        config = {"name": config.get("backbone"), **config.get("backbone_kwargs", {}),
                  "num_frames": config.get("num_frames"), "img_size": config.get("image_size"),
                  "num_classes": len(config.get("id2label") or {})}
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"{cfg_path}: expected a mapping with the model's \"name\" (written by save_pretrained)")
    config.pop("library", None)
    return config


def from_pretrained(directory: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a model from a ``save_pretrained`` directory (config.json + model.safetensors), a
    ``videomap export --format hf`` directory, or ``"hf-hub:ORG/NAME"``.

    ``overrides`` change constructor arguments, e.g. ``num_frames=16`` (position tables are
    resized) or ``num_classes=10`` (a new head); the weights are loaded strictly otherwise.
    """
    from .hub import is_hub_id, resolve_hub_path

    if is_hub_id(directory):
        directory = resolve_hub_path(directory)
    config = read_model_config(directory)
    name = config.pop("name")
    model = create_model(name, **{**config, **overrides})
    from .weights import load_pretrained

    load_pretrained(model, directory, strict=True)
    return model
