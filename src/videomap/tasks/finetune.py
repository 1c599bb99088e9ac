"""``videomap finetune`` and ``videomap evaluate``: supervised training and multi-view evaluation."""

from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..config import JobConfig, dump_config
from ..data import AccuracyAccumulator, Mixup
from ..engine import Trainer, all_reduce_sum, build_eval_loader, is_main_process
from ..engine.distributed import default_device
from ..models import create_model, load_checkpoint
from ..pretrain import FeatureDistiller
from .common import build_dataset, build_model, output_path, train_config

log = logging.getLogger("videomap")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def head_outputs(cfg: JobConfig, num_classes: int) -> int:
    """Outputs of the head: one for a regression head, else the dataset's class count."""
    if cfg.finetune.head not in ("classification", "regression"):
        raise ValueError(f"finetune.head: expected 'classification' or 'regression', got {cfg.finetune.head!r}")
    return 1 if cfg.finetune.head == "regression" else num_classes


def student_of(model: nn.Module) -> nn.Module:
    """The classifier inside a self-distillation wrapper (the model itself otherwise)."""
    return getattr(model, "student", model)


def make_loss(cfg: JobConfig, num_classes: int):
    """Cross-entropy with label smoothing and Mixup/CutMix when enabled (soft targets), or MSE for a
    regression head; plus the weighted feature loss when the model is a self-distillation wrapper."""
    f = cfg.finetune
    head_outputs(cfg, num_classes)  # validates finetune.head
    mixup = None
    if f.head == "classification" and (f.mixup > 0 or f.cutmix > 0):
        mixup = Mixup(num_classes, mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, switch_prob=f.mixup_switch_prob,
                      label_smoothing=f.label_smoothing, seed=cfg.train.seed)

    def loss_fn(model: nn.Module, batch):
        x, y = batch[0], batch[1]
        target = None
        if mixup is not None:  # drawn from the global RNG, which checkpoints save, so resumes are exact
            x, target = mixup(x, y, generator=torch.default_generator)
        out = model(x)
        logits, extra = (out if isinstance(out, tuple) else (out, None))
        if f.head == "regression":
            loss = F.mse_loss(logits.float().squeeze(-1), y.float())
        elif target is not None:
            loss = soft_cross_entropy(logits, target)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=f.label_smoothing)
        if extra is None:
            return loss
        return loss + f.distill_weight * extra, {"distill": extra.item()}

    return loss_fn


def build_distiller(cfg: JobConfig, student: nn.Module) -> nn.Module:
    """Wrap ``student`` for self-distillation when ``finetune.distill_model`` is set."""
    f = cfg.finetune
    if not f.distill_model:
        return student
    if not f.distill_checkpoint:
        raise ValueError("finetune.distill_checkpoint is required with distill_model (the trained teacher)")
    teacher = create_model(f.distill_model, num_classes=0, num_frames=cfg.model.num_frames,
                           img_size=cfg.model.img_size, **f.distill_overrides)
    load_checkpoint(teacher, f.distill_checkpoint, strict=True)
    return FeatureDistiller(student, teacher, loss=f.distill_loss)


@torch.no_grad()
def evaluate_views(model: nn.Module, loader, device: torch.device, regression: bool = False) -> dict[str, float]:
    """Multi-view evaluation: clips x crops per video, per-view softmax averaged (top-1/top-5), or
    the view-averaged prediction's squared error for a regression head; all-reduced over ranks."""
    model = student_of(model)  # a distillation wrapper is evaluated on its student
    acc = AccuracyAccumulator(device=device)
    sq = torch.zeros(2, dtype=torch.float64, device=device)  # sum of squared errors, count
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        if x.ndim == 6:  # (B, V, C, T, H, W)
            b, v = x.shape[:2]
            logits = model(x.flatten(0, 1)).reshape(b, v, -1)
        else:
            logits = model(x)[:, None]
        if regression:
            pred = logits.float().mean(1).squeeze(-1)
            sq += torch.stack([((pred - y.float()) ** 2).sum().double(), torch.tensor(float(len(y)), device=device)])
        else:
            acc.update(logits.float(), y)
    if regression:
        sq = all_reduce_sum(sq)
        return {"mse": float(sq[0] / sq[1].clamp_min(1)), "count": float(sq[1])}
    acc.all_reduce()
    return acc.compute()


def run_finetune(cfg: JobConfig) -> dict:
    train_set = build_dataset(cfg, "train")
    regression = cfg.finetune.head == "regression"
    model = build_distiller(cfg, build_model(cfg, num_classes=head_outputs(cfg, train_set.num_classes)))
    evaluate_fn = None
    if cfg.data.val_list:
        val_set = build_dataset(cfg, "val", mode="test")
        loader = build_eval_loader(val_set, cfg.data.eval_batch_size, num_workers=cfg.train.num_workers)

        def evaluate_fn(m):
            return evaluate_views(m, loader, next(m.parameters()).device, regression)

    trainer = Trainer(model, make_loss(cfg, student_of(model).num_classes), train_set, train_config(cfg),
                      evaluate_fn=evaluate_fn)
    if trainer.is_main:
        dump_config(cfg, output_path(cfg, "config.yaml"))
    result = trainer.fit(resume=cfg.train.resume)
    if is_main_process():
        if train_set.bad_samples():
            log.warning("%s", train_set.bad_sample_summary())
        student_of(model).save_pretrained(output_path(cfg, "final"))
    return result


def run_evaluate(cfg: JobConfig, checkpoint: str | None = None) -> dict[str, float]:
    """Evaluate ``checkpoint`` (or ``model.pretrained``) on ``data.test_list`` (or ``val_list``)."""
    test_set = build_dataset(cfg, "test")
    ckpt = checkpoint or cfg.model.pretrained
    if not ckpt:
        raise ValueError("evaluate needs weights: pass --checkpoint or set model.pretrained")
    regression = cfg.finetune.head == "regression"
    model = build_model(cfg, num_classes=head_outputs(cfg, test_set.num_classes), pretrained="")
    load_checkpoint(model, ckpt, strict=True)
    device = default_device()
    model.to(device).eval()
    loader = build_eval_loader(test_set, cfg.data.eval_batch_size, num_workers=cfg.train.num_workers)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp == "bf16")
    with amp:
        result = evaluate_views(model, loader, device, regression)
    if is_main_process():
        with open(output_path(cfg, "eval.json"), "w") as f:
            json.dump({"checkpoint": ckpt, **result}, f, indent=1)
    return result
