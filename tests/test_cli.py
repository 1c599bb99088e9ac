"""Configs, overrides and the command line, end to end on generated videos."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os

import pytest
import torch

from tests.helpers import tiny_model
from videomap.cli import COMMANDS, _parser, main
from videomap.config import load_config, parse_override
from videomap.models import create_model, load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("_"))
TINY = ["model.img_size=32", "model.num_frames=4", "model.overrides={depth: 4, embed_dim: 32, attn_every: 2}"]


def test_overrides_and_numbers():
    cfg = load_config(None, ["train.epochs=3", "blr=1e-3", "model.name=videomamba_small", "data.crop_scale=[0.5, 1]"])
    assert cfg.train.epochs == 3 and cfg.blr == 1e-3 and isinstance(cfg.blr, float)
    assert cfg.model.name == "videomamba_small" and cfg.data.crop_scale == (0.5, 1)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="key=value"):
        parse_override("train.epochs")


def test_every_subcommand_has_a_handler():
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_each_main_call_logs_to_the_stderr_of_its_time():
    """The log handler belongs to one ``main()`` call: the next call in the same process writes to
    the ``sys.stderr`` current then, and nothing is left on the root logger."""
    handlers = list(logging.getLogger().handlers)
    for _ in range(2):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["extract"]) == 2  # sizes the threads (a log line), then refuses: no extract.list
        assert "[threads] compute threads:" in err.getvalue(), err.getvalue()
        assert "videomap extract: error: extract.list is not set" in err.getvalue()
        assert logging.getLogger().handlers == handlers


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key train\.epoch; valid keys in train: .*epochs"):
        load_config(None, ["train.epoch=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle:\n  name: videomap_tiny\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config key modle; valid keys: .*model"):
        load_config(bad)
    with pytest.raises(ValueError, match="expected a number"):
        load_config(None, ["blr=fast"])
    assert main(["finetune", "--config", str(bad)]) == 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_configs_parse_and_build(path):
    cfg = load_config(path)
    with torch.device("meta"):
        model = create_model(cfg.model.name, num_classes=cfg.model.num_classes or 400,
                             num_frames=cfg.model.num_frames, img_size=cfg.model.img_size, **cfg.model.overrides)
    small = os.sep + "small" + os.sep in path  # the CPU-scale recipes: a 0.25M-parameter model
    assert sum(p.numel() for p in model.parameters()) > (1e5 if small else 1e6)


@pytest.fixture(scope="module")
def video_lists(synthetic_videos):
    return synthetic_videos(num_train=12, num_val=6)


def test_pretrain_command_writes_a_loadable_encoder(tmp_path, video_lists):
    train_list, _ = video_lists
    out = tmp_path / "pt"
    rc = main(["pretrain", "--config", os.path.join(ROOT, "configs/pretrain/videomap_m_k400.yaml"), *TINY,
               "model.name=videomap_tiny", "pretrain.teacher=pixel", "pretrain.decoder_dim=32",
               "pretrain.decoder_depth=1", f"data.train_list={train_list}", "data.root=''", "train.batch_size=4",
               "train.epochs=1", "train.amp=none", "train.num_workers=0", "train.tensorboard=false",
               f"train.output_dir={out}"])
    assert rc == 0
    clf = tiny_model("videomap_tiny", num_classes=6)
    missing, unexpected = load_pretrained(clf, out / "encoder.safetensors", strict=True)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").exists()


def test_demo_quick_end_to_end(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    with open(tmp_path / "demo" / "results.json") as f:
        res = json.load(f)
    for run in ("pretrained", "scratch", "single_frame"):
        assert res[run]["count"] == 12  # every validation video evaluated once
        assert 0 <= res[run]["top1"] <= 100
    assert res["chance"] == 100 / 6 and res["num_val"] == 12 and res["total_s"] > 0
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "predictions.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "finetune_pretrained" / "final" / "model.safetensors").exists()
