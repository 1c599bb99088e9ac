"""``videomap pretrain``: masked pre-training (VideoMAP frame-wise AR, token-wise AR, or UMT)."""

from __future__ import annotations

import logging

from ..config import JobConfig, dump_config
from ..data import collate_repeated
from ..engine import Trainer, is_main_process
from ..pretrain import MaskedPretrainer, build_teacher
from .common import build_dataset, build_model, output_path

log = logging.getLogger(__name__)


def build_pretrainer(cfg: JobConfig) -> MaskedPretrainer:
    p = cfg.pretrain
    encoder = build_model(cfg, num_classes=0)
    teacher = build_teacher(p.teacher, p.clip_model, patch_size=encoder.patch_size, cache=p.teacher_cache,
                            local_files_only=p.local_files_only, clip_target=p.clip_target)
    return MaskedPretrainer(encoder, teacher, objective=p.objective, mask_type=p.mask_type, mask_ratio=p.mask_ratio,
                            decoder_dim=p.decoder_dim, decoder_depth=p.decoder_depth, loss_on=p.loss_on,
                            target_norm=p.target_norm, cls_weight=p.cls_weight, student=p.align_student)


def run_pretrain(cfg: JobConfig) -> dict:
    """Pre-train and write ``encoder.safetensors`` (encoder only) into the output directory."""
    dataset = build_dataset(cfg, "train")
    model = build_pretrainer(cfg)
    collate = collate_repeated if dataset.num_sample > 1 else None  # the authors' pre-training uses 1
    trainer = Trainer(model, lambda m, batch: m(batch[0]), dataset, cfg.resolved_train(), collate_fn=collate)
    if trainer.is_main:
        dump_config(cfg, output_path(cfg, "config.yaml"))
    result = trainer.fit(resume=cfg.train.resume)
    path = None
    if is_main_process():
        path = model.save_encoder(output_path(cfg, "encoder.safetensors"))
        log.info("encoder weights: %s", path)
        if dataset.bad_samples():
            log.warning("%s", dataset.bad_sample_summary())
    return {**result, "encoder": path}
