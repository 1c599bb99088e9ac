"""VideoLLM: a LLaVA-style Video LLM around any Hugging Face causal LM.

Visual tokens enter the LM as input embeddings: every ``<video>`` / ``<image>`` placeholder (one
negative id in ``input_ids``, see :mod:`videomap.llm.constants`) is replaced by the projected
encoder tokens of its video or image, and the LM runs on ``inputs_embeds``. Working at the
embedding level is what lets any ``AutoModelForCausalLM`` serve unchanged: no new vocabulary
entries, no model-specific code, and ``generate()`` is the LM's own.

Layout of a batch after expansion: training and scoring pad on the right (positions of real
tokens start at 0 without position ids); generation pads on the left, so every prompt ends where
the new tokens begin, and ``generate`` derives position ids from the attention mask.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, VIDEO_PLACEHOLDER, VIDEO_TOKEN_INDEX
from .projector import build_projector, check_projector_name
from .vision import VisionTower, build_backbone

if TYPE_CHECKING:
    from transformers.modeling_outputs import CausalLMOutputWithPast

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "DEFAULT_MAX_NEW_TOKENS", "LLM_DTYPES", "STAGES", "LlmDtype", "LoraOptions", "Stage",
           "VideoLLM", "VideoLLMConfig"]

CONFIG_FILE = "videomap_llm.json"
PROJECTOR_FILE = "projector.safetensors"
LlmDtype = Literal["float32", "bfloat16", "float16"]
LLM_DTYPES = {name: getattr(torch, name) for name in typing.get_args(LlmDtype)}
Stage = Literal["align", "instruct"]
STAGES: tuple[str, ...] = typing.get_args(Stage)
DEFAULT_MAX_NEW_TOKENS = 128  # generate() and chat: room for a sentence or two


@dataclass
class LoraOptions:
    """LoRA adapters on the LM in the instruct stage (``peft``); the defaults are LLaVA-1.5's recipe
    (r=128, alpha=256 on every linear layer of the LM)."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every Linear layer of the LM (LLaVA's choice)

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError(f"r and alpha must be >= 1, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def peft_kwargs(self) -> dict[str, Any]:
        """These options as ``peft.LoraConfig`` arguments."""
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": list(self.target_modules) if self.target_modules else "all-linear"}


DEFAULT_LORA = LoraOptions().peft_kwargs()


@dataclass
class VideoLLMConfig:
    """What to build; JSON-serialisable (saved as ``videomap_llm.json``). See docs/llm.md.

    Restoring a saved model under a job (:func:`videomap.tasks.common.restore_config`): the
    :attr:`RUNTIME_FIELDS` may differ from the saved values, the :attr:`SOURCE_FIELDS` name where
    weights came from (the saved directory holds its own), every other field is architecture and
    must match. A new field therefore counts as architecture unless it is listed here.
    """

    language_model: str  # AutoModelForCausalLM directory or hub id
    tokenizer: str | None = None  # default: language_model
    local_files_only: bool = True  # never download unless asked to
    llm_dtype: LlmDtype = "float32"
    video_encoder: str = "videomap_middle"
    video_checkpoint: str | None = None
    video_overrides: dict[str, Any] = field(default_factory=dict)
    image_encoder: str | None = None  # None: images go through the video encoder at T=1
    image_checkpoint: str | None = None
    image_overrides: dict[str, Any] = field(default_factory=dict)
    num_frames: int = 8
    img_size: int = 224
    feature_layer: int = -1
    use_cls: bool = False
    spatial_pool: int = 1
    temporal_pool: int = 1
    projector: str = "mlp2x_gelu"  # LLaVA-1.5's 2-layer MLP; "linear" or any "mlp<N>x_gelu"

    # how the model is loaded and the clip size / token pooling (the projector acts per token and
    # position tables are resized)
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"local_files_only", "llm_dtype", "num_frames", "img_size", "spatial_pool", "temporal_pool"})
    # where the weights came from: a saved model carries its encoders (and its LM once trained)
    SOURCE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"language_model", "tokenizer", "video_checkpoint", "image_checkpoint"})
    # the key this field had before it was renamed (still read from saved models)
    LEGACY_KEYS: ClassVar[dict[str, str]] = {"llm": "language_model"}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, require_language_model: bool = True) -> None:
        """Check every field; ``require_language_model=False`` lets a job leave the LM to
        ``init_from``."""
        from ..models import list_models

        if self.language_model is not None or require_language_model:
            if not isinstance(self.language_model, (str, os.PathLike)) or not os.fspath(self.language_model):
                raise ValueError(f"language_model: expected a causal LM directory or hub id, got "
                                 f"{self.language_model!r}")
            self.language_model = os.fspath(self.language_model)
        for name in ("tokenizer", "video_checkpoint", "image_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name}: expected a path or None, got {value!r}")
            setattr(self, name, None if value is None else os.fspath(value))
        if self.llm_dtype not in LLM_DTYPES:
            raise ValueError(f"llm_dtype: expected one of {', '.join(LLM_DTYPES)}, got {self.llm_dtype!r}")
        names = list_models()
        if self.video_encoder not in names:
            raise ValueError(f"video_encoder: unknown encoder {self.video_encoder!r}; choices: {', '.join(names)}")
        if self.image_encoder is not None and self.image_encoder not in names:
            raise ValueError(f"image_encoder: unknown encoder {self.image_encoder!r}; choices: None (the video "
                             f"encoder at T=1), {', '.join(names)}")
        for name in ("video_overrides", "image_overrides"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}: expected a mapping of create_model arguments, got {getattr(self, name)!r}")
        for name in ("num_frames", "img_size", "spatial_pool", "temporal_pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if isinstance(self.feature_layer, bool) or not isinstance(self.feature_layer, int):
            raise ValueError(f"feature_layer: expected an integer block index (-1: last), got {self.feature_layer!r}")
        for name in ("use_cls", "local_files_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        check_projector_name(self.projector)

    def to_dict(self) -> dict[str, Any]:
        """The model fields as plain values (a job section that extends this class leaves its own out)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(VideoLLMConfig)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoLLMConfig:
        """Build from a mapping (a saved ``config``); an unknown key is an error listing the valid
        ones. Keys of earlier versions (:attr:`LEGACY_KEYS`) are read under their new name."""
        data = {cls.LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown VideoLLMConfig key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**data)


def _check_long_2d(arg: str, t: torch.Tensor | None, shape: tuple[int, ...] | None = None) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype.is_floating_point:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{arg}: expected an integer tensor of shape (B, L), got {got}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{arg}: expected shape {shape} (that of input_ids), got {tuple(t.shape)}")


class VideoLLM(nn.Module):
    """Video/image encoders -> shared projector -> causal LM.

    Build with :meth:`from_config` (loads everything named in a :class:`VideoLLMConfig`) or
    :meth:`from_pretrained` (a directory written by :meth:`save_pretrained`). The encoders start
    frozen and in eval mode; choose what trains with :meth:`set_trainable`.
    """

    def __init__(self, config: VideoLLMConfig, llm: nn.Module, tokenizer: Any, video_tower: VisionTower,
                 projector: nn.Module, image_tower: VisionTower | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.llm = llm
        self.video_tower = video_tower
        if image_tower is not None and image_tower is not video_tower:
            # registered under the name of the ``image_tower`` property (add_module refuses names
            # that already resolve to an attribute)
            self._modules["image_tower"] = image_tower
        self.projector = projector
        # "source" (LM as loaded from config.language_model), "full" (weights changed), "lora"
        self.llm_state = "source"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: VideoLLMConfig | dict[str, Any]) -> VideoLLM:
        """Load tokenizer, LM and encoders and build a fresh projector."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = config if isinstance(config, VideoLLMConfig) else VideoLLMConfig.from_dict(config)
        if cfg.language_model is None:
            raise ValueError("language_model: expected the causal LM to build on (a directory or hub id), got None")
        tok_src = cfg.tokenizer or cfg.language_model
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_src, local_files_only=cfg.local_files_only)
        except OSError as e:
            raise OSError(f"tokenizer: cannot load {tok_src!r} (local_files_only={cfg.local_files_only}): {e}") from e
        if tokenizer.pad_token_id is None:
            # Llama/Vicuna tokenizers ship without a pad token; LLaVA pads with unk (or eos)
            tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
            log.info("tokenizer has no pad token; padding with %r", tokenizer.pad_token)
        try:
            llm = AutoModelForCausalLM.from_pretrained(cfg.language_model, dtype=LLM_DTYPES[cfg.llm_dtype],
                                                       local_files_only=cfg.local_files_only)
        except OSError as e:
            raise OSError(f"language_model: cannot load {cfg.language_model!r} "
                          f"(local_files_only={cfg.local_files_only}): {e}") from e
        if llm.generation_config is not None and llm.generation_config.pad_token_id is None:
            llm.generation_config.pad_token_id = tokenizer.pad_token_id

        tower_kw = dict(feature_layer=cfg.feature_layer, use_cls=cfg.use_cls, spatial_pool=cfg.spatial_pool,
                        temporal_pool=cfg.temporal_pool)
        video_backbone = build_backbone(cfg.video_encoder, num_frames=cfg.num_frames, img_size=cfg.img_size,
                                        checkpoint=cfg.video_checkpoint, overrides=cfg.video_overrides)
        video_tower = VisionTower(video_backbone, **tower_kw)
        image_tower = None
        if cfg.image_encoder is not None:
            overrides = dict(cfg.image_overrides)
            frames = overrides.pop("num_frames", overrides.get("tubelet_size", 1))
            image_backbone = build_backbone(cfg.image_encoder, num_frames=frames, img_size=cfg.img_size,
                                            checkpoint=cfg.image_checkpoint, overrides=overrides,
                                            what="image_encoder")
            image_tower = VisionTower(image_backbone, **tower_kw)
            if image_tower.hidden_size != video_tower.hidden_size:
                raise ValueError(f"image_encoder: the shared projector needs equal feature widths, but "
                                 f"{cfg.image_encoder} has {image_tower.hidden_size} and {cfg.video_encoder} "
                                 f"has {video_tower.hidden_size}")
        d_llm = llm.get_input_embeddings().embedding_dim
        projector = build_projector(cfg.projector, video_tower.hidden_size, d_llm)
        model = cls(cfg, llm, tokenizer, video_tower, projector, image_tower)
        model.eval()
        return model

    @property
    def image_tower(self) -> VisionTower:
        """The image encoder: a separate tower, or the video tower (images as one-tubelet clips)."""
        tower = self._modules.get("image_tower")
        return tower if tower is not None else self.video_tower

    @property
    def llm_hidden_size(self) -> int:
        return self.llm.get_input_embeddings().embedding_dim

    # ------------------------------------------------------------------ visual tokens
    def visual_tokens(self, modality: str) -> int:
        """Tokens one placeholder expands to for the configured clip size ("video" or "image")."""
        if modality == "video":
            return self.video_tower.num_tokens(self.config.num_frames, self.config.img_size)
        if modality == "image":
            return self.image_tower.num_tokens(1, self.config.img_size)
        raise ValueError(f"modality: expected 'video' or 'image', got {modality!r}")

    def _project(self, feats: torch.Tensor) -> torch.Tensor:
        weight = next(self.projector.parameters())
        if not torch.is_autocast_enabled(weight.device.type):
            feats = feats.to(weight.dtype)
        emb = self.llm.get_input_embeddings().weight
        # under autocast the projector answers in bf16, and a bf16 LM has bf16 embeddings: one dtype
        return self.projector(feats.to(weight.device)).to(emb.dtype)

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """(Nv, 3, T, H, W) -> (Nv, K, D_llm), in the LM's embedding dtype."""
        return self._project(self.video_tower.encode_video(videos))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(Ni, 3, H, W) -> (Ni, K_img, D_llm), in the LM's embedding dtype."""
        return self._project(self.image_tower.encode_image(images))

    # ------------------------------------------------------------------ sequence building
    def prepare_inputs_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                              labels: torch.Tensor | None = None, videos: torch.Tensor | None = None,
                              images: torch.Tensor | None = None, padding_side: str = "right",
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Expand placeholders into visual tokens: ``(inputs_embeds, attention_mask, labels)``.

        Padding in the input (``attention_mask == 0``) is removed first, so left- or right-padded
        batches both work; the output is padded again on ``padding_side``. Visual tokens and
        padding get ``IGNORE_INDEX`` labels.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        _check_long_2d("input_ids", input_ids)
        shape = tuple(input_ids.shape)
        _check_long_2d("attention_mask", attention_mask, shape)
        _check_long_2d("labels", labels, shape)
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        input_ids = input_ids.to(device)
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
            else attention_mask.to(device).bool()
        is_video = (input_ids == VIDEO_TOKEN_INDEX) & keep
        is_image = (input_ids == IMAGE_TOKEN_INDEX) & keep
        other_negative = (input_ids < 0) & keep & ~is_video & ~is_image
        if bool(other_negative.any()):
            raise ValueError(f"input_ids: negative id {int(input_ids[other_negative][0])} is neither "
                             f"VIDEO_TOKEN_INDEX ({VIDEO_TOKEN_INDEX}) nor IMAGE_TOKEN_INDEX ({IMAGE_TOKEN_INDEX})")
        media, media_count = {}, {}
        for arg, mask, pixels, placeholder, encode in (
                ("videos", is_video, videos, VIDEO_PLACEHOLDER, self.encode_videos),
                ("images", is_image, images, IMAGE_PLACEHOLDER, self.encode_images)):
            wanted = int(mask.sum())
            given = 0 if pixels is None else (len(pixels) if isinstance(pixels, torch.Tensor) else -1)
            if given < 0:
                raise ValueError(f"{arg}: expected a tensor or None, got {type(pixels).__name__}")
            if wanted != given:
                raise ValueError(f"{arg}: the prompts hold {wanted} {placeholder} placeholder(s) but {given} "
                                 f"{arg} were given")
            media[arg] = iter(encode(pixels)) if wanted else iter(())
            media_count[arg] = wanted

        text = embed(input_ids.clamp(min=0))
        seqs, labs = [], []
        for b in range(shape[0]):
            row_keep = keep[b]
            ids, emb = input_ids[b][row_keep], text[b][row_keep]
            lab = labels[b].to(device)[row_keep] if labels is not None else None
            cuts = ((ids == VIDEO_TOKEN_INDEX) | (ids == IMAGE_TOKEN_INDEX)).nonzero().flatten().tolist()
            parts, part_labels, start = [], [], 0
            for pos in cuts:
                feats = next(media["videos"] if int(ids[pos]) == VIDEO_TOKEN_INDEX else media["images"])
                parts += [emb[start:pos], feats.to(emb.dtype)]
                if lab is not None:
                    part_labels += [lab[start:pos], lab.new_full((feats.shape[0],), IGNORE_INDEX)]
                start = pos + 1
            parts.append(emb[start:])
            seqs.append(torch.cat(parts))
            if lab is not None:
                part_labels.append(lab[start:])
                labs.append(torch.cat(part_labels))

        trained = [p for p in self.projector.parameters() if p.requires_grad]
        if not any(media_count.values()) and trained and torch.is_grad_enabled():
            # A batch without media leaves the projector out of the graph, and DDP would wait
            # forever for its gradients; a zero-weighted term keeps it in (LLaVA splices in an
            # empty slice of features for the same reason).
            seqs[0] = seqs[0] + (0.0 * sum(p.sum() for p in trained)).to(seqs[0].dtype)

        length = max(s.shape[0] for s in seqs)
        out = text.new_zeros(shape[0], length, text.shape[-1])
        mask_out = torch.zeros(shape[0], length, dtype=torch.long, device=device)
        labels_out = torch.full((shape[0], length), IGNORE_INDEX, dtype=torch.long, device=device) \
            if labels is not None else None
        for b, s in enumerate(seqs):
            n = s.shape[0]
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            out[b, sl] = s
            mask_out[b, sl] = 1
            if labels_out is not None:
                labels_out[b, sl] = labs[b]
        return out, mask_out, labels_out

    # ------------------------------------------------------------------ LM calls
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, videos: torch.Tensor | None = None,
                images: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        """The LM's output on the expanded sequence; ``loss`` (when ``labels`` are given) is the
        mean cross-entropy over the tokens whose label is not ``IGNORE_INDEX`` (the answers)."""
        embeds, mask, labels = self.prepare_inputs_embeds(input_ids, attention_mask, labels, videos, images)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False, return_dict=True)

    def answer_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                        videos: torch.Tensor | None = None, images: torch.Tensor | None = None) -> torch.Tensor:
        """Per sample, the summed log-probability of its label tokens (``labels != IGNORE_INDEX``)
        given everything before them: the score of a candidate answer for multiple choice."""
        if labels is None:
            raise ValueError("labels: expected the (B, L) label tensor marking the answer tokens, got None")
        embeds, mask, labels = self.prepare_inputs_embeds(input_ids, attention_mask, labels, videos, images)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False, return_dict=True).logits
        target = labels[:, 1:]
        valid = target != IGNORE_INDEX
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * valid).sum(1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 videos: torch.Tensor | None = None, images: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> torch.Tensor:
        """New tokens only, ``(B, N)`` (rows that stop early are padded with ``pad_token_id``).

        Greedy unless ``do_sample=True`` is passed; ``max_new_tokens`` defaults to
        ``DEFAULT_MAX_NEW_TOKENS``. Prompts may come padded either way: they are re-padded on the
        left so that each continues right where its prompt ends.
        """
        embeds, mask, _ = self.prepare_inputs_embeds(input_ids, attention_mask, None, videos, images,
                                                     padding_side="left")
        generate_kwargs.setdefault("do_sample", False)
        if "max_new_tokens" not in generate_kwargs and "max_length" not in generate_kwargs:
            generate_kwargs["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        if self.tokenizer.eos_token_id is not None:
            generate_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        # with inputs_embeds alone the LM has no prompt ids to echo: the result holds the new tokens only
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute LM (and trainable encoder) activations in backward to save memory.

        Non-reentrant by default: the LM's inputs are embeddings that may not need gradients
        (a frozen LM under LoRA), which the reentrant variant would silently cut off.
        """
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):  # the name since transformers 5.x
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        for tower in self._towers():
            if not tower.frozen:
                tower.backbone.set_grad_checkpointing(True)

    def _towers(self) -> list[VisionTower]:
        return [self.video_tower] + ([self.image_tower] if self.image_tower is not self.video_tower else [])

    # ------------------------------------------------------------------ training stages
    def set_trainable(self, stage: str, lora: dict | None = None, train_encoder: bool = False) -> dict[str, int]:
        """Choose the trained parameters: ``align`` trains the projector only (LLaVA stage 1);
        ``instruct`` the projector and the LM (stage 2) -- all LM weights, or LoRA adapters when
        ``lora`` (``peft.LoraConfig`` arguments over LLaVA-1.5's r=128, alpha=256, all linear
        layers) is given. Encoders stay frozen unless ``train_encoder``. Returns parameter counts.
        """
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
        if lora is not None and stage != "instruct":
            raise ValueError(f"lora: adapters train in stage 'instruct' only, got stage {stage!r} with lora={lora}")
        if lora is not None and not isinstance(lora, dict):
            raise ValueError(f"lora: expected a mapping of peft.LoraConfig arguments, got {lora!r}")
        for p in self.parameters():
            p.requires_grad_(False)
        for tower in self._towers():
            tower.set_frozen(not train_encoder)
        for p in self.projector.parameters():
            p.requires_grad_(True)
        if stage == "instruct":
            if lora is not None:
                self._attach_lora(lora)
            else:
                if self.llm_state == "lora":
                    log.info("merging the LoRA adapters into the LM weights before full training")
                    self.llm = self.llm.merge_and_unload()
                for p in self.llm.parameters():
                    p.requires_grad_(True)
                self.llm_state = "full"
        self.train(self.training)  # modules peft just created (dropout) follow the model's mode
        counts = {"trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
                  "total": sum(p.numel() for p in self.parameters())}
        log.info("stage %s%s: %d of %d parameters trainable", stage, " (LoRA)" if lora is not None else "",
                 counts["trainable"], counts["total"])
        return counts

    def _attach_lora(self, lora: dict) -> None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:
            raise ImportError("LoRA needs the peft package: pip install peft (or train the full LM: lora=None)") from e
        if self.llm_state == "lora":  # adapters already attached (e.g. loaded): train them further
            for name, p in self.llm.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
            return
        settings = {**DEFAULT_LORA, **lora, "task_type": "CAUSAL_LM"}
        self.llm = get_peft_model(self.llm, LoraConfig(**settings))
        self.llm_state = "lora"

    def no_weight_decay(self) -> set[str]:
        """Encoder tokens and position tables (the engine also exempts every 1-D tensor)."""
        out: set[str] = set()
        for tower in self._towers():
            prefix = "video_tower" if tower is self.video_tower else "image_tower"
            out |= {f"{prefix}.backbone.{n}" for n in tower.backbone.no_weight_decay()}
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write a directory :meth:`from_pretrained` restores without the training run's files.

        Always: the projector and the encoders (``video_encoder/``, ``image_encoder/``, each a
        ``save_pretrained`` directory). The LM only when its weights changed: the full LM and the
        tokenizer under ``llm/``, or the LoRA adapter under ``llm_adapter/``; an LM that was not
        trained stays referenced by ``config.language_model``. ``videomap_llm.json`` is written last, so a
        directory without it is an unfinished save.
        """
        from ..io import save_safetensors, write_json

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        save_safetensors(self.projector.state_dict(), os.path.join(directory, PROJECTOR_FILE),
                         metadata={"format": "pt"})
        self.video_tower.backbone.save_pretrained(os.path.join(directory, "video_encoder"))
        if self.image_tower is not self.video_tower:
            self.image_tower.backbone.save_pretrained(os.path.join(directory, "image_encoder"))
        if self.llm_state == "full":
            self.llm.save_pretrained(os.path.join(directory, "llm"))
            self.tokenizer.save_pretrained(os.path.join(directory, "llm"))
        elif self.llm_state == "lora":
            self.llm.save_pretrained(os.path.join(directory, "llm_adapter"))
        config = self.config.to_dict()
        for key in ("language_model", "tokenizer"):  # a local source stays findable from another working directory
            if config[key] and os.path.isdir(config[key]):
                config[key] = os.path.abspath(config[key])
        write_json(os.path.join(directory, CONFIG_FILE), {"config": config, "llm_weights": self.llm_state})
        log.info("saved Video-LLM to %s (LM: %s)", directory, self.llm_state)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **config_overrides: Any) -> VideoLLM:
        """Restore a :meth:`save_pretrained` directory; ``config_overrides`` (VideoLLMConfig
        fields, e.g. ``llm_dtype="bfloat16"``) win over the saved values."""
        from ..io import read_saved_json

        directory = os.fspath(directory)
        path = os.path.join(directory, CONFIG_FILE)
        saved = read_saved_json(directory, CONFIG_FILE, "VideoLLM.save_pretrained")
        state = saved.get("llm_weights", "source")
        if state not in ("source", "full", "lora"):
            raise ValueError(f"{path}: llm_weights: expected 'source', 'full' or 'lora', got {state!r}")
        data = VideoLLMConfig.from_dict(saved["config"]).to_dict()
        data["video_checkpoint"] = os.path.join(directory, "video_encoder")
        if data.get("image_encoder") is not None:
            data["image_checkpoint"] = os.path.join(directory, "image_encoder")
        if state == "full":
            data["language_model"] = data["tokenizer"] = os.path.join(directory, "llm")
        data.update(config_overrides)
        model = cls.from_config(VideoLLMConfig.from_dict(data))

        from ..io import load_safetensors

        model.projector.load_state_dict(load_safetensors(os.path.join(directory, PROJECTOR_FILE)))
        if state == "lora":
            try:
                from peft import PeftModel
            except ImportError as e:
                raise ImportError(f"{directory} holds a LoRA adapter (llm_adapter/); loading it needs the peft "
                                  "package: pip install peft") from e
            model.llm = PeftModel.from_pretrained(model.llm, os.path.join(directory, "llm_adapter"))
        model.llm_state = state
        model.eval()
        return model
