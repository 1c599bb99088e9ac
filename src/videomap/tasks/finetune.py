"""``videomap finetune`` and ``videomap evaluate``: wire the fine-tuning pieces to the engine."""

from __future__ import annotations

import logging

from ..config import JobConfig, dump_config
from ..data import collate_repeated
from ..engine import Trainer, autocast, build_eval_loader, default_device, is_main_process, resolve_amp
from ..finetune import build_distiller, evaluate_views, head_outputs, make_loss, student_of
from ..io import write_json
from .common import (
    build_dataset,
    build_model,
    build_model_from_checkpoint,
    output_path,
    resolve_checkpoint_model,
)

log = logging.getLogger(__name__)


def run_finetune(cfg: JobConfig) -> dict:
    """Fine-tune on ``data.train_list`` (evaluating on ``data.val_list``) and save ``final/``."""
    f = cfg.finetune
    train_set = build_dataset(cfg, "train")
    regression = f.head == "regression"
    num_out = head_outputs(f.head, train_set.num_classes)
    model = build_distiller(build_model(cfg, num_classes=num_out), f.distill_model, f.distill_checkpoint,
                            num_frames=cfg.model.num_frames, img_size=cfg.model.img_size, loss=f.distill_loss,
                            teacher_overrides=f.distill_overrides, target=f.distill_target)
    evaluate_fn = None
    if cfg.data.val_list:
        val_set = build_dataset(cfg, "val", mode="test")
        loader = build_eval_loader(val_set, cfg.data.eval_batch_size, num_workers=cfg.train.num_workers)

        def evaluate_fn(m):
            return evaluate_views(m, loader, next(m.parameters()).device, regression)

    loss_fn = make_loss(student_of(model).num_classes, head=f.head, mixup=f.mixup, cutmix=f.cutmix,
                        mixup_switch_prob=f.mixup_switch_prob, label_smoothing=f.label_smoothing,
                        distill_weight=f.distill_weight)
    collate = collate_repeated if train_set.num_sample > 1 else None
    trainer = Trainer(model, loss_fn, train_set, cfg.resolved_train(), collate_fn=collate, evaluate_fn=evaluate_fn)
    if trainer.is_main:
        dump_config(cfg, output_path(cfg, "config.yaml"))
    result = trainer.fit(resume=cfg.train.resume)
    if is_main_process():
        if train_set.bad_samples():
            log.warning("%s", train_set.bad_sample_summary())
        student_of(model).save_pretrained(output_path(cfg, "final"))
    return result


def run_evaluate(cfg: JobConfig, checkpoint: str | None = None) -> dict[str, float]:
    """Evaluate ``checkpoint`` (or ``model.pretrained``) on ``data.test_list`` (or ``val_list``),
    in the precision ``train.amp`` asks for."""
    ckpt = checkpoint or cfg.model.pretrained
    if not ckpt:
        raise ValueError("evaluate needs weights: pass --checkpoint or set model.pretrained")
    cfg = resolve_checkpoint_model(cfg, ckpt)  # clips at the size the saved model was trained at
    test_set = build_dataset(cfg, "test")
    model = build_model_from_checkpoint(cfg, ckpt, num_classes=head_outputs(cfg.finetune.head, test_set.num_classes))
    device = default_device()
    model.to(device).eval()
    amp_dtype, _ = resolve_amp(cfg.train.amp, device)
    loader = build_eval_loader(test_set, cfg.data.eval_batch_size, num_workers=cfg.train.num_workers)
    with autocast(amp_dtype, device):
        result = evaluate_views(model, loader, device, cfg.finetune.head == "regression")
    if is_main_process():
        write_json(output_path(cfg, "eval.json"), {"checkpoint": ckpt, **result})
    return result
