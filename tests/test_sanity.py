"""Sanity checks that catch a broken training loop: the real runners (the ones the CLI uses) must be
able to *learn* something small, not merely run.

- Fine-tuning a tiny VideoHybrid on twelve generated clips memorises them: evaluated on its own
  training list, accuracy reaches at least 95 %.
- Masked pre-training (pixel teacher, frame-wise causal decoder) drives its logged loss well below
  where it started (last window < 0.6 x first window; a working loop lands near 0.4).

Both run single-threaded: on a small shared CPU, two intra-op threads on these tiny tensors are far
slower than one. Sizes were chosen to pass with margin across seeds (see the values above).
"""

from __future__ import annotations

import pytest
import torch

from videomap.config import load_config
from videomap.engine import read_metrics
from videomap.tasks.finetune import run_finetune
from videomap.tasks.pretrain import run_pretrain

BASE = [
    "model.name=videomap_tiny", "model.img_size=32", "model.num_frames=4",
    "model.overrides={depth: 2, embed_dim: 64, attn_every: 2}", "model.drop_path_rate=0.0",
    "data.flip=false", "data.crop_scale=[0.9, 1.0]", "train.batch_size=4", "train.num_workers=0",
    "train.tensorboard=false", "train.plot=false", "train.weight_decay=0.0", "train.seed=0",
    "train.lr=1e-3", "train.save_every_steps=null",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(synthetic_videos):
    train, _ = synthetic_videos(num_train=12, num_val=0)
    return train


def test_finetuning_memorises_a_handful_of_clips(clips, tmp_path):
    cfg = load_config(None, BASE + [
        "task=finetune", f"data.train_list={clips}", f"data.val_list={clips}",  # training accuracy
        "train.epochs=80", "train.warmup_epochs=0", "train.eval_every_epochs=80", "train.log_every=30",
        "finetune.label_smoothing=0.0", f"train.output_dir={tmp_path / 'ft'}",
    ])
    result = run_finetune(cfg)
    assert result["eval"]["count"] == 12
    assert result["eval"]["top1"] >= 95.0, result["eval"]


def test_masked_pretraining_drives_its_loss_down(clips, tmp_path):
    out = tmp_path / "pre"
    cfg = load_config(None, BASE + [
        "task=pretrain", f"data.train_list={clips}", "pretrain.teacher=pixel", "pretrain.objective=frame",
        "pretrain.mask_type=attention", "pretrain.mask_ratio=0.5", "pretrain.decoder_dim=64",
        "pretrain.decoder_depth=1", "train.epochs=60", "train.warmup_epochs=5", "train.log_every=6",
        f"train.output_dir={out}",
    ])
    run_pretrain(cfg)
    losses = [r["loss"] for r in read_metrics(out) if r.get("split") == "train"]
    assert len(losses) == 30  # 60 epochs x 3 steps, one record per 6 steps
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], losses
