"""VideoTextModel: a registry video encoder and a BERT-class text encoder trained UMT-style.

VideoMamba's multi-modal models (paper §4.4; code ``videomamba/video_mm/``) follow UMT's second
stage: a video encoder and BERT-base whose last 3 layers gain cross-attention to the video, trained
with four losses on video-text (and image-text) pairs:

- **VTC**: contrastive loss between the pooled video feature and the ``[CLS]`` text feature in a
  shared ``embed_dim`` space, with a learned temperature, over the batch of all processes;
- **VTM**: a 2-way match head on the fused ``[CLS]`` for positives, a hard negative video per text
  and a hard negative text per video, drawn from the VTC similarities;
- **MLM**: masked words predicted by the fusion layers, which see the video;
- **UTA**: the visible video tokens aligned to a frozen teacher (CLIP in the paper).

Training input is masked (80% of a video's tokens, 50% of an image's, attention-guided by default):
the encoder runs on the visible tokens only, which is what makes the stage cheap. ``masked=False``
(and :meth:`encode_video`) uses every token: the paper's short unmasked tuning phase and evaluation.

Video pooling follows the authors' ``pool_type="cls+avg"``: ``LayerNorm(cls + mean(patch tokens))``
then the projection; the fusion layers attend to the patch tokens (the cls token is left out, as
there). Images are 1-frame clips ``(B, 3, 1, H, W)``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_INDEX
from ..data.media import TestGeometry
from ..models import VideoBackbone, create_model, list_models, load_pretrained
from ..models.base import WrapsBackbone
from ..models.weights import read_checkpoint
from ..pretrain.masking import MASK_TYPES, MaskGenerator, MaskType
from ..pretrain.model import ALIGN_STUDENTS, AlignStudent, align_teacher_time
from ..pretrain.objectives import AlignHead
from ..pretrain.teachers import CLIP_TARGETS, ClipTarget, Teacher, TeacherOutput, as_teacher, build_teacher
from .losses import TEMP_RANGE, GatherGrad, mlm_mask, sample_negatives, uta_loss, video_embedding, vtc_loss, vtm_labels
from .text import TextSide, load_text_model

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "LOSS_NAMES", "VideoTextConfig", "VideoTextModel"]

CONFIG_FILE = "videomap_vl.json"
HEADS_FILE = "heads.safetensors"
TEXT_DIR = "text"
VIDEO_DIR = "video_encoder"
LOSS_NAMES = ("vtc", "vtm", "mlm", "uta")
PIXEL_TEACHERS = ("pixel", "pixel_motion")
# the choice-valued fields and their choices, checked in validate() (UTA reads the student stream at
# the points the masked pre-training's alignment offers)
_CHOICES = {"eval_geometry": get_args(TestGeometry), "vtc_gather": get_args(GatherGrad),
            "uta_student": ALIGN_STUDENTS}


@dataclass
class VideoTextConfig:
    """What to build; JSON-serialisable (saved as ``videomap_vl.json``).

    Defaults are the authors' VideoMamba-M 5M pre-training (``video_mm/exp_pt/videomamba_middle_5m``):
    BERT-base with its last 3 layers as fusion layers, 512-d shared space, temperature 0.07,
    all four losses at weight 1, MLM probability 0.5, hard negatives, attention masking of 80% of a
    video's and 50% of an image's tokens.

    ``uta_teacher``: ``"pixel"`` / ``"pixel_motion"`` (:class:`videomap.pretrain.PixelTeacher`, no
    weights), ``"none"`` (no uta loss, no attention masking) or a CLIP directory / hub id
    (:class:`videomap.pretrain.CLIPTeacher`, ``uta_clip_target`` picks its tokens). The default is
    ``"pixel"`` so that a configuration runs offline; the paper's teacher is CLIP ViT-B/16. The
    unmasked tuning phase (the authors' ``*_unmasked`` configs) sets ``uta=0``, the mask types to
    ``"none"`` and ``uta_teacher="none"``, and trains with ``masked=False``.

    Released-run choices (the defaults keep this library's behaviour; ``configs/vl`` set the
    released one; docs/paper_tables.md lists them with their source lines):

    - ``eval_geometry``: test frames resized whole to ``img_size`` square (``"full"``, the
      authors' ``test_transform``) or short-side resized and centre-cropped (``"center_crop"``);
    - ``vtc_gather``: ``"full"`` gives each process's features the gradient of the whole gathered
      loss (single-process equivalent); ``"released"`` keeps only the local slice, as the authors'
      ``AllGather``, so under DDP the encoders' VTC gradient is ``1/world_size`` of ``"full"``;
    - ``uta_student``: the student tokens UTA aligns: ``"output"`` (after the final norm) or
      ``"pre_last_block"`` (the un-normalised residual stream entering the last block, the
      released point: the last mixer and the final norm get no UTA gradient);
    - ``keep_temporal``: with every token visible (the unmasked phase, evaluation; or a tube
      mask) embed each frame, ``LayerNorm(cls + frame mean)``, and average the per-frame cosine
      similarities, as the authors' ``keep_temporal=True``; False pools the whole clip;
    - ``image_temporal_pos``: add the temporal position embedding to images (1-frame clips);
      the released code does not (``use_image``).

    Restoring a saved model under a job (:func:`videomap.tasks.common.restore_config`): the
    :attr:`RUNTIME_FIELDS` may differ from the saved values, the :attr:`SOURCE_FIELDS` name where
    weights came from (the saved directory holds its own), every other field is architecture and
    must match. A new field therefore counts as architecture unless it is listed here.
    """

    text_encoder: str
    tokenizer: str | None = None
    local_files_only: bool = True
    video_encoder: str = "videomamba_middle"
    video_checkpoint: str | None = None
    video_overrides: dict[str, Any] = field(default_factory=dict)
    num_frames: int = 8
    img_size: int = 224
    embed_dim: int = 512
    temp_init: float = 0.07
    fusion_layers: int = 3
    max_text_len: int = 32
    vtc: float = 1.0
    vtm: float = 1.0
    mlm: float = 1.0
    uta: float = 1.0
    mlm_prob: float = 0.5
    vtm_hard_negatives: bool = True
    video_mask_type: MaskType = "attention"
    video_mask_ratio: float = 0.8
    image_mask_type: MaskType = "attention"
    image_mask_ratio: float = 0.5
    uta_teacher: str = "pixel"
    uta_clip_target: ClipTarget = "videomamba"
    eval_geometry: TestGeometry = "full"
    vtc_gather: GatherGrad = "full"
    uta_student: AlignStudent = "output"
    keep_temporal: bool = False
    image_temporal_pos: bool = True

    # what a saved model may be run or trained further with: clip size, text length, the losses
    # and their masks, teacher and training signal, the test geometry and how embeddings are
    # pooled and compared (the saved heads and encoders do not depend on them)
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "local_files_only", "num_frames", "img_size", "temp_init", "max_text_len", "vtc", "vtm", "mlm", "uta",
        "mlm_prob", "vtm_hard_negatives", "video_mask_type", "video_mask_ratio", "image_mask_type",
        "image_mask_ratio", "uta_teacher", "uta_clip_target", "eval_geometry", "vtc_gather", "uta_student",
        "keep_temporal", "image_temporal_pos"})
    # where the weights came from: a saved model carries its own copies
    SOURCE_FIELDS: ClassVar[frozenset[str]] = frozenset({"text_encoder", "tokenizer", "video_checkpoint"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, require_text_encoder: bool = True) -> None:
        """Check every field; ``require_text_encoder=False`` lets a job leave the text encoder to
        ``init_from``."""
        for name in ("text_encoder", "tokenizer", "video_checkpoint", "uta_teacher"):
            value = getattr(self, name)
            if value is None and (name in ("tokenizer", "video_checkpoint")
                                  or (name == "text_encoder" and not require_text_encoder)):
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                what = ("'none', 'pixel', 'pixel_motion' or a CLIP directory / hub id" if name == "uta_teacher"
                        else "a path or hub id")
                raise ValueError(f"{name}: expected {what}, got {value!r}")
            setattr(self, name, os.fspath(value))
        names = list_models()
        if self.video_encoder not in names:
            raise ValueError(f"video_encoder: unknown encoder {self.video_encoder!r}; choices: {', '.join(names)}")
        if not isinstance(self.video_overrides, dict):
            raise ValueError(f"video_overrides: expected a mapping of create_model arguments, got "
                             f"{self.video_overrides!r}")
        for name in ("num_frames", "img_size", "embed_dim", "fusion_layers", "max_text_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len: expected at least 2 ([CLS] and [SEP]), got {self.max_text_len}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("local_files_only", "vtm_hard_negatives", "keep_temporal", "image_temporal_pos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        lo, hi = TEMP_RANGE
        if not isinstance(self.temp_init, (int, float)) or not lo <= self.temp_init <= hi:
            raise ValueError(f"temp_init: expected a number in [{lo}, {hi}] (the range the temperature is "
                             f"clamped to), got {self.temp_init!r}")
        for name in LOSS_NAMES:
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"{name}: expected a loss weight >= 0 (0 turns the loss off), got {w!r}")
        if not any(getattr(self, n) > 0 for n in LOSS_NAMES):
            raise ValueError(f"loss weights: at least one of {', '.join(LOSS_NAMES)} must be > 0")
        if not isinstance(self.mlm_prob, (int, float)) or not 0 < self.mlm_prob < 1:
            raise ValueError(f"mlm_prob: expected a probability in (0, 1), got {self.mlm_prob!r}")
        for kind in ("video", "image"):
            mtype, ratio = getattr(self, f"{kind}_mask_type"), getattr(self, f"{kind}_mask_ratio")
            if mtype not in MASK_TYPES:
                raise ValueError(f"{kind}_mask_type: expected one of {', '.join(MASK_TYPES)}, got {mtype!r}")
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
                raise ValueError(f"{kind}_mask_ratio: expected 0 <= ratio < 1, got {ratio!r}")
            if mtype == "attention" and ratio > 0 and self.uta_teacher == "none":
                raise ValueError(f"{kind}_mask_type: attention masking needs a teacher's attention, but "
                                 "uta_teacher is 'none'; choose a teacher or another mask type (random, tube, ...)")
        if self.uta > 0 and self.uta_teacher == "none":
            raise ValueError("uta_teacher: the uta loss (weight > 0) needs a teacher: 'pixel', 'pixel_motion' or a "
                             "CLIP directory / hub id; or set uta to 0")
        if self.uta_clip_target not in CLIP_TARGETS:
            raise ValueError(f"uta_clip_target: expected one of {', '.join(CLIP_TARGETS)}, got "
                             f"{self.uta_clip_target!r}")

    @property
    def needs_teacher(self) -> bool:
        """Whether training uses a teacher: for the uta loss or for attention masking."""
        attention = any(getattr(self, f"{k}_mask_type") == "attention" and getattr(self, f"{k}_mask_ratio") > 0
                        for k in ("video", "image"))
        return self.uta_teacher != "none" and (self.uta > 0 or attention)

    def to_dict(self) -> dict[str, Any]:
        """The model fields as plain values (a job section that extends this class leaves its own out)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(VideoTextConfig)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoTextConfig:
        """Build from a mapping; an unknown key is an error listing the valid ones."""
        if not isinstance(data, dict):
            raise ValueError(f"VideoTextConfig: expected a mapping, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown VideoTextConfig key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**data)


def build_video_encoder(cfg: VideoTextConfig, checkpoint: str | None = None) -> VideoBackbone:
    """A headless registry backbone; a checkpoint is loaded strictly (only the classifier head and
    pre-training heads may be missing), so an encoder never silently keeps random tensors."""
    kwargs = dict(cfg.video_overrides)
    kwargs.setdefault("num_frames", cfg.num_frames)
    kwargs.setdefault("img_size", cfg.img_size)
    kwargs["num_classes"] = 0
    model = create_model(cfg.video_encoder, **kwargs)
    checkpoint = checkpoint if checkpoint is not None else cfg.video_checkpoint
    if checkpoint:
        load_pretrained(model, checkpoint, strict=True)
        log.info("video_encoder: loaded %s from %s", cfg.video_encoder, checkpoint)
    else:
        log.warning("video_encoder: %s has random weights (no video_checkpoint given)", cfg.video_encoder)
    return model


# the stage-1 alignment head in a masked pre-training checkpoint, by the name of its tensor in the
# uta head: the authors' clip_decoder.0 (Linear "head" + LayerNorm "norm", video_mm/models/backbones/
# videomamba/videomamba.py) or this library's video-objective decoder (videomap.pretrain.AlignHead)
STAGE1_UTA_HEADS = (
    {"proj.weight": "clip_decoder.0.head.weight", "proj.bias": "clip_decoder.0.head.bias",
     "norm.weight": "clip_decoder.0.norm.weight", "norm.bias": "clip_decoder.0.norm.bias"},
    {name: f"decoder.{name}" for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")},
)


def load_stage1_uta_head(head: AlignHead, checkpoint: str) -> bool:
    """Start the uta head from the alignment head the masked pre-training trained (the authors'
    video-text runs keep ``clip_decoder`` from that checkpoint rather than a new one). Returns
    whether one was found with the head's shapes; otherwise the head keeps its initialisation."""
    sd = read_checkpoint(checkpoint)
    own = head.state_dict()
    for names in STAGE1_UTA_HEADS:
        if not all(src in sd for src in names.values()):
            continue
        state = {dst: sd[src] for dst, src in names.items()}
        wrong = [f"{names[k]} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if v.shape != own[k].shape]
        if wrong:
            log.warning("%s: its alignment head does not fit the uta head (%s; another teacher width?); "
                        "the uta head starts from scratch", checkpoint, ", ".join(wrong))
            return False
        head.load_state_dict(state)
        log.info("uta head: loaded the stage-1 alignment head (%s) from %s", next(iter(names.values())), checkpoint)
        return True
    return False


def build_uta_teacher(cfg: VideoTextConfig) -> Teacher | None:
    """The frozen teacher named by ``uta_teacher`` (None when training needs none)."""
    if not cfg.needs_teacher:
        return None
    if cfg.uta_teacher in PIXEL_TEACHERS:
        return build_teacher(cfg.uta_teacher)
    return build_teacher("clip", clip_model=cfg.uta_teacher, local_files_only=cfg.local_files_only,
                         clip_target=cfg.uta_clip_target)


class VideoTextModel(WrapsBackbone, nn.Module):
    """Video encoder + BERT-class text/fusion encoder + the heads of the four losses.

    Build with :meth:`from_config` or :meth:`from_pretrained`. The teacher is held outside the
    module tree, so it is neither trained, wrapped by DDP, nor written into checkpoints.
    """

    backbone_attr = "video_encoder"

    def __init__(self, config: VideoTextConfig, video_encoder: VideoBackbone, text: TextSide, tokenizer: Any,
                 teacher: Teacher | None = None, uta_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.video_encoder = video_encoder
        self.text = text
        d_v, d_t = video_encoder.embed_dim, text.hidden_size
        self.pool_norm = nn.LayerNorm(d_v)
        self.vision_proj = nn.Linear(d_v, config.embed_dim)
        self.text_proj = nn.Linear(d_t, config.embed_dim)
        self.itm_head = nn.Linear(d_t, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temp_init)))
        self._teacher: list[Teacher | None] = [teacher]
        if config.uta > 0:
            dim = teacher.feature_dim if teacher is not None else uta_dim
            if not dim:
                raise ValueError("uta: the alignment head needs the teacher's feature width; give a teacher "
                                 "(or uta_dim when the teacher is attached later)")
            self.uta_head = AlignHead(d_v, dim, max_tokens=1 + int(torch.tensor(video_encoder.grid).prod()))
        else:
            self.uta_head = None
        self.maskers = {"video": MaskGenerator(config.video_mask_type, config.video_mask_ratio),
                        "image": MaskGenerator(config.image_mask_type, config.image_mask_ratio)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: VideoTextConfig | dict[str, Any], *, teacher: Teacher | nn.Module | bool = True,
                    uta_dim: int | None = None) -> VideoTextModel:
        """Load the text encoder/tokenizer and the video encoder, build new heads.

        ``teacher``: True builds the one ``uta_teacher`` names (when training needs one); a
        module is used as the teacher; False attaches none (evaluation, or :meth:`set_teacher`
        later; ``uta_dim`` then gives the width of the uta head).
        """
        cfg = config if isinstance(config, VideoTextConfig) else VideoTextConfig.from_dict(config)
        mlm, tokenizer = load_text_model(cfg.text_encoder, cfg.tokenizer, cfg.local_files_only)
        limit = getattr(mlm.config, "max_position_embeddings", None)
        if limit is not None and cfg.max_text_len > limit:
            raise ValueError(f"max_text_len: {cfg.max_text_len} exceeds the {limit} positions of {cfg.text_encoder!r}")
        video = build_video_encoder(cfg)
        text = TextSide(mlm, cfg.fusion_layers, video.embed_dim)
        if teacher is True:
            t = build_uta_teacher(cfg)
        elif teacher is False or teacher is None:
            t = None
        else:
            t = as_teacher(teacher)
        model = cls(cfg, video, text, tokenizer, teacher=t, uta_dim=uta_dim)
        if model.uta_head is not None and cfg.video_checkpoint:
            load_stage1_uta_head(model.uta_head, cfg.video_checkpoint)
        model.freeze_unused()
        model.eval()
        return model

    def unused_parameters(self) -> list[str]:
        """Names of the parameters no enabled loss reaches: the MLM head without mlm, the matching
        head without vtm, the fusion layers without both, the projections and temperature without
        vtc, the video encoder's last block and final norm when only uta trains and reads the
        stream before them. Parameters shared with a used module (the MLM decoder tied to the word
        embeddings) are not listed."""
        cfg = self.config
        parts: list[str] = []
        if cfg.mlm == 0:
            parts.append(f"text.mlm.{self.text.head_name}")
        if cfg.vtm == 0:
            parts.append("itm_head")
        if cfg.vtm == 0 and cfg.mlm == 0:
            layers = [n for n, m in self.named_modules() if any(m is x for x in self.text.layers)]
            parts += ["text.cross", *layers[self.text.num_text_layers:]]
        if cfg.vtc == 0:
            parts += ["pool_norm", "vision_proj", "text_proj", "temp"]
        if cfg.uta_student == "pre_last_block" and cfg.vtc == cfg.vtm == cfg.mlm == 0:
            parts += [f"video_encoder.{n}" for n in self.video_encoder.modules_after_block(-2)]

        def inside(name: str) -> bool:
            return any(name == p or name.startswith(p + ".") for p in parts)

        seen_elsewhere = {id(p) for n, p in self.named_parameters(remove_duplicate=False) if not inside(n)}
        return [n for n, p in self.named_parameters() if inside(n) and id(p) not in seen_elsewhere]

    def freeze_unused(self) -> list[str]:
        """Stop gradients for :meth:`unused_parameters`, so that DDP does not wait for gradients no
        loss produces (an error without ``find_unused_parameters``) and optimisers skip them."""
        names = self.unused_parameters()
        params = dict(self.named_parameters())
        for n in names:
            params[n].requires_grad_(False)
        if names:
            log.info("no enabled loss trains %d parameter tensors (frozen): %s", len(names),
                     ", ".join(names[:6]) + (", ..." if len(names) > 6 else ""))
        return names

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher[0]

    def set_teacher(self, teacher: Teacher | nn.Module | None) -> None:
        """Attach (or remove, with None) the frozen teacher used by uta and attention masking."""
        t = None if teacher is None else as_teacher(teacher)
        if t is not None and self.uta_head is not None and t.feature_dim != self.uta_head.proj.out_features:
            raise ValueError(f"teacher: feature width {t.feature_dim} differs from the uta head's "
                             f"{self.uta_head.proj.out_features}")
        self._teacher[0] = t

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.temp.device

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the learned temperature in UMT's range [0.001, 0.5] (done before every training step)."""
        self.temp.clamp_(*TEMP_RANGE)

    def tokenize(self, texts: list[str] | str, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` for ``texts``, padded to the longest and truncated to
        ``max_text_len``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.config.max_text_len,
                             return_tensors="pt")
        dev = self.device if device is None else device
        return {"input_ids": enc["input_ids"].to(dev), "attention_mask": enc["attention_mask"].to(dev)}

    def _as_clip(self, videos: torch.Tensor) -> torch.Tensor:
        """Validate (B, C, T, H, W); an image (T=1) becomes one tubelet (the frame repeated)."""
        enc = self.video_encoder
        if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or not videos.dtype.is_floating_point:
            got = f"{videos.dtype} {tuple(videos.shape)}" if isinstance(videos, torch.Tensor) else type(videos).__name__
            raise ValueError(f"videos: expected a float tensor (B, {enc.in_chans}, T, H, W); images as T=1; got {got}")
        if videos.shape[2] == 1 and enc.tubelet_size > 1:
            videos = videos.expand(-1, -1, enc.tubelet_size, -1, -1)
        param = self.temp
        videos = videos.to(param.device)
        if not torch.is_autocast_enabled(param.device.type):
            videos = videos.to(param.dtype)
        return videos

    @staticmethod
    def _kind(videos: torch.Tensor) -> str:
        """"image" for 1-frame clips (B, C, 1, H, W), else "video"."""
        return "image" if isinstance(videos, torch.Tensor) and videos.ndim == 5 and videos.shape[2] == 1 else "video"

    def _video_features(self, videos: torch.Tensor, mask: torch.Tensor | None, kind: str, student: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(all tokens incl. cls, patch tokens, embedding, UTA student tokens).

        The embedding is L2-normalised (B, embed_dim), or per frame (B, T', embed_dim) with
        ``keep_temporal`` when every frame keeps the same tokens (no mask, or a tube mask). The
        student tokens are the output tokens, or with ``uta_student="pre_last_block"`` (and
        ``student``) the un-normalised stream entering the last block, as the authors' encoder
        returns it for alignment (``video_mm/models/backbones/videomamba/videomamba.py``,
        ``x_clip_vis.append(residual)`` after the block loop).
        """
        cfg, enc = self.config, self.video_encoder
        pre_last = student and cfg.uta_student == "pre_last_block"
        feats, inter = enc.forward_intermediates(videos, [-2] if pre_last else [], mask=mask,
                                                 temporal_pos=kind == "video" or cfg.image_temporal_pos)
        tokens = feats[:, 1:]
        per_frame = cfg.keep_temporal and (mask is None or self.maskers[kind].kind == "tube")
        if per_frame:
            b, t = feats.shape[0], enc.check_input(videos)[0]
            pooled = self.pool_norm(feats[:, :1] + tokens.reshape(b, t, -1, tokens.shape[-1]).mean(2))
        else:
            pooled = self.pool_norm(feats[:, 0] + tokens.mean(1))
        return feats, tokens, F.normalize(self.vision_proj(pooled), dim=-1), inter[0] if pre_last else feats

    # ------------------------------------------------------------------ public encoders
    def encode_video(self, videos: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) -> (patch tokens (B, N, D_v), embedding (B, embed_dim), L2-normalised;
        with ``keep_temporal`` one per token frame, (B, T', embed_dim), which
        :func:`videomap.vl.losses.video_embedding` reduces for dot-product similarities).

        ``mask`` (B, T'*h*w, True = hidden) drops tokens before the encoder; None uses them all.
        """
        kind = self._kind(videos)
        _, tokens, embed, _ = self._video_features(self._as_clip(videos), mask, kind)
        return tokens, embed

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> (unimodal tokens (B, L, H), embedding (B, embed_dim) of [CLS], L2-normalised)."""
        tokens = self.text.encode(input_ids, attention_mask)
        return tokens, F.normalize(self.text_proj(tokens[:, 0]), dim=-1)

    def vtm_score(self, video_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  text_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Match logit (B,) of pair i = (video_tokens[i], text i): the match-class output of the
        matching head on the fused [CLS] (what the authors re-rank retrieval with).
        ``text_tokens`` skips re-encoding when the unimodal text outputs are at hand."""
        if text_tokens is None:
            text_tokens = self.text.encode(input_ids, attention_mask)
        if video_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(f"vtm_score: {video_tokens.shape[0]} videos but {text_tokens.shape[0]} texts; pair them "
                             "row by row (repeat the video tokens for one video against many texts)")
        fused = self.text.fuse(text_tokens, attention_mask, video_tokens.to(text_tokens.device))
        return self.itm_head(fused[:, 0])[:, 1]

    # ------------------------------------------------------------------ training
    def _teacher_and_mask(self, videos: torch.Tensor, masked: bool, kind: str
                          ) -> tuple[TeacherOutput | None, torch.Tensor | None, torch.Tensor | None]:
        """(teacher output, teacher patch targets at the token grid, mask or None); ``kind`` is
        "image" or "video" and picks the mask settings."""
        grid = self.video_encoder.check_input(videos)
        masker = self.maskers[kind]
        use_mask = masked and masker.kind != "none" and masker.ratio > 0
        need_teacher = self.uta_head is not None or (use_mask and masker.kind == "attention")
        tout = patch = attn = None
        if need_teacher:
            teacher = self.teacher
            if teacher is None:
                raise RuntimeError("this model has no teacher, which the uta loss and attention masking need; "
                                   "build it with teacher=True or call set_teacher(), or set uta to 0 and use "
                                   "another mask type")
            if next(iter(teacher.buffers()), videos).device != videos.device:
                teacher.to(videos.device)
            tout = teacher(videos, grid[1:])
            patch = align_teacher_time(tout.patch, grid[0])
            attn = align_teacher_time(tout.attn, grid[0])
        mask = masker(videos.shape[0], grid, attn=attn, device=videos.device) if use_mask else None
        return tout, patch, mask

    def _vtm_loss(self, video_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor,
                  video_embed: torch.Tensor, text_embed: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        b = video_tokens.shape[0]
        with torch.no_grad():
            sim = video_embedding(video_embed.float()) @ text_embed.float().T / self.temp
        vid_neg, txt_neg = sample_negatives(sim, idx, hard=self.config.vtm_hard_negatives)
        video_all = torch.cat([video_tokens, video_tokens[vid_neg], video_tokens], dim=0)
        text_all = torch.cat([text_tokens, text_tokens, text_tokens[txt_neg]], dim=0)
        mask_all = torch.cat([attention_mask, attention_mask, attention_mask[txt_neg]], dim=0)
        fused = self.text.fuse(text_all, mask_all, video_all)
        logits = self.itm_head(fused[:, 0])
        return F.cross_entropy(logits.float(), vtm_labels(b, logits.device))

    def _mlm_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, video_tokens: torch.Tensor
                  ) -> torch.Tensor:
        tok = self.tokenizer
        ids, labels = mlm_mask(input_ids, attention_mask, self.config.mlm_prob, tok.mask_token_id,
                               self.text.vocab_size, protected_ids=(tok.pad_token_id, tok.cls_token_id))
        hidden = self.text.fuse(self.text.encode(ids, attention_mask), attention_mask, video_tokens)
        chosen = labels != IGNORE_INDEX
        if not bool(chosen.any()):  # nothing drawn (very short texts): a zero that keeps the graph
            return hidden.sum() * 0.0
        logits = self.text.mlm_logits(hidden[chosen])
        return F.cross_entropy(logits.float(), labels[chosen])

    def forward(self, videos: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                masked: bool = True, idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training losses for a batch of pairs (video i, text i).

        Returns ``loss`` (the weighted sum) and every enabled loss unweighted under its own name
        (``vtc``, ``vtm``, ``mlm``, ``uta``). ``masked``: drop tokens with the configured mask
        (False: the unmasked tuning phase). ``idx`` (B,): video ids, so that several captions of
        one video in a batch are all positives for VTC and never drawn as VTM negatives; default:
        every pair shows a different video.
        """
        cfg = self.config
        self.clamp_temperature()
        kind = self._kind(videos)
        videos = self._as_clip(videos)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        input_ids = input_ids.to(self.device)
        if input_ids.shape[0] != videos.shape[0]:
            raise ValueError(f"input_ids: {input_ids.shape[0]} texts for {videos.shape[0]} videos; expected one each")
        if idx is not None:
            idx = torch.as_tensor(idx, device=self.device).reshape(-1)
        tout, patch, mask = self._teacher_and_mask(videos, masked, kind)
        feats, video_tokens, video_embed, student = self._video_features(videos, mask, kind,
                                                                         student=self.uta_head is not None)
        text_tokens, text_embed = self.encode_text(input_ids, attention_mask)

        out: dict[str, torch.Tensor] = {}
        if cfg.vtc > 0:
            out["vtc"] = vtc_loss(video_embed, text_embed, self.temp, gather=True, idx=idx,
                                  gather_grad=cfg.vtc_gather)
        if cfg.vtm > 0:
            out["vtm"] = self._vtm_loss(video_tokens, text_tokens, attention_mask, video_embed, text_embed, idx)
        if cfg.mlm > 0:
            out["mlm"] = self._mlm_loss(input_ids, attention_mask, video_tokens)
        if self.uta_head is not None:
            m = mask if mask is not None else torch.zeros(feats.shape[0], feats.shape[1] - 1, dtype=torch.bool,
                                                           device=feats.device)
            out["uta"] = uta_loss(self.uta_head(student, m), tout, patch, m)
        out["loss"] = sum(getattr(cfg, k) * v for k, v in out.items())
        return out

    # ------------------------------------------------------------------ persistence
    def _head_state(self) -> dict[str, torch.Tensor]:
        skip = ("text.mlm.", "video_encoder.")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write a self-contained directory :meth:`from_pretrained` restores:

        ``text/`` (the text encoder as a standard Hugging Face masked-LM directory, with its
        tokenizer), ``video_encoder/`` (a ``save_pretrained`` backbone), ``heads.safetensors``
        (cross-attention layers, projections, matching head, temperature, uta head) and
        ``videomap_vl.json``, written last, so a directory without it is an unfinished save.
        """
        from ..io import save_safetensors, write_json

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.text.mlm.save_pretrained(os.path.join(directory, TEXT_DIR))
        self.tokenizer.save_pretrained(os.path.join(directory, TEXT_DIR))
        self.video_encoder.save_pretrained(os.path.join(directory, VIDEO_DIR))
        save_safetensors(self._head_state(), os.path.join(directory, HEADS_FILE), metadata={"format": "pt"})
        config = self.config.to_dict()
        for key in ("text_encoder", "tokenizer", "video_checkpoint", "uta_teacher"):
            value = config[key]
            # a local source stays findable from another working directory
            if value and value not in (*PIXEL_TEACHERS, "none") and os.path.exists(value):
                config[key] = os.path.abspath(value)
        write_json(os.path.join(directory, CONFIG_FILE), {"config": config})
        log.info("saved video-text model to %s", directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, teacher: Teacher | nn.Module | bool = True,
                        **config_overrides: Any) -> VideoTextModel:
        """Restore a :meth:`save_pretrained` directory. ``config_overrides`` (VideoTextConfig fields,
        e.g. ``uta=0`` for the unmasked phase) win over the saved values; ``teacher=False`` skips
        loading the teacher (evaluation)."""
        from ..io import load_safetensors, read_saved_json

        directory = os.fspath(directory)
        saved = read_saved_json(directory, CONFIG_FILE, "VideoTextModel.save_pretrained")
        data = dict(saved["config"])
        data.update(text_encoder=os.path.join(directory, TEXT_DIR), tokenizer=None, local_files_only=True,
                    video_checkpoint=os.path.join(directory, VIDEO_DIR))
        data.update(config_overrides)
        state = load_safetensors(os.path.join(directory, HEADS_FILE))
        uta_dim = int(state["uta_head.proj.weight"].shape[0]) if "uta_head.proj.weight" in state else None
        model = cls.from_config(VideoTextConfig.from_dict(data), teacher=teacher, uta_dim=uta_dim)
        if model.uta_head is None:
            dropped = [k for k in state if k.startswith("uta_head.")]
            for k in dropped:
                state.pop(k)
            if dropped:
                log.info("uta is off: the saved uta head is not loaded")
        expected = model._head_state()
        if model.uta_head is not None and not any(k.startswith("uta_head.") for k in state):
            log.warning("%s has no uta head; it starts from random weights", directory)
            expected = {k: v for k, v in expected.items() if not k.startswith("uta_head.")}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{os.path.join(directory, HEADS_FILE)} does not fit the model: missing "
                             f"{missing[:8]}, unexpected {unexpected[:8]} (fusion_layers or embed_dim changed?)")
        model.load_state_dict(state, strict=False)
        model.eval()
        return model
