"""Builders shared by the task runners: datasets and models from a :class:`JobConfig`."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

from ..config import JobConfig
from ..data import VideoClsDataset
from ..models import create_model, load_pretrained
from ..models.registry import model_kwargs, read_model_config

log = logging.getLogger(__name__)


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
        num_sample=d.num_sample if mode == "train" else 1,
    )


def build_model(cfg: JobConfig, num_classes: int | None = None, pretrained: str | None = None) -> nn.Module:
    """The job's model; ``pretrained`` (default ``model.pretrained``) is loaded by :func:`create_model`.

    For commands that take trained weights (``--checkpoint``) use :func:`build_model_from_checkpoint`.
    """
    m = cfg.model
    n = m.num_classes if m.num_classes is not None else num_classes
    model = create_model(m.name, num_classes=n if n is not None else 0, num_frames=m.num_frames,
                         img_size=m.img_size, drop_path_rate=m.drop_path_rate,
                         pretrained=pretrained if pretrained is not None else m.pretrained, **m.overrides)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True, m.checkpoint_num)
    return model


# create_model arguments that are not the architecture: the head, the clip size (position tables are
# resized) and training-only regularisation
_NOT_ARCHITECTURE = ("num_classes", "num_frames", "img_size", "drop_path_rate", "drop_rate", "mixer_recompute")


def _saved_config(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """``config.json`` of a ``save_pretrained`` directory; ``None`` for a plain weights file."""
    if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, "config.json")):
        return read_model_config(checkpoint)
    return None


def _architecture(name: str, overrides: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The class and every architecture argument (constructor defaults filled in) of a model."""
    cls, kwargs = model_kwargs(name, **overrides)
    full: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or not issubclass(klass, nn.Module) or klass is nn.Module:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.default is not inspect.Parameter.empty:
                full.setdefault(p.name, p.default)
    full.update(kwargs)
    # JSON (config.json) has lists, not tuples: compare in that form
    return cls, {k: _plain(v) for k, v in full.items() if k not in _NOT_ARCHITECTURE}


def _plain(value: Any) -> Any:
    """A value as JSON stores it (tuples become lists, paths strings), for comparison with a saved config."""
    return json.loads(json.dumps(value, default=str))


def restore_config(saved: Mapping[str, Any], requested: Mapping[str, Any], *, runtime: Collection[str],
                   sources: Collection[str] = (), checkpoint: str, keys: str, advice: str,
                   prefix: str = "") -> dict[str, Any]:
    """The one rule for running a saved model under a job: which of the job's model fields apply.

    ``saved``: the fields the model was saved with; ``requested``: only those the job gives.
    ``runtime`` fields may differ (the job's value wins); ``sources`` say where weights came from
    and are not used (the checkpoint holds its own weights); every other field is architecture and
    must equal the saved value (compared as JSON stores it). Returns the runtime fields to
    override. A conflict is a ``ValueError`` naming every conflicting field (``prefix`` + name)
    with the job's and the saved value, so the wrong model never runs quietly: ``keys`` names the
    job keys in the message's first words, ``advice`` ends it.
    """
    overrides, conflicts, ignored = {}, [], []
    for key, value in requested.items():
        if key in runtime:
            overrides[key] = value
        elif key in sources:
            ignored.append(prefix + key)
        elif key in saved and _plain(value) != _plain(saved[key]):
            conflicts.append(f"{prefix}{key} is {value!r} but it holds {saved[key]!r}")
    if conflicts:
        raise ValueError(f"{keys} conflict with the checkpoint {checkpoint}: " + "; ".join(conflicts) + f"; {advice}")
    if ignored:
        log.info("using the weights saved in %s, not the job's %s", checkpoint, ", ".join(ignored))
    return overrides


