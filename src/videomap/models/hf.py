"""Registry backbones as ``transformers`` models (model type ``videomap``).

Users of VideoMAE, TimeSformer or V-JEPA 2 load video models with ``AutoModel`` /
``AutoModelForVideoClassification`` and run them through ``pipeline("video-classification")``;
these classes make every registry backbone one of them without a second implementation: the
transformers model holds the registry model under ``backbone`` and runs its own block loop.

* :class:`VideoMAPConfig`: the registry name, its constructor arguments, ``num_frames``,
  ``image_size`` and the labels (``id2label``).
* :class:`VideoMAPModel`: ``last_hidden_state`` / ``hidden_states`` / ``pooler_output``
  (feature extraction; what LLaVA-style code reads off a ``vision_tower``).
* :class:`VideoMAPForVideoClassification`: ``logits`` exactly as the registry model computes them.
* :func:`register_with_transformers`: the Auto classes resolve ``videomap`` in this process,
  no remote code needed.
* :func:`write_remote_code`: the small modules ``trust_remote_code=True`` loads from an exported
  directory; they subclass the classes here, so they need this package installed.

This module imports ``transformers`` at import time; ``import videomap.models`` does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForVideoClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .registry import create_model, model_kwargs

__all__ = [
    "MODEL_TYPE", "REMOTE_CODE_FILES", "VideoMAPConfig", "VideoMAPForVideoClassification", "VideoMAPModel",
    "register_with_transformers", "write_remote_code",
]

MODEL_TYPE = "videomap"
# create_model arguments the config holds as its own fields (clip size, labels), never in backbone_kwargs
_OWN_FIELDS = {"name": "backbone", "num_classes": "id2label", "num_frames": "num_frames", "img_size": "image_size"}


class VideoMAPConfig(PretrainedConfig):
    """A registry model as a transformers config.

    ``backbone``: the registry name (``videomap_middle``, ``videomamba_tiny`` ...);
    ``backbone_kwargs``: its further ``create_model`` arguments (depth, width, ...);
    ``num_frames`` / ``image_size``: the clip the weights were trained on (the video processor
    samples and crops to them). ``hidden_size``, ``patch_size`` and ``tubelet_size`` are derived,
    for code that reads them off a vision tower's config. The classes are ``id2label``.
    """

    model_type = MODEL_TYPE

    def __init__(self, backbone: str = "videomap_middle", backbone_kwargs: Mapping[str, Any] | None = None,
                 num_frames: int = 8, image_size: int = 224, **kwargs: Any) -> None:
        backbone_kwargs = dict(backbone_kwargs or {})
        clash = sorted(k for k in backbone_kwargs if k in _OWN_FIELDS)
        if clash:
            raise ValueError(f"backbone_kwargs: {', '.join(clash)} are config fields of their own "
                             f"({', '.join(_OWN_FIELDS[k] for k in clash)}), not backbone arguments")
        _, full = model_kwargs(backbone, **backbone_kwargs)  # ValueError listing the names if unknown
        self.backbone = backbone
        self.backbone_kwargs = backbone_kwargs
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.hidden_size = int(full.get("embed_dim", 192))
        self.patch_size = int(full.get("patch_size", 16))
        self.tubelet_size = int(full.get("tubelet_size", 1))
        super().__init__(**kwargs)

    @classmethod
    def from_backbone(cls, backbone: torch.nn.Module, id2label: Mapping[int, str] | None = None) -> VideoMAPConfig:
        """The config of a model built by ``videomap.create_model``; ``id2label`` names its classes
        (default ``LABEL_i``; its length must match the classifier)."""
        config = dict(getattr(backbone, "model_config", None) or {})
        if "name" not in config:
            raise ValueError("backbone: expected a model built by videomap.create_model (it has no model_config)")
        num_classes = int(config.pop("num_classes", 0) or 0)
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
        elif len(id2label) != num_classes:
            raise ValueError(f"id2label: {len(id2label)} names for a classifier with {num_classes} outputs")
        id2label = {int(k): str(v) for k, v in id2label.items()}
        return cls(backbone=config.pop("name"), num_frames=config.pop("num_frames"),
                   image_size=config.pop("img_size"), backbone_kwargs=config, id2label=id2label,
                   label2id={v: k for k, v in id2label.items()})


class VideoMAPPreTrainedModel(PreTrainedModel):
    """Shared plumbing: the registry backbone, input layout, gradient checkpointing."""

    config_class = VideoMAPConfig
    base_model_prefix = "videomap"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _num_classes = 0  # classifier outputs the backbone is built with

    def __init__(self, config: VideoMAPConfig) -> None:
        super().__init__(config)
        num_classes = (config.num_labels or 0) if self._num_classes is None else self._num_classes
        self.backbone = create_model(config.backbone, num_classes=num_classes, num_frames=config.num_frames,
                                     img_size=config.image_size, **config.backbone_kwargs)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Keep the registry's own initialisation (done in the backbone's constructor)."""

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Any = checkpoint,
                                    every_n_layers: int = 1) -> None:
        """transformers' switch mapped onto the backbone's own (every block recomputed in backward)."""
        self.backbone.set_grad_checkpointing(enable)

    @classmethod
    def from_backbone(cls, backbone: torch.nn.Module, id2label: Mapping[int, str] | None = None):
        """Wrap a model built by ``videomap.create_model``, weights included (a classifier head is
        dropped for :class:`VideoMAPModel`)."""
        model = cls(VideoMAPConfig.from_backbone(backbone, id2label))
        state = backbone.state_dict()
        if cls._num_classes == 0:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        model.backbone.load_state_dict(state, strict=True)
        return model

    def _video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` as is; VideoMAE's ``(B, T, C, H, W)`` when dim 1 is not the channel
        count but dim 2 is; an image ``(B, C, H, W)`` as a clip of one tubelet."""
        b = self.backbone
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values: expected a tensor (B, {b.in_chans}, T, H, W), "
                             f"got {type(pixel_values).__name__}")
        if pixel_values.ndim == 4:
            return pixel_values.unsqueeze(2).expand(-1, -1, b.tubelet_size, -1, -1)
        if pixel_values.ndim == 5 and pixel_values.shape[1] != b.in_chans and pixel_values.shape[2] == b.in_chans:
            return pixel_values.transpose(1, 2)
        return pixel_values  # the backbone checks it and names the expected layout

    def _run(self, pixel_values: torch.Tensor, output_hidden_states: bool | None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Normalised output tokens and, when asked, the embeddings plus the stream after every block."""
        b = self.backbone
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        x = b.embed(self._video(pixel_values))
        take = range(len(b.block_names())) if output_hidden_states else ()
        stream, streams = b.run_blocks(x, take=take)
        return b.final_norm(stream), ((x, *streams) if output_hidden_states else None)


class VideoMAPModel(VideoMAPPreTrainedModel):
    """The backbone without a classifier, for feature extraction.

    ``forward(pixel_values)``: videos ``(B, 3, T, H, W)`` (or VideoMAE's ``(B, T, 3, H, W)``) or
    images ``(B, 3, H, W)``. ``last_hidden_state``: the normalised output ``(B, 1 + T'*h*w, d)``,
    cls token first; ``pooler_output``: what the classifier would read (the cls token, or the mean
    of the patch tokens for ``global_pool="avg"``); ``hidden_states`` (``output_hidden_states=True``):
    the embeddings and the residual stream after every block, before the final norm.
    """

    _num_classes = 0
    _keys_to_ignore_on_load_unexpected = [r"backbone\.head\."]  # features from a classifier's directory

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        last, hidden = self._run(pixel_values, output_hidden_states)
        pooled = self.backbone.forward_head(last, pre_logits=True)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if not return_dict:
            return (last, pooled) + ((hidden,) if hidden is not None else ())
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden)


class VideoMAPForVideoClassification(VideoMAPPreTrainedModel):
    """The backbone with its classifier (``config.num_labels`` outputs): the logits are the
    registry model's, so the top-1 equals ``videomap evaluate``'s single-view prediction on the
    same clip. ``labels`` give a loss by ``config.problem_type`` (cross-entropy by default)."""

    _num_classes = None  # config.num_labels

    def __init__(self, config: VideoMAPConfig) -> None:
        if not config.num_labels:
            raise ValueError("VideoMAPForVideoClassification: the config has no labels (id2label is empty); "
                             "load an encoder with AutoModel / VideoMAPModel instead")
        super().__init__(config)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> ImageClassifierOutput | tuple:
        last, hidden = self._run(pixel_values, output_hidden_states)
        logits = self.backbone.forward_head(last)
        loss = None if labels is None else self._loss(logits, labels)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if not return_dict:
            out = (logits,) + ((hidden,) if hidden is not None else ())
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.config.problem_type
        if kind is None:
            kind = "regression" if self.config.num_labels == 1 else "single_label_classification"
        if kind == "regression":
            return torch.nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        if kind == "multi_label_classification":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return torch.nn.functional.cross_entropy(logits.float(), labels.long())


def register_with_transformers() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForVideoClassification`` /
    ``AutoVideoProcessor`` resolve model type ``videomap`` in this process (no
    ``trust_remote_code``); safe to call twice."""
    # the module's class: ``transformers.AutoVideoProcessor`` is a placeholder without torchvision,
    # though nothing here needs torchvision
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from ..data.video_processor import VideoMAPVideoProcessor

    AutoConfig.register(MODEL_TYPE, VideoMAPConfig, exist_ok=True)
    AutoModel.register(VideoMAPConfig, VideoMAPModel, exist_ok=True)
    AutoModelForVideoClassification.register(VideoMAPConfig, VideoMAPForVideoClassification, exist_ok=True)
    AutoVideoProcessor.register(VideoMAPConfig, VideoMAPVideoProcessor, exist_ok=True)


# The modules an exported directory carries for trust_remote_code=True. transformers copies them
# into its module cache and imports them; each subclasses the class of this package under the same
# name, so its registration and re-saving stay on the subclass (and the copies need nothing but
# ``videomap`` installed).
_HEADER = ('"""videomap {what} for transformers\' trust_remote_code=True. Written by `videomap export\n'
           '--format hf`; needs the videomap package installed (pip install \'videomap-torch[hf]\')."""\n\n')
