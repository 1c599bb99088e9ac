"""Fine-tuning paths beyond plain classification: self-distillation, regression, bad data, extraction."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from videomap.config import load_config
from videomap.data import make_broken_videos, write_video
from videomap.finetune import FeatureDistiller
from videomap.models import create_model
from videomap.tasks.extract import run_extract, window_starts
from videomap.tasks.finetune import run_finetune

TINY = ["model.name=videomap_tiny", "model.img_size=32", "model.num_frames=4",
        "model.overrides={depth: 4, embed_dim: 32, attn_every: 2}", "train.batch_size=4", "train.epochs=1",
        "train.num_workers=0", "train.tensorboard=false", "train.plot=false", "data.flip=false"]


@pytest.fixture(scope="module")
def lists(synthetic_videos):
    return synthetic_videos(num_train=20, num_val=4)


@pytest.mark.parametrize("target,loss", [("tokens", "cos"), ("cls", "l2"), ("cls", "cos")])
def test_self_distillation_reduces_feature_loss(target, loss):
    torch.manual_seed(0)
    teacher = create_model("videomamba_tiny", num_classes=0, img_size=32, num_frames=4, depth=2, embed_dim=32)
    student = create_model("videomamba_tiny", num_classes=3, img_size=32, num_frames=4, depth=2, embed_dim=48)
    model = FeatureDistiller(student, teacher, loss=loss, target=target)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("_teacher") or "teacher" in k for k in model.state_dict())
    x = torch.randn(4, 3, 4, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        _, value = model(x)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.lr_layer_id("student.layers.1.norm.weight") == 2 and model.lr_layer_id("proj.weight") == 3
    if loss == "cos":
        assert 0 <= losses[-1] <= 4


def test_token_distillation_is_the_authors_form():
    """Default: every token, through a trained norm + Linear head, 2 - 2 cos of the L2-normalised pair
    (videomamba/image_sm/models/videomamba_distill.py); ``cls`` keeps the cls-only variant."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    teacher = create_model("videomamba_tiny", num_classes=0, img_size=32, num_frames=4, depth=2, embed_dim=32)
    student = create_model("videomamba_tiny", num_classes=3, img_size=32, num_frames=4, depth=2, embed_dim=48)
    model = FeatureDistiller(student, teacher).eval()
    assert (model.target, model.loss) == ("tokens", "cos")
    head = {n for n, p in model.named_parameters() if n.startswith("proj.") and p.requires_grad}
    assert head == {"proj.norm.weight", "proj.linear.weight", "proj.linear.bias"}  # trained with the student
    x = torch.randn(2, 3, 4, 32, 32)
    logits, value = model(x)
    with torch.no_grad():
        s, t = student.forward_features(x), teacher.forward_features(x)
        assert s.shape[1] == 1 + 4 * 2 * 2
        cos = (F.normalize(model.proj(s), dim=-1) * F.normalize(t, dim=-1)).sum(-1)  # (B, tokens)
    assert logits.shape == (2, 3)
    assert value.item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-5)
    assert value.item() != pytest.approx((2 - 2 * cos[:, 0]).mean().item(), rel=1e-3)
    value.backward()
    assert model.proj.linear.weight.grad.abs().sum() > 0 and model.proj.norm.weight.grad.abs().sum() > 0

    cls_only = FeatureDistiller(student, teacher, target="cls").eval()
    with torch.no_grad():
        expected = (2 - 2 * F.cosine_similarity(cls_only.proj(s[:, 0]), t[:, 0], dim=-1)).mean()
        assert cls_only(x)[1].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="distill target"):
        FeatureDistiller(student, teacher, target="patches")


def test_distillation_finetune_run(tmp_path, lists):
    train, val = lists
    teacher = create_model("videomap_tiny", num_classes=0, img_size=32, num_frames=4, depth=4, embed_dim=32,
                           attn_every=2)
    teacher.save_pretrained(tmp_path / "teacher")
    run = ["finetune.distill_model=videomap_tiny", f"finetune.distill_checkpoint={tmp_path / 'teacher'}",
           f"data.train_list={train}", f"data.val_list={val}"]
    with pytest.raises(ValueError, match="does not fit"):  # the registry's teacher is 192-d, the file 32-d
        run_finetune(load_config(None, TINY + run + [f"train.output_dir={tmp_path / 'run0'}"]))
    cfg = load_config(None, TINY + run + [f"train.output_dir={tmp_path / 'run'}",
                                          "finetune.distill_overrides={depth: 4, embed_dim: 32, attn_every: 2}"])
    result = run_finetune(cfg)
    assert "distill" in result["train"] and result["eval"]["count"] == 4
    assert not any("teacher" in k for k in load_file(str(tmp_path / "run" / "final" / "model.safetensors")))
    cfg = load_config(None, TINY + [f"data.train_list={train}", f"train.output_dir={tmp_path / 'run2'}",
                                    "finetune.distill_model=videomap_tiny"])
    with pytest.raises(ValueError, match="distill_checkpoint"):
        run_finetune(cfg)


