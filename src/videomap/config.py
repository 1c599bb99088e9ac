"""Job configuration: YAML files mapped onto dataclasses, with ``key=value`` overrides.

A job file has the sections ``model``, ``data``, ``pretrain``, ``finetune``, ``train`` (the
engine's :class:`~videomap.engine.TrainConfig`) and the top-level keys ``task`` and ``blr``.
Unknown keys are errors that list the valid ones, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .engine import TrainConfig, scale_lr


@dataclass
class ModelSection:
    name: str = "videomap_tiny"
    num_frames: int = 8
    img_size: int = 224
    drop_path_rate: float = 0.1
    num_classes: int | None = None  # None: taken from the dataset
    pretrained: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # extra constructor kwargs (depth, embed_dim, ...)


@dataclass
class DataSection:
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    root: str = ""
    delimiter: str | None = None
    list_format: str = "auto"
    sampling: str = "segment"
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


@dataclass
class PretrainSection:
    objective: str = "frame"  # frame | token | video
    teacher: str = "clip"  # clip | pixel
    clip_model: str | None = "openai/clip-vit-base-patch16"
    local_files_only: bool = False
    teacher_cache: int = 0
    mask_type: str = "attention"
    mask_ratio: float = 0.5
    decoder_dim: int | None = 512
    decoder_depth: int = 3
    loss_on: str = "all"
    target_norm: str = "none"


@dataclass
class FinetuneSection:
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    head: str = "classification"  # classification | regression (LVU-style, MSE on a real-valued label)
    distill_model: str | None = None  # self-distillation teacher (a registry name), frozen
    distill_checkpoint: str | None = None  # its trained weights
    distill_overrides: dict[str, Any] = field(default_factory=dict)  # extra teacher constructor kwargs
    distill_weight: float = 1.0
    distill_loss: str = "l2"  # l2 | cos


@dataclass
class ExtractSection:
    list: str | None = None  # videos to encode (path or path,label lines)
    output_dir: str = "features"
    format: str = "safetensors"  # safetensors | npy
    frame_stride: int = 2  # frames skipped between sampled frames inside a window
    window_stride: int | None = None  # sampled frames between window starts (default: num_frames, no overlap)
    pool: str = "cls"  # cls | mean (of patch tokens)


@dataclass
class JobConfig:
    task: str = "finetune"
    blr: float | None = None  # base lr per 256 clips; sets train.lr = blr * global_batch / 256
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    extract: ExtractSection = field(default_factory=ExtractSection)
    train: TrainConfig = field(default_factory=TrainConfig)

    def global_batch(self, world_size: int | None = None) -> int:
        ws = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        return self.train.batch_size * self.train.accum_steps * ws

    def resolved_lr(self) -> float:
        return scale_lr(self.blr, self.global_batch()) if self.blr is not None else self.train.lr


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, data: dict[str, Any], where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key {where + '.' if where else ''}{key}; valid keys"
                             f"{' in ' + where if where else ''}: {', '.join(sorted(names))}")
        sub = names[key].default_factory if names[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[key] = _build(sub, value, f"{where + '.' if where else ''}{key}")
        elif key in ("crop_scale", "betas") and isinstance(value, list):
            kwargs[key] = tuple(value)
        elif isinstance(value, str) and "float" in str(names[key].type):
            try:  # YAML reads 1e-3 (no dot) as a string
                kwargs[key] = float(value)
            except ValueError:
                raise ValueError(f"{where + '.' if where else ''}{key}: expected a number, got {value!r}") from None
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where or 'config'}: {e}") from e


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


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job file (optional) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = os.fspath(path)
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
            parent = config_to_dict(load_config(os.path.join(os.path.dirname(path), base)))
            data = _deep_merge(parent, data)
    data = merge_overrides(data, overrides or [])
    where = os.fspath(path) if path else "config"
    try:
        return _build(JobConfig, data, "")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: JobConfig, path: str | os.PathLike) -> None:
    d = config_to_dict(cfg)
    with open(path, "w") as f:
        yaml.safe_dump(_plain(d), f, sort_keys=False)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
