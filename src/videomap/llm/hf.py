"""Our encoders as ``transformers`` models: ``AutoConfig`` / ``AutoModel`` for model type
``videomap_encoder``.

Code built on ``transformers`` (LLaVA forks, Video-LLaVA's ``vision_tower``) loads encoders with
``AutoModel.from_pretrained(dir)`` and reads ``last_hidden_state`` / ``hidden_states``; after
:func:`register_with_transformers` a VideoMAP encoder saved with
:meth:`VideoMAPEncoderModel.save_pretrained` is one of them. :class:`videomap.llm.VideoLLM` does
not go through this module: it uses the registry backbones directly.

This module imports ``transformers`` at import time; ``videomap.llm`` imports it only on use.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from ..models import create_model
from ..models.registry import model_kwargs

__all__ = ["MODEL_TYPE", "VideoMAPEncoderConfig", "VideoMAPEncoderModel", "register_with_transformers"]

MODEL_TYPE = "videomap_encoder"


class VideoMAPEncoderConfig(PretrainedConfig):
    """A registry name plus its ``create_model`` arguments (``num_frames``, ``img_size``, overrides).

    ``hidden_size``, ``image_size``, ``patch_size`` and ``num_frames`` are derived from them, the
    attributes LLaVA-style code reads off a vision tower's config.
    """

    model_type = MODEL_TYPE

    def __init__(self, encoder_name: str = "videomap_middle", encoder_kwargs: dict | None = None,
                 **kwargs: Any) -> None:
        encoder_kwargs = dict(encoder_kwargs or {})
        encoder_kwargs.pop("num_classes", None)  # an encoder: always headless
        _, full = model_kwargs(encoder_name, **encoder_kwargs)  # ValueError listing the names if unknown
        self.encoder_name = encoder_name
        self.encoder_kwargs = encoder_kwargs
        self.hidden_size = int(full.get("embed_dim", 192))
        self.image_size = int(full.get("img_size", 224))
        self.patch_size = int(full.get("patch_size", 16))
        self.num_frames = int(full.get("num_frames", 8))
        super().__init__(**kwargs)


class VideoMAPEncoderModel(PreTrainedModel):
    """A registry backbone behind the ``transformers`` model interface.

    ``forward(pixel_values)`` takes videos ``(B, 3, T, H, W)`` or images ``(B, 3, H, W)`` (a clip of
    one tubelet) and returns ``BaseModelOutput``: ``last_hidden_state`` is the backbone's
    normalised output ``(B, 1 + T'*h*w, d)`` (cls token first), ``hidden_states`` the embeddings and
    the residual stream after every block (before the final norm).
    """

    config_class = VideoMAPEncoderConfig
    base_model_prefix = "videomap_encoder"
    main_input_name = "pixel_values"

    def __init__(self, config: VideoMAPEncoderConfig) -> None:
        super().__init__(config)
        self.backbone = create_model(config.encoder_name, num_classes=0, **config.encoder_kwargs)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Keep the registry's own initialisation (done in the backbone's constructor)."""

    @classmethod
    def from_backbone(cls, backbone: torch.nn.Module) -> VideoMAPEncoderModel:
        """Wrap a model built by ``videomap.create_model`` (its classifier head is dropped)."""
        config = dict(getattr(backbone, "model_config", None) or {})
        if "name" not in config:
            raise ValueError("backbone: expected a model built by videomap.create_model (it has no model_config)")
        name = config.pop("name")
        model = cls(VideoMAPEncoderConfig(encoder_name=name, encoder_kwargs=config))
        state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}
        model.backbone.load_state_dict(state, strict=True)
        return model

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> BaseModelOutput | tuple:
        b = self.backbone
        if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
            pixel_values = pixel_values.unsqueeze(2).expand(-1, -1, b.tubelet_size, -1, -1)
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        x = b.embed(pixel_values)
        take = range(len(b.block_names())) if output_hidden_states else ()
        stream, streams = b.run_blocks(x, take=take)
        last = b.final_norm(stream)
        hidden_states = (x, *streams) if output_hidden_states else None
        if not return_dict:
            return (last, hidden_states) if output_hidden_states else (last,)
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden_states)


def register_with_transformers() -> tuple[type[VideoMAPEncoderConfig], type[VideoMAPEncoderModel]]:
    """Make ``AutoConfig`` / ``AutoModel`` resolve model type ``videomap_encoder``; safe to call twice."""
    AutoConfig.register(MODEL_TYPE, VideoMAPEncoderConfig, exist_ok=True)
    AutoModel.register(VideoMAPEncoderConfig, VideoMAPEncoderModel, exist_ok=True)
    return VideoMAPEncoderConfig, VideoMAPEncoderModel