def test_regression_head_on_an_lvu_list(tmp_path, lists):
    train, _ = lists
    with open(train) as f:
        rows = [line.strip().split(",") for line in f]
    lvu = tmp_path / "lvu.csv"
    lvu.write_text("".join(f"{p},{int(y) * 0.5 + 0.25},{8.0}\n" for p, y in rows))
    cfg = load_config(None, TINY + [f"data.train_list={lvu}", f"data.val_list={lvu}", "data.list_format=lvu",
                                    "finetune.head=regression", f"train.output_dir={tmp_path / 'reg'}"])
    result = run_finetune(cfg)
    assert "mse" in result["eval"] and result["eval"]["count"] == len(rows)
    head = load_file(str(tmp_path / "reg" / "final" / "model.safetensors"))["head.weight"]
    assert head.shape[0] == 1


def test_finetune_epoch_with_ten_percent_broken_files_of_every_kind(tmp_path, lists, caplog):
    train, _ = lists
    broken = make_broken_videos(tmp_path / "broken")  # missing, zero-byte, truncated (2 ways), text, 1 frame
    with open(train) as f:
        good = f.read().splitlines()
    lines = [good[i % len(good)] for i in range(9 * len(broken))]
    for k, path in enumerate(broken.values()):  # one broken entry in every ten
        lines.insert(10 * k + 5, f"{path},0")
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("\n".join(lines) + "\n")
    assert len(lines) == 10 * len(broken)
    cfg = load_config(None, TINY + [f"data.train_list={mixed}", f"train.output_dir={tmp_path / 'ft'}",
                                    "train.batch_size=6", "data.max_bad_fraction=0.15"])
    with caplog.at_level(logging.INFO, logger="videomap"):
        result = run_finetune(cfg)
    assert result["global_step"] == 10  # the whole epoch ran: 60 samples / batch 6
    out = "\n".join(r.getMessage() for r in caplog.records if r.name == "videomap.engine.trainer")
    assert f"[data] epoch 0: {len(broken)} " in out or str(len(broken)) in out.split("[data] epoch 0:")[1][:80]
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("videomap.data")]
    for path in broken.values():
        assert out.count(path) == 1, f"{path} reported {out.count(path)} times in the epoch summary"
        assert sum(path in m for m in logged) == 1, f"{path} logged {sum(path in m for m in logged)} times"


def test_extract_slides_over_long_videos(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    long_video, short_video = tmp_path / "long.mp4", tmp_path / "short.mp4"
    write_video(str(long_video), frames)
    write_video(str(short_video), frames[:3])
    lst = tmp_path / "videos.txt"
    lst.write_text(f"{long_video}\n{short_video} 0\n{tmp_path / 'missing.mp4'}\n")
    weights = tmp_path / "w"
    create_model("videomamba_tiny", num_classes=0, img_size=32, num_frames=4, depth=2,
                 embed_dim=32).save_pretrained(weights)
    base = ["model.name=videomamba_tiny", "model.img_size=32", "model.num_frames=4",
            "model.overrides={depth: 2, embed_dim: 32}", f"extract.list={lst}", "extract.frame_stride=2"]
    res = run_extract(load_config(None, base + [f"extract.output_dir={tmp_path / 'f'}"]), str(weights))
    assert res["written"] == 2 and res["failed"] == [str(tmp_path / "missing.mp4")]
    long_feats = load_file(str(tmp_path / "f" / "long.safetensors"))["features"]
    assert long_feats.shape == (len(window_starts(20, 4, 4)), 32) == (5, 32)  # 40 frames / stride 2 / window 4
    assert load_file(str(tmp_path / "f" / "short.safetensors"))["features"].shape == (1, 32)
    # resumable: finished videos are not recomputed
    mtime = os.path.getmtime(tmp_path / "f" / "long.safetensors")
    run_extract(load_config(None, base + [f"extract.output_dir={tmp_path / 'f'}"]), str(weights))
    assert os.path.getmtime(tmp_path / "f" / "long.safetensors") == mtime
    res = run_extract(load_config(None, base + [f"extract.output_dir={tmp_path / 'n'}", "extract.format=npy",
                                                "extract.window_stride=2", "extract.pool=mean"]), str(weights))
    assert np.load(tmp_path / "n" / "long.npy").shape == (9, 32)


def test_window_starts_cover_the_end():
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(3, 4, 4) == [0]
    assert window_starts(8, 4, 4) == [0, 4]
