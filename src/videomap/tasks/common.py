"""Builders shared by the task runners: datasets and models from a :class:`JobConfig`."""

from __future__ import annotations

import dataclasses
import os

from torch import nn

from ..config import JobConfig
from ..data import VideoClsDataset
from ..models import create_model


def build_dataset(cfg: JobConfig, split: str, mode: str | None = None) -> VideoClsDataset:
    """``split``: train / val / test (the list file); ``mode`` defaults to train for train, else test."""
    d = cfg.data
    list_file = {"train": d.train_list, "val": d.val_list, "test": d.test_list or d.val_list}[split]
    if not list_file:
        raise ValueError(f"data.{split}_list is not set; give the annotation list (path,label lines)")
    mode = mode or ("train" if split == "train" else "test")
    return VideoClsDataset(
        list_file, root=d.root, num_frames=cfg.model.num_frames, sampling=d.sampling, frame_stride=d.frame_stride,
        mode=mode, input_size=cfg.model.img_size, short_side=d.short_side, test_clips=d.test_clips,
        test_crops=d.test_crops, flip=d.flip, randaug=d.randaug if mode == "train" else None,
        erase_prob=d.erase_prob if mode == "train" else 0.0, delimiter=d.delimiter, list_format=d.list_format,
        max_bad_fraction=d.max_bad_fraction, seed=cfg.train.seed, crop_scale=tuple(d.crop_scale),
    )


def build_model(cfg: JobConfig, num_classes: int | None = None, pretrained: str | None = None) -> nn.Module:
    m = cfg.model
    n = m.num_classes if m.num_classes is not None else num_classes
    return create_model(m.name, num_classes=n if n is not None else 0, num_frames=m.num_frames,
                        img_size=m.img_size, drop_path_rate=m.drop_path_rate,
                        pretrained=pretrained if pretrained is not None else m.pretrained, **m.overrides)


def train_config(cfg: JobConfig):
    """The engine config with the learning rate resolved from ``blr`` when given."""
    return dataclasses.replace(cfg.train, lr=cfg.resolved_lr())


def output_path(cfg: JobConfig, name: str) -> str:
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    return os.path.join(cfg.train.output_dir, name)
