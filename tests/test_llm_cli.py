"""The Video-LLM commands end to end on tiny local models: ``llm-train`` (both stages, LoRA,
resume), ``llm-eval``, ``chat``, ``demo --llm --quick``, the ``llm`` job section and the paper
configs, and the engine's ``save_trainable_only`` checkpoints.

The language model is a 1-layer, 32-d Llama with a word-level tokenizer trained on the toy
demo's own questions (``videomap.llm.tiny``); the encoder a random 2-block hybrid of width 32 saved
with ``save_pretrained``; clips are the generated 8-frame 32x32 videos of ``tests/conftest.py``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from tests.helpers import real_video
from videomap.cli import main
from videomap.config import load_config
from videomap.engine import TrainConfig, Trainer, load_train_state
from videomap.llm.tiny import build_tiny_causal_lm, build_word_tokenizer
from videomap.models import create_model
from videomap.tasks.demo import read_clip_list
from videomap.tasks.llm_demo import caption_items, conversation_items, qa_items, vocabulary_texts

ROOT = Path(__file__).resolve().parents[1]
LLM_CONFIGS = ROOT / "configs" / "llm"
ENCODER = {"depth": 2, "embed_dim": 32, "attn_every": 2}


def _dump(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_videos):
    """Clips, conversation files, a tiny LM + tokenizer, a saved tiny encoder and a job file."""
    root = tmp_path_factory.mktemp("llm_cli")
    train_list, val_list = synthetic_videos(num_train=12, num_val=6)
    train, test = read_clip_list(train_list), read_clip_list(val_list)
    test_items = qa_items(test, seed=1)
    questions = [{"video_name": it["video"], "question_id": it["id"],
                  "question": it["conversations"][0]["value"].split("\n", 1)[1]} for it in test_items]
    answers = [{"question_id": it["id"], "answer": it["conversations"][1]["value"]} for it in test_items]
    tok = build_word_tokenizer(vocabulary_texts(), root / "tokenizer")
    lm = build_tiny_causal_lm(root / "lm", tok, hidden_size=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    encoder = create_model("videomap_tiny", num_classes=0, num_frames=4, img_size=32, **ENCODER)
    enc_dir = encoder.save_pretrained(root / "encoder")
    job = {
        "task": "llm",
        "llm": {"language_model": lm, "video_encoder": "videomap_tiny", "video_checkpoint": str(enc_dir),
                "video_overrides": ENCODER, "num_frames": 4, "img_size": 32, "spatial_pool": 2, "max_length": 128},
        "train": {"batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0, "num_workers": 0,
                  "log_every": 1, "tensorboard": False, "plot": False, "save_trainable_only": True},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return {
        "root": root, "job": str(root / "job.yaml"), "clips": [p for p, _ in test],
        "align": _dump(root / "align.json", caption_items(train)),
        "instruct": _dump(root / "instruct.json", conversation_items(train, seed=0)),
        "test_q": _dump(root / "test_q.json", questions), "test_a": _dump(root / "test_a.json", answers),
        "num_questions": len(test_items),
    }


def _train(setup, out: Path, *overrides: str, resume: bool = False) -> int:
    argv = ["llm-train", "--config", setup["job"], f"train.output_dir={out}", *overrides]
    return main(argv + (["--resume"] if resume else []))


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


@pytest.fixture(scope="module")
def stage1(setup) -> Path:
    out = setup["root"] / "align"
    assert _train(setup, out, "llm.stage=align", f"llm.train_json={setup['align']}", "train.epochs=1") == 0
    return out


@pytest.fixture(scope="module")
def stage2(setup, stage1) -> Path:
    out = setup["root"] / "instruct"
    assert _train(setup, out, "llm.stage=instruct", f"llm.init_from={stage1 / 'final'}",
                  f"llm.train_json={setup['instruct']}", "train.epochs=2", "train.save_every_steps=1",
                  "train.keep_last=null") == 0
    return out


def test_align_stage_saves_only_the_projector(stage1):
    final = stage1 / "final"
    saved = json.loads((final / "videomap_llm.json").read_text())
    assert saved["llm_weights"] == "source"  # the frozen LM is referenced, not copied
    assert (final / "projector.safetensors").is_file() and (final / "video_encoder" / "config.json").is_file()
    weights, state = load_train_state(_checkpoints(stage1)[-1])
    assert weights and all(k.startswith("projector.") for k in weights), sorted(weights)[:5]
    assert state["global_step"] == 3  # 12 conversations / batch 4
    assert load_config(stage1 / "config.yaml", command="llm-train").llm.stage == "align"


def test_instruct_stage_trains_the_lm_and_resumes_exactly(setup, stage1, stage2, tmp_path):
    final = stage2 / "final"
    assert json.loads((final / "videomap_llm.json").read_text())["llm_weights"] == "full"
    assert (final / "llm" / "config.json").is_file()
    ckpts = _checkpoints(stage2)
    assert [int(p.name.split("-")[1]) for p in ckpts] == list(range(1, 7))
    reference, _ = load_train_state(ckpts[-1])
    assert any(k.startswith("llm.") for k in reference) and any(k.startswith("projector.") for k in reference)
    assert not any(k.startswith("video_tower.") for k in reference)  # frozen: rebuilt, not stored
    # the projector starts from stage 1's, not from scratch
    first, _ = load_train_state(ckpts[0])
    stage1_weights, _ = load_train_state(_checkpoints(stage1)[-1])
    assert (first["projector.0.weight"] - stage1_weights["projector.0.weight"]).abs().max() < 0.05

    # interrupted after step 4 (epoch 2): resume rebuilds the frozen parts and matches the full run
    run = tmp_path / "resumed"
    shutil.copytree(stage2, run, ignore=shutil.ignore_patterns("checkpoint-5", "checkpoint-6", "final"))
    assert _train(setup, run, "llm.stage=instruct", f"llm.init_from={stage1 / 'final'}",
                  f"llm.train_json={setup['instruct']}", "train.epochs=2", "train.save_every_steps=1",
                  "train.keep_last=null", resume=True) == 0
    resumed, state = load_train_state(run / "checkpoint-6")
    assert state["global_step"] == 6 and set(resumed) == set(reference)
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k
    # the saved model is what from_pretrained restores
    from videomap.llm import VideoLLM

    model = VideoLLM.from_pretrained(run / "final")
    for k, v in model.state_dict().items():
        if k in reference:
            assert torch.equal(v, reference[k]), k


def test_fsdp_run_saves_the_whole_trained_model(setup, stage1, tmp_path):
    """Two processes under torchrun (Gloo on CPU): the final directory holds the gathered tensors,
    not one rank's shards."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    out = tmp_path / "fsdp"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "videomap.cli", "llm-train", "--config",
         setup["job"], "llm.stage=instruct", f"llm.init_from={stage1 / 'final'}", f"llm.train_json={setup['instruct']}",
         "train.epochs=1", "train.batch_size=2", "train.distributed=fsdp", f"train.output_dir={out}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mode fsdp" in proc.stderr
    weights, state = load_train_state(_checkpoints(out)[-1])
    assert state["global_step"] == 3 and any(k.startswith("llm.") for k in weights)  # 12 / (2 x 2 ranks)
    from videomap.llm import VideoLLM

    saved = VideoLLM.from_pretrained(out / "final").state_dict()
    for k, v in weights.items():
        assert torch.equal(saved[k], v), k