def _resolve(cfg: JobConfig, checkpoint: str | os.PathLike) -> tuple[JobConfig, dict[str, Any] | None]:
    saved = _saved_config(checkpoint)
    if saved is None:
        return cfg, None
    m = cfg.model
    saved_name = saved["name"]
    saved_args = {k: v for k, v in saved.items() if k != "name"}
    if cfg.is_given("model.name") or cfg.is_given("model.overrides"):
        _, job_arch = _architecture(m.name, m.overrides)
        try:
            _, saved_arch = _architecture(saved_name, {k: v for k, v in saved_args.items()
                                                       if k not in _NOT_ARCHITECTURE})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(checkpoint)}/config.json describes no model this version can build: {e}") \
                from e
        # every architecture argument on both sides (a default one side lacks is compared as None)
        names = set(job_arch) | set(saved_arch)
        restore_config({"model.name": saved_name, **{k: saved_arch.get(k) for k in names}},
                       {"model.name": m.name, **{k: job_arch.get(k) for k in names}},
                       runtime=_NOT_ARCHITECTURE, keys="model.name/model.overrides",
                       checkpoint=f"{os.fspath(checkpoint)}/config.json (model {saved_name})",
                       advice="drop model.name/model.overrides to use the saved architecture, or pass the "
                              "checkpoint of the model you meant")
        name, overrides = m.name, dict(m.overrides)
    else:
        name = saved_name
        overrides = {k: v for k, v in saved_args.items() if k not in _NOT_ARCHITECTURE}
    # the saved clip size unless the job asks for another (position tables are then resized)
    num_frames = m.num_frames if cfg.is_given("model.num_frames") else saved_args.get("num_frames", m.num_frames)
    img_size = m.img_size if cfg.is_given("model.img_size") else saved_args.get("img_size", m.img_size)
    model = dataclasses.replace(m, name=name, overrides=overrides, num_frames=num_frames, img_size=img_size)
    return dataclasses.replace(cfg, model=model), saved


def resolve_checkpoint_model(cfg: JobConfig, checkpoint: str | os.PathLike) -> JobConfig:
    """``cfg`` with the model section a checkpoint needs (see :func:`build_model_from_checkpoint`).

    Only a ``save_pretrained`` directory (with ``config.json``) changes anything: its model name
    and architecture are used when the job gives neither ``model.name`` nor ``model.overrides``
    (a job that gives a different one is a ``ValueError`` naming both), and its ``num_frames`` /
    ``img_size`` unless the job sets them. Call it before building datasets so clips get the size
    the model was trained at.
    """
    return _resolve(cfg, checkpoint)[0]


def build_model_from_checkpoint(cfg: JobConfig, checkpoint: str | os.PathLike, num_classes: int | None) -> nn.Module:
    """The model a trained checkpoint was written for, with its weights loaded strictly.

    For every command that takes ``--checkpoint``. ``checkpoint``: a ``save_pretrained`` directory,
    whose ``config.json`` gives the architecture (see :func:`resolve_checkpoint_model`), or a
    plain weights file, loaded into the job's model. Either way a tensor of another shape or a
    missing / unexpected tensor is a ``ValueError``: the wrong model is never run quietly.

    ``num_classes``: the classifier the command needs.

    * ``0``: none (feature extraction); a classifier in the checkpoint is ignored.
    * ``N > 0`` (evaluation): the trained classifier, which must be in the checkpoint and cover
      ``N`` classes. A directory's saved head size is used (a test list may lack the last
      classes); ``model.num_classes``, when the job sets it, must agree with it.
    * ``None``: the saved head size of a directory, else ``model.num_classes`` (0 when unset),
      loaded when present.
    """
    cfg, saved = _resolve(cfg, checkpoint)
    m = cfg.model
    where = os.fspath(checkpoint)
    if num_classes == 0:
        n, require_head = 0, False
    elif saved is not None:
        n = int(saved.get("num_classes") or 0)
        if m.num_classes is not None and m.num_classes != n:
            raise ValueError(f"model.num_classes is {m.num_classes}, but the classifier in {where} has {n} "
                             f"outputs (config.json); drop model.num_classes or pass the matching checkpoint")
        if num_classes is not None and num_classes > n:
            raise ValueError(f"{where}: its classifier has {n} outputs (config.json) but {num_classes} are needed"
                             + (" (it is an encoder without a head: fine-tune it first)" if n == 0 else ""))
        require_head = n > 0
    else:
        n = m.num_classes if m.num_classes is not None else (num_classes or 0)
        require_head = num_classes is not None and n > 0
    model = create_model(m.name, num_classes=n, num_frames=m.num_frames, img_size=m.img_size,
                         drop_path_rate=m.drop_path_rate, **m.overrides)
    load_pretrained(model, checkpoint, strict=True, require_head=require_head)
    return model


def output_path(cfg: JobConfig, name: str) -> str:
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    return os.path.join(cfg.train.output_dir, name)
