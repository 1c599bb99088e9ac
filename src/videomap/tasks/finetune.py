"""``videomap finetune`` and ``videomap evaluate``: supervised training and multi-view evaluation."""

from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..config import JobConfig, dump_config
from ..data import AccuracyAccumulator, Mixup
from ..engine import Trainer, build_eval_loader, is_main_process
from ..engine.distributed import default_device
from .common import build_dataset, build_model, output_path, train_config

log = logging.getLogger("videomap")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def make_classification_loss(cfg: JobConfig, num_classes: int):
    """Cross-entropy with label smoothing, and Mixup/CutMix when enabled (soft targets)."""
    f = cfg.finetune
    mixup = None
    if f.mixup > 0 or f.cutmix > 0:
        mixup = Mixup(num_classes, mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, switch_prob=f.mixup_switch_prob,
                      label_smoothing=f.label_smoothing, seed=cfg.train.seed)

    def loss_fn(model: nn.Module, batch):
        x, y = batch[0], batch[1]
        if mixup is not None:
            x, soft = mixup(x, y)
            return soft_cross_entropy(model(x), soft)
        return F.cross_entropy(model(x).float(), y, label_smoothing=f.label_smoothing)

    return loss_fn


@torch.no_grad()
def evaluate_views(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    """Multi-view accuracy: clips x crops per video, per-view softmax averaged; all-reduced over ranks."""
    acc = AccuracyAccumulator(device=device)
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        if x.ndim == 6:  # (B, V, C, T, H, W)
            b, v = x.shape[:2]
            logits = model(x.flatten(0, 1)).reshape(b, v, -1)
        else:
            logits = model(x)
        acc.update(logits.float(), y)
    acc.all_reduce()
    return acc.compute()


def run_finetune(cfg: JobConfig) -> dict:
    train_set = build_dataset(cfg, "train")
    model = build_model(cfg, num_classes=train_set.num_classes)
    evaluate_fn = None
    if cfg.data.val_list:
        val_set = build_dataset(cfg, "val", mode="test")
        loader = build_eval_loader(val_set, cfg.data.eval_batch_size, num_workers=cfg.train.num_workers)

        def evaluate_fn(m):
            return evaluate_views(m, loader, next(m.parameters()).device)

    trainer = Trainer(model, make_classification_loss(cfg, model.num_classes), train_set, train_config(cfg),
                      evaluate_fn=evaluate_fn)
    if trainer.is_main:
        dump_config(cfg, output_path(cfg, "config.yaml"))
    result = trainer.fit(resume=cfg.train.resume)
    if is_main_process():
        if train_set.bad_samples():
            log.warning("%s", train_set.bad_sample_summary())
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(output_path(cfg, "final"))
    return result


def run_evaluate(cfg: JobConfig, checkpoint: str | None = None) -> dict[str, float]:
    """Evaluate ``checkpoint`` (or ``model.pretrained``) on ``data.test_list`` (or ``val_list``)."""
    test_set = build_dataset(cfg, "test")
    ckpt = checkpoint or cfg.model.pretrained
    if not ckpt:
        raise ValueError("evaluate needs weights: pass --checkpoint or set model.pretrained")
    model = build_model(cfg, num_classes=test_set.num_classes, pretrained="")
    from ..models import load_checkpoint

    load_checkpoint(model, ckpt, strict=True)
    device = default_device()
    model.to(device).eval()
    loader = build_eval_loader(test_set, cfg.data.eval_batch_size, num_workers=cfg.train.num_workers)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp == "bf16")
    with amp:
        result = evaluate_views(model, loader, device)
    if is_main_process():
        with open(output_path(cfg, "eval.json"), "w") as f:
            json.dump({"checkpoint": ckpt, **result}, f, indent=1)
    return result