def test_llm_eval_scores_every_question_and_resumes(setup, stage2, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["llm-eval", "--config", setup["job"], "--checkpoint", str(stage2 / "final"),
            "llm.eval_format=msrvtt_qa", f"llm.eval_json={setup['test_q']}", f"llm.eval_answers_json={setup['test_a']}",
            "llm.max_new_tokens=6", f"train.output_dir={out}"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "eval_msrvtt_qa.json").read_text())
    assert printed["count"] == result["count"] == setup["num_questions"]
    assert 0.0 <= result["accuracy"] <= 1.0 and result["failed"] == 0
    lines = (out / "predictions_msrvtt_qa.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) == setup["num_questions"] and all(isinstance(r["pred"], str) for r in records)
    assert sum(r["correct"] for r in records) == result["correct"]
    assert main(argv) == 0  # a rerun finds every answer in the predictions file
    assert len((out / "predictions_msrvtt_qa.jsonl").read_text().splitlines()) == len(lines)


def test_llm_eval_needs_a_model_and_questions(setup, tmp_path, capsys):
    assert main(["llm-eval", "--config", setup["job"], f"llm.eval_json={setup['test_q']}",
                 f"train.output_dir={tmp_path}"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["llm-eval", "--config", setup["job"], "--checkpoint", str(tmp_path),
                 f"train.output_dir={tmp_path}"]) == 2
    assert "llm.eval_json" in capsys.readouterr().err


def test_chat_answers_and_names_bad_arguments(setup, stage2, tmp_path, capsys):
    from videomap.data.media import load_video
    from videomap.llm import VideoLLM
    from videomap.llm.conversation import build_prompt

    final = str(stage2 / "final")
    video = real_video("carphone_pristine.mp4", fallback=setup["clips"][0])  # a real camera MP4 when installed
    assert main(["chat", "--checkpoint", final, "--video", video, "what happens in this video?",
                 "--max-new-tokens", "6"]) == 0
    answer = capsys.readouterr().out.strip()
    # the same greedy answer as the Python API gives
    model = VideoLLM.from_pretrained(final)
    ids = build_prompt(model.tokenizer, "what happens in this video?", "video")[None]
    new = model.generate(ids, videos=load_video(video, 4, 32)[None], max_new_tokens=6)
    assert answer == model.tokenizer.decode(new[0], skip_special_tokens=True).strip()
    assert len(answer.split()) <= 6
    assert main(["chat", "--checkpoint", final, "what kind of motion is it?"]) == 0  # text only
    assert main(["chat", "--checkpoint", final, "--video", str(tmp_path / "missing.mp4"), "what?"]) == 2
    assert "--video" in capsys.readouterr().err
    assert main(["chat", "--checkpoint", str(tmp_path), "--video", setup["clips"][0], "what?"]) == 2
    assert "videomap_llm.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["chat", "--video", setup["clips"][0], "what?"])
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def test_lora_instruct_stage_saves_an_adapter(setup, stage1, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert _train(setup, out, "llm.stage=instruct", f"llm.init_from={stage1 / 'final'}",
                  f"llm.train_json={setup['instruct']}", "train.max_steps=2",
                  "llm.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}") == 0
    saved = json.loads((out / "final" / "videomap_llm.json").read_text())
    assert saved["llm_weights"] == "lora" and (out / "final" / "llm_adapter").is_dir()
    weights, _ = load_train_state(_checkpoints(out)[-1])
    assert {k.split(".")[0] for k in weights} == {"llm", "projector"}
    assert all("lora_" in k for k in weights if k.startswith("llm."))


def test_init_from_conflicts_are_named(setup, stage1, tmp_path, capsys):
    rc = _train(setup, tmp_path / "x", "llm.stage=instruct", f"llm.init_from={stage1 / 'final'}",
                f"llm.train_json={setup['instruct']}", "llm.video_encoder=videomap_small")
    err = capsys.readouterr().err
    assert rc == 2 and "llm.video_encoder is 'videomap_small'" in err and "videomap_tiny" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.parametrize("override,message", [
    ("llm.stage=pretrain", "llm.stage: expected one of 'align', 'instruct'"),
    ("llm.eval_format=nextqa", "llm.eval_format: expected one of 'msrvtt_qa', 'activitynet_qa', 'tgif_qa', "
                               "'multiple_choice'"),
    ("llm.projector=mlp3x", "projector: expected one of mlp2x_gelu, linear"),
    ("llm.llm_dtype=fp8", "llm.llm_dtype: expected one of"),
    ("llm.lora={r: 8}", "lora applies to the instruct stage only"),
    ("llm.lora.rank=8", "unknown config key llm.lora.rank; valid keys in llm.lora: alpha, dropout, r, "
                        "target_modules"),
    ("llm.spatial_pool=0", "spatial_pool: expected an integer >= 1, got 0"),
    ("llm.trainjson=x.json", "unknown config key llm.trainjson; valid keys in llm: .*train_json"),
])
def test_llm_section_is_validated_when_loaded(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["task=llm", override], command="llm-train")


def test_llm_commands_check_the_job(setup, tmp_path, capsys):
    pre = str(ROOT / "configs" / "pretrain" / "videomap_m_k400.yaml")
    assert main(["llm-train", "--config", pre, f"train.output_dir={tmp_path}"]) == 2
    assert "videomap pretrain" in capsys.readouterr().err
    assert main(["llm-train", "task=llm", f"llm.train_json={setup['align']}", f"train.output_dir={tmp_path}"]) == 2
    assert "llm.language_model is not set" in capsys.readouterr().err
    assert main(["llm-train", "--config", setup["job"], f"train.output_dir={tmp_path}"]) == 2
    assert "llm.train_json is not set" in capsys.readouterr().err
    assert main(["llm-train", "--config", setup["job"], "llm.language_model=/nonexistent/lm",
                 f"llm.train_json={setup['align']}",
                 f"train.output_dir={tmp_path}"]) == 2
    assert "/nonexistent/lm" in capsys.readouterr().err


# --------------------------------------------------------------------------- paper configs


def _paper(name: str):
    return load_config(LLM_CONFIGS / name, command="llm-train")


def test_paper_configs_reproduce_videomap_llava():
    """VideoMAP §3.5/§4.2 in Video-LLaVA's recipe (scripts/v1_5/{pretrain,finetune,finetune_lora}.sh)."""
    align, instruct = _paper("videomap_llava_7b_align.yaml"), _paper("videomap_llava_7b_instruct.yaml")
    lora = _paper("videomap_llava_7b_instruct_lora.yaml")
    for cfg in (align, instruct, lora):
        s, t = cfg.llm, cfg.train
        assert cfg.task == "llm" and s.video_encoder == "videomap_middle" and s.language_model == "lmsys/vicuna-7b-v1.5"
        assert s.local_files_only and s.projector == "mlp2x_gelu" and s.feature_layer == -2
        assert (s.num_frames, s.img_size, s.spatial_pool, s.temporal_pool) == (8, 224, 1, 1)
        assert s.image_encoder == "videomap_base" and s.image_overrides["depth"] == 24
        assert s.image_overrides["attn_every"] == 3 and s.image_overrides["attn_wiring"] == "branch"
        assert t.epochs == 1 and t.warmup_epochs == 0.03 and t.min_lr == 0 and t.weight_decay == 0
        assert t.amp == "bf16" and t.save_trainable_only
    assert align.llm.stage == "align" and align.train.lr == 1e-3
    assert align.train.batch_size * align.train.accum_steps * 8 == 256  # on 8 GPUs
    assert instruct.llm.stage == "instruct" and instruct.train.lr == 2e-5 and instruct.llm.lora is None
    assert instruct.train.batch_size * instruct.train.accum_steps * 8 == 128
    assert instruct.llm.init_from == f"{align.train.output_dir}/final"
    assert lora.llm.lora.r == 128 and lora.llm.lora.alpha == 256 and lora.train.lr == 2e-4
    assert lora.train.batch_size * lora.train.accum_steps == 128  # one GPU
    evals = {name: load_config(LLM_CONFIGS / f"videomap_llava_7b_eval_{name}.yaml", command="llm-eval")
             for name in ("msrvtt", "tgif", "activitynet")}
    for name, cfg in evals.items():
        s = cfg.llm
        assert s.eval_format == f"{name}_qa" and s.init_from == f"{instruct.train.output_dir}/final"
        assert s.eval_json.endswith("test_q.json") and s.eval_answers_json.endswith("test_a.json")
    outs = [c.train.output_dir for c in (align, instruct, lora, *evals.values())]
    assert len(set(outs)) == len(outs) and all(o.startswith("runs/llm/") for o in outs)
    for path in glob.glob(str(LLM_CONFIGS / "*.yaml")):
        with open(path) as f:
            assert f.readline().startswith("# "), path


def test_paper_encoders_build():
    """The video and image encoders of the paper configs exist at the stated sizes (on the meta device)."""
    s = _paper("videomap_llava_7b_align.yaml").llm
    with torch.device("meta"):
        video = create_model(s.video_encoder, num_classes=0, num_frames=s.num_frames, img_size=s.img_size,
                             **s.video_overrides)
        image = create_model(s.image_encoder, num_classes=0, num_frames=1, img_size=s.img_size, **s.image_overrides)
    assert video.embed_dim == 576 and len(video.attn_layers) == 8
    assert image.embed_dim == 768 and len(image.layers) == 24 and len(image.attn_layers) == 8
    # MAP-B as MAP's code builds it: a Vim-B-sized Mamba stack (98M) plus 8 attention blocks of MLP ratio 2
    assert 125e6 < sum(p.numel() for p in image.parameters()) < 145e6


# --------------------------------------------------------------------------- engine: save_trainable_only


class _PartlyFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(torch.relu(self.backbone(x)))


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return x, x.sum(0, keepdim=True)


def _fit(out: Path, resume: bool = False, model: nn.Module | None = None, **kw) -> Trainer:
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, output_dir=str(out), save_every_steps=2, keep_last=None,
                      distributed="none", tensorboard=False, plot=False, log_every=100, save_trainable_only=True, **kw)
    trainer = Trainer(model or _PartlyFrozen(), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), _Data(), cfg)
    trainer.fit(resume=resume)
    return trainer


def test_save_trainable_only_keeps_frozen_weights_out_and_resumes_exactly(tmp_path):
    ref = _fit(tmp_path / "ref")
    weights, _ = load_train_state(tmp_path / "ref" / "checkpoint-12")
    assert set(weights) == {"head.weight", "head.bias", "calls"}  # trainable parameters and buffers
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", run, ignore=shutil.ignore_patterns("checkpoint-1[02]", "checkpoint-8"))
    resumed = _fit(run, resume=True)
    assert resumed.resumed_from.name == "checkpoint-6"
    for k, v in ref.unwrapped_model.state_dict().items():
        assert torch.equal(v, resumed.unwrapped_model.state_dict()[k]), k

    other = _PartlyFrozen()
    other.backbone.requires_grad_(True)  # another trainable set than the checkpoint's
    with pytest.raises(ValueError, match=r"missing \['backbone.bias', 'backbone.weight'\]"):
        _fit(tmp_path / "ref", resume=True, model=other)
    with pytest.raises(ValueError, match="save_trainable_only does not cover EMA"):
        TrainConfig(save_trainable_only=True, ema_decay=0.99)


# --------------------------------------------------------------------------- the toy demo


def test_llm_demo_quick_end_to_end(tmp_path):
    assert main(["demo", "--llm", "--quick", "--out", str(tmp_path / "llm"), "--demo-dir", str(tmp_path / "demo")]) == 0
    res = json.loads((tmp_path / "llm" / "results.json").read_text())
    assert res["num_questions"] == 48 and res["quick"]  # 12 held-out clips x 4 question types
    assert res["chance"]["event"] == pytest.approx(100 / 6) and res["chance"]["yes_no"] == 50.0
    for arm in ("video", "text_only"):
        assert set(res[arm]) == {"event", "direction", "kind", "yes_no", "all"}
        assert all(0.0 <= v <= 100.0 for v in res[arm].values())
    assert (tmp_path / "demo" / "pretrain" / "encoder.safetensors").is_file()  # the main demo's pre-training ran
    assert (tmp_path / "llm" / "instruct" / "final" / "videomap_llm.json").is_file()
    assert (tmp_path / "llm" / "results.md").read_text().startswith("# videomap demo --llm (quick)")
    assert main(["demo", "--demo-dir", str(tmp_path / "demo"), "--quick"]) == 2  # --demo-dir needs --llm