REMOTE_CODE_FILES: dict[str, str] = {
    "configuration_videomap.py": _HEADER.format(what="configuration") + (
        "from videomap.models.hf import VideoMAPConfig as _VideoMAPConfig\n\n\n"
        "class VideoMAPConfig(_VideoMAPConfig):\n    pass\n"),
    "modeling_videomap.py": _HEADER.format(what="models") + (
        "from videomap.models.hf import VideoMAPForVideoClassification as _VideoMAPForVideoClassification\n"
        "from videomap.models.hf import VideoMAPModel as _VideoMAPModel\n\n"
        "from .configuration_videomap import VideoMAPConfig\n\n\n"
        "class VideoMAPModel(_VideoMAPModel):\n    config_class = VideoMAPConfig\n\n\n"
        "class VideoMAPForVideoClassification(_VideoMAPForVideoClassification):\n"
        "    config_class = VideoMAPConfig\n"),
    "video_processing_videomap.py": _HEADER.format(what="video processor") + (
        "from videomap.data.video_processor import VideoMAPVideoProcessor as _VideoMAPVideoProcessor\n\n\n"
        "class VideoMAPVideoProcessor(_VideoMAPVideoProcessor):\n    pass\n"),
}
AUTO_MAP = {
    "AutoConfig": "configuration_videomap.VideoMAPConfig",
    "AutoModel": "modeling_videomap.VideoMAPModel",
    "AutoModelForVideoClassification": "modeling_videomap.VideoMAPForVideoClassification",
}
PROCESSOR_AUTO_MAP = {"AutoVideoProcessor": "video_processing_videomap.VideoMAPVideoProcessor"}


def write_remote_code(directory: str | os.PathLike) -> list[str]:
    """Write the remote-code modules into ``directory``; returns their paths."""
    from ..io import write_text

    paths = []
    for name, text in REMOTE_CODE_FILES.items():
        paths.append(os.path.join(os.fspath(directory), name))
        write_text(paths[-1], text)
    return paths
