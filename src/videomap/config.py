"""Job configuration: YAML files mapped onto dataclasses, with ``key=value`` overrides.

A job file has the sections ``model``, ``data``, ``pretrain``, ``finetune``, ``extract``,
``llm`` (Video-LLM jobs), ``vl`` (video-text jobs), ``train`` (the engine's
:class:`~videomap.engine.TrainConfig`) and the top-level keys ``task``, ``blr`` and ``min_blr``.
Every value is checked against its field's type annotation when the file is loaded: unknown keys
and invalid choices are errors that list the valid ones, so a typo never silently does nothing and
never surfaces deep inside a run after the dataset has been built.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .data.annotations import ListFormat
from .data.sampling import Sampling
from .engine import TrainConfig, scale_lr
from .engine.distributed import steps_per_epoch
from .finetune.distill import DistillLoss, DistillTarget
from .llm.model import LoraOptions, Stage, VideoLLMConfig
from .llm.qa import EVAL_MAX_NEW_TOKENS
from .llm.qa_readers import QAFormat
from .pretrain.masking import MaskType
from .pretrain.model import AlignStudent
from .pretrain.objectives import DEFAULT_LOSS_ON, LossOn, Objective, TargetNorm
from .pretrain.teachers import ClipTarget, TeacherKind
from .vl.model import VideoTextConfig

Task = Literal["pretrain", "finetune", "evaluate", "extract", "llm", "vl"]
# the job file's ``task`` each command accepts (evaluate/extract read fine-tuning job files; one
# Video-LLM job file serves both training and evaluation)
TASKS_FOR_COMMAND: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain",),
    "finetune": ("finetune",),
    "evaluate": ("finetune", "evaluate"),
    "extract": ("finetune", "evaluate", "extract"),
    "export": ("pretrain", "finetune", "evaluate", "extract"),  # only the model section is read
    "llm-train": ("llm",),
    "llm-eval": ("llm",),
    "vl-train": ("vl",),
    "retrieval-eval": ("vl",),
}


@dataclass
class ModelSection:
    name: str = "videomap_tiny"
    num_frames: int = 8
    img_size: int = 224
    drop_path_rate: float = 0.1
    num_classes: int | None = None  # None: taken from the dataset
    pretrained: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # extra constructor kwargs (depth, embed_dim, ...)
    grad_checkpointing: bool = False  # recompute block activations in backward (memory for time)
    checkpoint_num: int | None = None  # only the first k blocks (the authors' checkpoint_num); None = all

    def __post_init__(self) -> None:
        if self.checkpoint_num is not None and self.checkpoint_num < 0:
            raise ValueError(f"model.checkpoint_num must be >= 0 or null (every block), got {self.checkpoint_num}")


@dataclass
class DataSection:
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    root: str = ""
    delimiter: str | None = None
    list_format: ListFormat = "auto"
    sampling: Sampling = "segment"
    frame_stride: int = 4
    short_side: int | None = None
    test_clips: int = 1
    test_crops: int = 1
    flip: bool = True
    randaug: str | None = None
    erase_prob: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    max_bad_fraction: float = 0.1
    eval_batch_size: int = 8
    # repeated augmentation (fine-tuning): each training video gives num_sample augmented clips per
    # batch, as the authors' --num_sample; steps per epoch stay len(list) / global batch of videos
    num_sample: int = 1

    def __post_init__(self) -> None:
        if self.num_sample < 1:
            raise ValueError(f"data.num_sample must be >= 1 (augmented clips per video), got {self.num_sample}")


@dataclass
class PretrainSection:
    objective: Objective = "frame"
    teacher: TeacherKind = "clip"
    clip_model: str | None = "openai/clip-vit-base-patch16"
    clip_target: ClipTarget = "videomamba"  # which CLIP tokens are targets (docs/pretraining.md)
    local_files_only: bool = False
    teacher_cache: int = 0
    mask_type: MaskType = "attention"
    mask_ratio: float = 0.5
    decoder_dim: int | None = 512
    decoder_depth: int = 3
    loss_on: LossOn = DEFAULT_LOSS_ON
    target_norm: TargetNorm = "none"
    cls_weight: float = 1.0  # decoder cls vs the teacher's clip-level cls (frame/token objectives); 0: off
    align_student: AlignStudent = "output"  # video objective: output tokens, or the stream before the last block

    def __post_init__(self) -> None:
        if self.cls_weight < 0:
            raise ValueError(f"cls_weight must be >= 0, got {self.cls_weight}")


@dataclass
class FinetuneSection:
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    head: Literal["classification", "regression"] = "classification"  # regression: LVU-style MSE
    distill_model: str | None = None  # self-distillation teacher (a registry name), frozen
    distill_checkpoint: str | None = None  # its trained weights
    distill_overrides: dict[str, Any] = field(default_factory=dict)  # extra teacher constructor kwargs
    distill_weight: float = 1.0
    distill_loss: DistillLoss = "cos"
    distill_target: DistillTarget = "tokens"  # tokens: the whole final feature map (authors' code); cls: cls only


@dataclass
class ExtractSection:
    list: str | None = None  # videos to encode (path or path,label lines)
    output_dir: str = "features"
    format: Literal["safetensors", "npy"] = "safetensors"
    frame_stride: int = 2  # frames skipped between sampled frames inside a window
    window_stride: int | None = None  # sampled frames between window starts (default: num_frames, no overlap)
    pool: Literal["cls", "mean"] = "cls"  # mean: of the patch tokens
    layer: int = -1  # block whose output is read, in execution order (hybrids: attention blocks too); -1: last
    norm: bool = True  # pass that output through the model's final norm (-1 with norm: forward_features)


@dataclass
class LlmSection(VideoLLMConfig):
    """A Video-LLM job (``videomap llm-train`` / ``llm-eval``).

    The model keys are those of :class:`videomap.llm.VideoLLMConfig`, which this section extends: a
    field added there is a job key here, checked by the model's own rules. The fields below say what
    a stage trains and on which data. ``init_from`` is the ``final/`` directory of the previous stage
    (stage 2 starts from stage 1's projector); the model is then restored from there, and of the
    model keys the job gives only the model's runtime fields may differ from the saved ones
    (:func:`videomap.tasks.common.restore_config`).
    """

    language_model: str | None = None  # may be left to init_from

    stage: Stage = "align"  # align: projector only; instruct: projector + LM (full or LoRA)
    init_from: str | None = None  # a previous stage's saved VideoLLM directory
    lora: LoraOptions | None = None  # instruct stage only (the model's own LoRA options)
    train_encoder: bool = False
    llm_gradient_checkpointing: bool = False
    train_json: str | None = None  # LLaVA / Video-ChatGPT style conversations
    media_root: str = ""  # prefix of the relative video / image paths in the JSON files
    max_length: int | None = 2048  # tokens per sample, visual tokens excluded (truncated beyond)
    max_bad_fraction: float = 0.1
    system: str | None = None  # system prompt for training and evaluation (None: the template's default)
    eval_json: str | None = None  # questions (test_q.json, *_qa.json, a TGIF-QA csv, multiple-choice rows)
    eval_answers_json: str | None = None  # test_a.json where answers ship in their own file
    eval_format: QAFormat = "msrvtt_qa"
    eval_batch_size: int = 8
    eval_answer_prompt: str | None = None  # appended to each question, e.g. "Answer in one word."
    eval_length_normalize: bool = False  # multiple choice: mean instead of summed log-likelihood
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS
    max_eval_samples: int | None = None  # evaluate only the first N questions (smoke runs)

    def __post_init__(self) -> None:
        self.validate(require_language_model=False)
        for name in ("eval_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 or null, got {self.max_length}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError(f"max_eval_samples must be >= 1 or null, got {self.max_eval_samples}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.lora is not None and self.stage != "instruct":
            raise ValueError("lora applies to the instruct stage only (align trains the projector); "
                             "set llm.stage=instruct or llm.lora=null")

    def model_config(self) -> VideoLLMConfig:
        """The model keys as the model's own config (the language model must be set by now)."""
        return VideoLLMConfig.from_dict(self.to_dict())


CaptionMediaType = Literal["auto", "video", "image"]


@dataclass
class CaptionCorpus:
    """One caption file of a video-text training mix: ``[{"video" | "image": path, "caption": ...}]``."""

    file: str | None = None
    media_root: str = ""  # prefix of the relative media paths in the file
    media_type: CaptionMediaType = "auto"  # auto: whichever of "video" / "image" an entry has

    def __post_init__(self) -> None:
        if not self.file:
            raise ValueError("file: expected the caption JSON file of this corpus")


@dataclass
class VlSection(VideoTextConfig):
    """A video-text job (``videomap vl-train`` / ``retrieval-eval``).

    The model keys are those of :class:`videomap.vl.VideoTextConfig` (how the model is built, the
    loss weights and masks), which this section extends: a field added there is a job key here,
    checked by the model's own rules. The fields below say what to train on and how to evaluate.
    ``init_from`` is a saved model (``final/`` of a previous run): the model is then restored from
    there, and of the model keys the job gives only the model's runtime fields may differ from the
    saved ones (:func:`videomap.tasks.common.restore_config`; docs/retrieval.md lists them).
    """

    text_encoder: str | None = None  # may be left to init_from

    init_from: str | None = None  # a saved VideoTextModel directory to start from
    masked: bool = True  # false: every token enters the encoder (the final unmasked tuning phase)
    train_data: list[CaptionCorpus] = field(default_factory=list)
    flip: bool = True  # random horizontal flip in training (UMT's transform)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop area range in training
    max_bad_fraction: float = 0.1

    eval_json: str | None = None  # retrieval test set (caption JSON); also evaluated during vl-train
    eval_media_root: str = ""
    paragraph: bool = False  # join a video's captions into one text (DiDeMo / ActivityNet paragraphs)
    rerank_k: int = 128  # VTM re-ranking of each query's top k; 0: similarity only
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        self.validate(require_text_encoder=False)
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.rerank_k < 0:
            raise ValueError(f"rerank_k must be >= 0 (0: no re-ranking), got {self.rerank_k}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be 0 < min <= max <= 1, got {list(self.crop_scale)}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")

    def model_config(self) -> VideoTextConfig:
        """The model keys as the model's own config (the text encoder must be set by now)."""
        return VideoTextConfig.from_dict(self.to_dict())


@dataclass
class JobConfig:
    task: Task = "finetune"
    blr: float | None = None  # base lr per 256 clips; sets train.lr = blr * global_batch / 256
    min_blr: float | None = None  # final lr per 256 clips; sets train.min_lr = min_blr * global_batch / 256
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    extract: ExtractSection = field(default_factory=ExtractSection)
    llm: LlmSection = field(default_factory=LlmSection)
    vl: VlSection = field(default_factory=VlSection)
    train: TrainConfig = field(default_factory=TrainConfig)

    # dotted keys the YAML file or the overrides set explicitly (not a field: never dumped)
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    def is_given(self, key: str) -> bool:
        """Whether ``key`` (e.g. ``"model.name"``) or a key below it was set by the job, not defaulted."""
        return any(k == key or k.startswith(key + ".") for k in self.given)

    def global_batch(self, world_size: int | None = None) -> int:
        """Clips per optimizer step (what ``blr`` scales with, as the authors' lr × batch ×
        num_sample / 256): videos per step times ``data.num_sample``."""
        ws = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        return self.train.batch_size * self.train.accum_steps * ws * self.data.num_sample

    def optimizer_steps(self, num_train: int, world_size: int) -> int:
        """Optimizer steps of the whole run on ``num_train`` training videos over ``world_size``
        processes (the engine's count: each process takes ``num_train // world_size`` videos per
        epoch in whole steps of ``batch_size * accum_steps``; ``num_sample`` does not change it)."""
        per_rank = num_train // world_size
        return self.train.epochs * steps_per_epoch(per_rank, self.train.batch_size, self.train.accum_steps)

    def resolved_lr(self) -> float:
        return scale_lr(self.blr, self.global_batch()) if self.blr is not None else self.train.lr

    def resolved_min_lr(self) -> float:
        return scale_lr(self.min_blr, self.global_batch()) if self.min_blr is not None else self.train.min_lr

    def resolved_train(self) -> TrainConfig:
        """The engine config with ``lr`` / ``min_lr`` resolved from ``blr`` / ``min_blr`` when given."""
        return dataclasses.replace(self.train, lr=self.resolved_lr(), min_lr=self.resolved_min_lr())


def _where(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert what YAML cannot express.

    YAML reads ``1e-3`` (no dot) as a string and has no tuples; both are converted only where the
    annotation asks for a float or a tuple.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: a value is required")
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None: X's own error (e.g. an unknown key inside a section)
            return _coerce(value, options[0], where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError as e:
                errors.append(str(e).split(": ", 1)[-1])
        raise ValueError(f"{where}: " + "; or ".join(errors))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"{where}: unsupported annotation {tp!r}")  # a programming error, not a user one


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls, data: dict[str, Any] | None, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    names = _fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    renamed = getattr(cls, "LEGACY_KEYS", {})
    for key, value in data.items():
        if key in renamed and key not in names:
            raise ValueError(f"{_where(where, key)} was renamed to {_where(where, renamed[key])} (same meaning); "
                             "update the job file")
        if key not in names:
            raise ValueError(f"unknown config key {_where(where, key)}; valid keys"
                             f"{' in ' + where if where else ''}: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], _where(where, key))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where or 'config'}: {e}") from e


def _given_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        key = _where(prefix, k)
        out.add(key)
        if isinstance(v, dict):
            out |= _given_keys(v, key)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4); values are parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value (e.g. train.epochs=10)")
    key, value = text.split("=", 1)
    if not key:
        raise ValueError(f"override {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(value)


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def _read_yaml(path: str) -> dict[str, Any]:
    """A job file as a plain mapping, with its ``_base_`` chain merged in (the file wins)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base:
        data = _deep_merge(_read_yaml(os.path.join(os.path.dirname(path), base)), data)
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                command: str | None = None) -> JobConfig:
    """Read a YAML job file (optional) and apply ``key=value`` overrides.

    ``command`` is the CLI subcommand: a job file written for another task is refused (running
    ``videomap finetune`` on a pre-training file would otherwise quietly fine-tune).
    """
    data = _read_yaml(os.fspath(path)) if path is not None else {}
    data = merge_overrides(data, overrides or [])
    where = os.fspath(path) if path else "config"
    try:
        cfg = _build(JobConfig, data, "")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    cfg = dataclasses.replace(cfg, given=frozenset(_given_keys(data)))
    if command is not None and "task" in data:
        allowed = TASKS_FOR_COMMAND.get(command, (command,))
        if cfg.task not in allowed:
            raise ValueError(f"{where}: task is {cfg.task!r}, but this is `videomap {command}`; use "
                             f"`videomap {cfg.task}` for this file, or a job file with task: {allowed[0]}")
    return cfg


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_dict(cfg: Any) -> dict[str, Any]:
    """The job as plain YAML-safe containers (tuples as lists), without internal fields."""
    if dataclasses.is_dataclass(cfg):
        return {name: config_dict(getattr(cfg, name)) for name in _fields(type(cfg))}
    if isinstance(cfg, dict):
        return {k: config_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: JobConfig, path: str | os.PathLike) -> None:
    from .io import atomic_write

    with atomic_write(path) as f:
        yaml.safe_dump(config_dict(cfg), f, sort_keys=False)
