"""Every shipped recipe under ``configs/``: it parses, keeps the values the papers give, and runs one
optimizer step through the real task runner on generated videos with a tiny model.

The step-runs shrink only what makes a recipe slow (resolution, frames, depth, width, batch, the
CLIP teacher, the decoder, the self-distillation teacher) and keep everything the recipe decides:
the task (which picks the runner), the objective, the mask, sampling, augmentation, Mixup/CutMix,
the head, layer decay and the evaluation views.
"""

from __future__ import annotations

import functools
import glob
import os

import pytest
import torch

import videomap
from videomap import create_model, list_models
from videomap.config import load_config
from videomap.tasks.finetune import run_finetune
from videomap.tasks.pretrain import run_pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("_"))
IMG, FRAMES = 32, 4


def rel(path: str) -> str:
    return os.path.relpath(path, CONFIG_DIR)


@functools.cache
def cfg_of(name: str):
    """The parsed recipe (cached: treat as read-only)."""
    return load_config(os.path.join(CONFIG_DIR, name))


def shipped(prefix: str) -> list[str]:
    return [rel(p) for p in CONFIGS if rel(p).startswith(prefix)]


FINETUNE = shipped("finetune/")
PRETRAIN = shipped("pretrain/")


@pytest.fixture(scope="module")
def data(synthetic_videos, tmp_path_factory):
    """Generated videos (train/val ``path,label`` lists) plus the same clips as an LVU-style list."""
    d = tmp_path_factory.mktemp("configs_data")
    train, val = synthetic_videos(num_train=8, num_val=4, size=IMG)
    lists = {"video": (train, val)}
    lvu = []
    for src in (train, val):
        dst = str(d / os.path.basename(src).replace(".csv", "_lvu.csv"))
        with open(src) as fin, open(dst, "w") as fout:
            for i, line in enumerate(fin):
                path, label = line.strip().split(",")
                fout.write(f"{path},{int(label) * 0.5 + 1.0},{60.0 + i}\n")  # path,real-valued target,duration
        lvu.append(dst)
    lists["lvu"] = tuple(lvu)
    return {"dir": d, "lists": lists, "teachers": {}}


# The recipe's distillation teacher, shrunk like the student (a different width, so the student's
# projection to the teacher width is exercised).
TEACHER_ARCH = {"depth": 2, "embed_dim": 24}


def distill_teacher(data, name: str) -> str:
    """A trained-teacher stand-in at the tiny size, written once with ``save_pretrained``."""
    if name not in data["teachers"]:
        torch.manual_seed(0)
        teacher = create_model(name, num_classes=0, num_frames=FRAMES, img_size=IMG, **TEACHER_ARCH)
        data["teachers"][name] = teacher.save_pretrained(os.path.join(data["dir"], f"teacher_{name}"))
    return data["teachers"][name]


def tiny_overrides(cfg, data, out_dir: str) -> list[str]:
    name = cfg.model.name
    arch = ["depth: 2", "embed_dim: 32"]
    if name.startswith("videomap"):
        arch.append("attn_every: 2")
    if name.startswith("vit"):
        arch.append("num_heads: 2")
    train, val = data["lists"]["lvu" if cfg.data.list_format == "lvu" else "video"]
    ov = [
        f"model.img_size={IMG}", f"model.num_frames={FRAMES}", f"model.overrides={{{', '.join(arch)}}}",
        "model.pretrained=null",
        f"data.train_list={train}", f"data.val_list={val}", "data.test_list=null",
        "train.batch_size=2", "train.accum_steps=1", "train.epochs=1", "train.max_steps=1", "train.amp=none",
        "train.num_workers=0", "train.tensorboard=false", "train.plot=false", f"train.output_dir={out_dir}",
        "min_blr=null", "train.min_lr=0", "train.save_every_steps=null", "train.resume=false",
    ]
    if cfg.task == "pretrain":
        ov += ["pretrain.teacher=pixel", "pretrain.decoder_dim=32", "pretrain.decoder_depth=1",
               "pretrain.teacher_cache=0"]
    if cfg.finetune.distill_model:
        teacher = cfg.finetune.distill_model
        ov += [f"finetune.distill_checkpoint={distill_teacher(data, teacher)}",
               "finetune.distill_overrides={depth: 2, embed_dim: 24}"]
    return ov


def test_configs_are_shipped():
    assert len(FINETUNE) >= 30 and len(PRETRAIN) >= 10
    for sub in ("finetune", "pretrain/ablations", "finetune/ablations"):
        assert os.path.isfile(os.path.join(CONFIG_DIR, sub, "_k400small_base.yaml" if "ablations" in sub
                                           else "_k400_base.yaml"))


@pytest.mark.parametrize("name", FINETUNE + PRETRAIN)
def test_config_parses_and_names_its_task(name):
    cfg = cfg_of(name)
    assert cfg.task == ("finetune" if name.startswith("finetune/") else "pretrain")
    assert cfg.model.name in list_models()
    assert cfg.blr is not None and cfg.blr > 0  # lr follows the global batch
    assert cfg.train.output_dir.startswith(f"runs/{cfg.task}/")
    with open(os.path.join(CONFIG_DIR, name)) as f:
        assert f.readline().startswith("# "), "each recipe opens with a comment naming what it reproduces"


def test_output_dirs_are_unique():
    outs = [cfg_of(n).train.output_dir for n in FINETUNE + PRETRAIN]
    assert len(outs) == len(set(outs))


def test_pretrained_paths_point_at_shipped_runs():
    """``model.pretrained`` under runs/ must be what another shipped recipe writes."""
    writes = {}
    for n in FINETUNE + PRETRAIN:
        cfg = cfg_of(n)
        suffix = "encoder.safetensors" if cfg.task == "pretrain" else "final"
        writes[f"{cfg.train.output_dir}/{suffix}"] = n
    by_override: set[str] = set()
    for n in FINETUNE:
        cfg = cfg_of(n)
        for path in (cfg.model.pretrained, cfg.finetune.distill_checkpoint):
            if path and path.startswith("runs/") and path not in by_override:
                assert path in writes, f"{n}: {path} is written by no shipped recipe"


def test_k400_recipes():
    for n in [n for n in FINETUNE if "k400" in n]:
        cfg = cfg_of(n)
        assert (cfg.data.test_clips, cfg.data.test_crops) == (4, 3), n
        assert cfg.model.num_classes == 400 and cfg.data.flip and cfg.data.sampling == "segment", n
    for size, dp, epochs in (("t", 0.1, 70), ("s", 0.35, 50), ("m", 0.8, 50)):
        cfg = cfg_of(f"finetune/videomamba_{size}_k400.yaml")
        assert cfg.blr == 2e-4 and cfg.model.drop_path_rate == dp and cfg.train.epochs == epochs
        assert cfg.model.num_frames == 8 and cfg.model.img_size == 224
        assert cfg.train.layer_decay == 0.75  # run_class_finetuning.py's default, the scripts pass none
    for size in "mbl":
        cfg = cfg_of(f"finetune/videomap_{size}_k400.yaml")
        assert cfg.train.epochs == 45 and cfg.blr == 1e-4 and cfg.train.layer_decay == 0.8
        assert cfg.model.pretrained == f"runs/pretrain/videomap_{size}_k400/encoder.safetensors"
    assert [cfg_of(f"finetune/videomap_m_k400{s}.yaml").model.num_frames for s in ("", "_f16", "_f32")] == [8, 16, 32]


def test_ssv2_recipes():
    for n in [n for n in FINETUNE if "ssv2" in n]:
        cfg = cfg_of(n)
        assert cfg.data.flip is False, n
        assert (cfg.data.test_clips, cfg.data.test_crops) == (2, 3), n
        assert cfg.model.num_classes == 174 and cfg.data.sampling == "segment", n
    for size, dp, epochs in (("t", 0.1, 35), ("s", 0.35, 30), ("m", 0.8, 30)):
        cfg = cfg_of(f"finetune/videomamba_{size}_ssv2.yaml")
        assert cfg.blr == 4e-4 and cfg.model.drop_path_rate == dp and cfg.train.epochs == epochs


SUPERVISED_M = {f"finetune/videomamba_m_{s}.yaml" for s in ("k400", "k400_f16", "k400_distill", "ssv2")}


def test_shared_finetune_recipe():
    for n in FINETUNE:
        cfg = cfg_of(n)
        t, d, f = cfg.train, cfg.data, cfg.finetune
        assert t.betas == (0.9, 0.999) and t.warmup_epochs == 5 and t.amp == "bf16", n
        # REFERENCE §9: the released layer-decay grouping, min_lr 1e-6 per 256 clips, no clipping
        assert t.layer_decay_mode == "released" and cfg.is_given("train.layer_decay_mode"), n
        assert t.layer_decay in (0.75, 0.8) and t.clip_grad is None and cfg.min_blr == 1e-6, n
        # 0.8 where the authors' script passes --layer_decay 0.8 (after masked pre-training, and the
        # VideoMamba-M long-video runs) and VideoMAP reuses it; the script default 0.75 elsewhere
        default_075 = cfg.model.name in ("videomamba_tiny", "videomamba_small") or n in SUPERVISED_M
        assert t.layer_decay == (0.75 if default_075 else 0.8), n
        assert t.weight_decay == (0.1 if cfg.model.name == "videomamba_tiny" else 0.05), n
        assert d.randaug.startswith("rand-m5-n2" if cfg.model.name == "videomamba_tiny" else "rand-m7-n4"), n
        assert d.erase_prob == 0.25 and cfg.model.img_size == 224, n
        if f.head == "classification":
            assert (f.mixup, f.cutmix, f.label_smoothing) == (0.8, 1.0, 0.1), n
        assert 0.1 <= cfg.model.drop_path_rate <= 0.8, n


def test_long_video_recipes():
    for n in [n for n in FINETUNE if "breakfast" in n or "coin" in n]:
        cfg = cfg_of(n)
        views = (10, 3) if "coin" in n else (4, 3)
        assert (cfg.data.test_clips, cfg.data.test_crops) == views, n
        assert cfg.model.num_classes == (180 if "coin" in n else 10), n
        assert cfg.model.num_frames == (24 if n.startswith("finetune/videomap_") else 32), n
        assert cfg.model.pretrained.startswith("runs/finetune/") and "_k400" in cfg.model.pretrained, n
    lvu = cfg_of("finetune/videomamba_t_lvu_regression.yaml")
    assert lvu.finetune.head == "regression" and lvu.data.list_format == "lvu"
    assert lvu.model.num_frames == 32 and cfg_of("finetune/videomamba_t_k400.yaml").model.num_frames == 8
    assert lvu.blr == 4e-4 and lvu.finetune.mixup == 0 and lvu.finetune.cutmix == 0


def test_self_distillation_recipe():
    cfg = cfg_of("finetune/videomamba_m_k400_distill.yaml")
    assert cfg.model.name == "videomamba_middle" and cfg.finetune.distill_model == "videomamba_small"
    assert cfg.finetune.distill_loss == "cos" and cfg.finetune.distill_weight == 1.0
    assert cfg.finetune.distill_target == "tokens"
    assert cfg.finetune.distill_checkpoint == "runs/finetune/videomamba_s_k400/final"


def test_pretraining_recipes():
    for n in PRETRAIN:
        cfg = cfg_of(n)
        p = cfg.pretrain
        assert p.mask_type == "attention" and cfg.blr == 1.5e-4 and cfg.train.warmup_epochs == 40, n
        assert (p.objective, p.mask_ratio) in {("frame", 0.5), ("token", 0.5), ("video", 0.8)} or "mask" in n, n
        # REFERENCE §9: min_lr 1e-5 per 256 clips, no clipping, flip (SSv2 included), VideoMamba's CLIP targets
        assert cfg.min_blr == 1e-5 and cfg.train.clip_grad is None and cfg.data.flip, n
        assert p.clip_target == "videomamba" and p.cls_weight == 1.0 and p.loss_on == "all", n
    for r in (20, 50, 80):
        cfg = cfg_of(f"pretrain/ablations/videomap_b_k400_100e_mask{r}.yaml")
        assert cfg.model.name == "videomap_base" and cfg.train.epochs == 100
        assert cfg.pretrain.mask_ratio == r / 100 and cfg.pretrain.objective == "frame"
        assert cfg.data.train_list == "data/k400/train.csv"
    small = {n: cfg_of(n) for n in PRETRAIN if "k400small" in n}
    assert len(small) == 5
    for n, cfg in small.items():
        assert cfg.train.epochs == 150 and cfg.data.train_list == "data/k400/train_10pct.csv", n
    assert {(c.model.name, c.pretrain.objective) for c in small.values()} == {
        ("videomap_middle", "frame"), ("videomap_middle", "token"), ("videomap_middle", "video"),
        ("videomamba_middle", "video"), ("videomap_base", "frame")}
    for n in [n for n in FINETUNE if "k400small" in n]:
        cfg = cfg_of(n)
        assert cfg.train.epochs == 25 and cfg.data.train_list == "data/k400/train_10pct.csv", n
        assert cfg.data.val_list == "data/k400/val.csv", n


RUNNERS = {"pretrain": run_pretrain, "finetune": run_finetune}


@pytest.mark.parametrize("name", [rel(p) for p in CONFIGS])
def test_one_training_step(name, data, tmp_path):
    cfg = cfg_of(name)
    if cfg.task not in RUNNERS:
        pytest.skip(f"task {cfg.task!r} has no training step")
    out = str(tmp_path / "run")
    tiny = load_config(os.path.join(CONFIG_DIR, name), tiny_overrides(cfg, data, out))
    # the recipe's own decisions survive the shrinking
    for section in ("data", "finetune"):
        a, b = getattr(cfg, section), getattr(tiny, section)
        for key in ("sampling", "test_clips", "test_crops", "flip", "randaug", "list_format", "mixup", "head"):
            if hasattr(a, key):
                assert getattr(a, key) == getattr(b, key), key
    assert (tiny.task, tiny.pretrain.objective, tiny.pretrain.mask_ratio) == (
        cfg.task, cfg.pretrain.objective, cfg.pretrain.mask_ratio)
    result = RUNNERS[tiny.task](tiny)
    if cfg.task == "pretrain":
        assert os.path.isfile(result["encoder"])
    else:
        assert os.path.isfile(os.path.join(out, "final", "model.safetensors"))
        metrics = result["eval"]
        assert metrics["count"] == 4  # every validation video, all views averaged into one prediction
    assert result["global_step"] == 1
    assert torch.isfinite(torch.tensor(result["train"]["loss"]))


@pytest.mark.parametrize("key,value,valid", [
    ("pretrain.objective", "frames", "'frame', 'token', 'video'"),
    ("pretrain.mask_type", "tubes", "'attention'"),
    ("pretrain.teacher", "dino", "'clip', 'pixel'"),
    ("finetune.head", "ranking", "'classification', 'regression'"),
    ("extract.format", "h5", "'safetensors', 'npy'"),
    ("extract.pool", "max", "'cls', 'mean'"),
    ("data.sampling", "uniform", "'segment', 'dense'"),
    ("train.amp", "fp8", "'none', 'bf16', 'fp16'"),
    ("train.layer_decay_mode", "per_layer", "'released', 'per_block'"),
    ("pretrain.loss_on", "hidden", "'all', 'target_hidden', 'masked'"),
    ("pretrain.clip_target", "ln_post", "'videomamba', 'postnorm'"),
    ("pretrain.mask_type", "rows", "'attention', 'random', 'random_frame', 'tube', 'frame_row', 'clip_row', "
                                   "'shared_row', 'none'"),
    ("finetune.distill_target", "all", "'tokens', 'cls'"),
])
def test_choices_are_validated_when_the_job_is_loaded(key, value, valid):
    """A wrong choice fails at load time, naming the key and the valid values (not deep inside a
    runner after the dataset has been built)."""
    with pytest.raises(ValueError, match=rf"{key}: expected one of {valid}.*got '{value}'"):
        load_config(None, [f"{key}={value}"])


def test_types_come_from_the_annotations():
    cfg = load_config(None, ["train.lr=1e-3", "train.betas=[0.9, 0.95]", "data.crop_scale=[0.5, 1]",
                             "train.clip_grad=null", "model.num_classes=5"])
    assert cfg.train.lr == 1e-3 and cfg.train.betas == (0.9, 0.95) and cfg.data.crop_scale == (0.5, 1.0)
    assert cfg.train.clip_grad is None and cfg.model.num_classes == 5
    with pytest.raises(ValueError, match="train.epochs: expected an integer"):
        load_config(None, ["train.epochs=2.5"])
    with pytest.raises(ValueError, match="data.flip: expected true or false"):
        load_config(None, ["data.flip=maybe"])
    assert cfg.is_given("train.lr") and cfg.is_given("train") and not cfg.is_given("model.name")
    with pytest.raises(ValueError, match="cls_weight"):
        load_config(None, ["pretrain.cls_weight=-1"])


def test_min_blr_scales_like_blr():
    cfg = load_config(None, ["blr=2e-4", "min_blr=1e-5", "train.batch_size=64", "train.accum_steps=2"])
    t = cfg.resolved_train()
    assert t.lr == pytest.approx(2e-4 * 128 / 256) and t.min_lr == pytest.approx(1e-5 * 128 / 256)
    assert load_config(None, ["train.min_lr=3e-6"]).resolved_train().min_lr == 3e-6  # no min_blr: absolute


def test_job_file_task_must_match_the_command(tmp_path, capsys):
    from videomap.cli import main

    pre = os.path.join(CONFIG_DIR, "pretrain", "videomap_m_k400.yaml")
    with pytest.raises(ValueError, match="task is 'pretrain', but this is `videomap finetune`"):
        load_config(pre, command="finetune")
    assert load_config(pre, command="pretrain").task == "pretrain"
    assert main(["finetune", "--config", pre, f"train.output_dir={tmp_path}"]) == 2
    assert "videomap pretrain" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before anything was built or written
    ft = FINETUNE[0]
    assert load_config(os.path.join(CONFIG_DIR, ft), command="evaluate").task == "finetune"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "overrides":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_demo_jobs_are_the_shipped_small_recipes(task, quick, tmp_path):
    """`videomap demo` runs configs/small/*_motion.yaml, read from the installed package: only
    paths, seed and run settings (workers, logging, resume) differ, plus --quick's shrink."""
    from videomap.config import config_dict
    from videomap.tasks.demo import demo_job, recipe_file

    path = recipe_file(task)
    assert os.path.samefile(path, os.path.join(CONFIG_DIR, "small", f"{task}_motion.yaml"))
    assert os.path.commonpath([path, os.path.dirname(videomap.__file__)]) == os.path.dirname(videomap.__file__)
    shipped = load_config(path, command=task)
    demo = demo_job(task, [f"data.train_list={tmp_path / 'train.csv'}", f"train.output_dir={tmp_path / 'run'}"],
                    quick=quick, seed=7)
    a, b = _flat(config_dict(shipped)), _flat(config_dict(demo))
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    run_keys = {"data.train_list", "train.output_dir", "train.seed", "train.num_workers", "train.log_every",
                "train.tensorboard", "train.resume"}
    quick_keys = {"model.num_frames", "model.overrides", "train.epochs", "train.batch_size"} | (
        {"pretrain.decoder_dim"} if task == "pretrain" else {"train.eval_every_epochs"})
    assert changed - run_keys == (quick_keys if quick else set())
    if quick:  # the quick demo is a narrower copy of the same architecture
        assert {k: v for k, v in demo.model.overrides.items() if k != "embed_dim"} == {
            k: v for k, v in shipped.model.overrides.items() if k != "embed_dim"}


def _doc_section(doc: str, heading: str) -> str:
    with open(os.path.join(ROOT, "docs", doc)) as f:
        text = f.read()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start: end if end > 0 else len(text)]


def test_docs_and_headers_match_the_papers_and_the_shipped_files():
    """VideoMAP-L's pre-training rows in VideoMAP Table 1 are 100 and 400 epochs; the VideoMAP-LLaVA
    row of Table 3 points at the Video-LLM configs that exist; the hybrid's initialisation is not
    called MAP's; the image encoder is not called MAP-B's layout."""
    import re

    path = os.path.join(CONFIG_DIR, "pretrain", "videomap_l_k400.yaml")
    epochs = cfg_of("pretrain/videomap_l_k400.yaml").train.epochs
    with open(path) as f:
        header = f.readline()
    assert epochs in (100, 400) and f"{epochs} epochs" in header, (epochs, header)
    table3 = _doc_section("paper_tables.md", "## VideoMAP Table 3")
    assert "Not covered" not in table3
    named = []
    for ref in re.findall(r"`(llm/[\w{},]+\.yaml)`", table3):
        m = re.match(r"(.*)\{(.*)\}(.*)", ref)
        named += [m.group(1) + part + m.group(3) for part in m.group(2).split(",")] if m else [ref]
    assert len(named) >= 5 and all(os.path.isfile(os.path.join(CONFIG_DIR, n)) for n in named), named
    models_doc = _doc_section("models.md", "Initialisation")
    assert "`init: map`" in models_doc and "as VideoMamba's and MAP's released code" not in models_doc
    llm_doc = _doc_section("llm.md", "- **Image encoder**")
    assert "neck" in llm_doc and "is\n  the layout of MAP's released" not in llm_doc
    with open(os.path.join(CONFIG_DIR, "vl", "videomamba_m_5m_unmasked.yaml")) as f:
        assert "no run script" not in f.read()


@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_recipes_take_the_released_optimizer_steps(name):
    """Repeated augmentation as the authors' --num_sample 2: two clips per video, per-GPU batches of
    videos, so an epoch is len(list) / (W x b) optimizer steps and the lr still scales with the clips
    per step. The header's step count is the recipe's own arithmetic."""
    import re

    cfg = cfg_of(name)
    with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as f:
        header = "".join(line for line in f if line.startswith("#"))
    m = re.search(r"# Optimizer steps: (\d+) epochs × ⌊N / \((\d+) GPUs × (\d+) videos\)⌋ for N training videos, "
                  r"(\d+) × (\d+) × (\d+) clips per step", header)
    assert m, f"{name}: no optimizer-steps line in the header"
    epochs, gpus, videos, gpus2, videos2, clips = (int(g) for g in m.groups())
    assert cfg.data.num_sample == clips == 2
    assert (epochs, videos) == (cfg.train.epochs, cfg.train.batch_size * cfg.train.accum_steps)
    assert (gpus2, videos2) == (gpus, videos)
    for n in (9_537, 240_000):  # any list length
        assert cfg.optimizer_steps(n, gpus) == epochs * (n // (gpus * videos))
    assert cfg.global_batch(gpus) == gpus * videos * clips  # blr scales with clips per step


def test_paper_configs_take_the_released_options_the_docs_list():
    """Every option that restores the authors' released behaviour is listed in paper_tables.md
    (with its source line) and set by the paper configs; the library defaults stay as they were."""
    section = _doc_section("paper_tables.md", "## Deliberate deviations")
    released = {"vl.vtc_gather": "released", "vl.uta_student": "pre_last_block", "vl.keep_temporal": True,
                "vl.image_temporal_pos": False, "train.decay_ssm_params": True}
    others = ("vl.eval_geometry", "pretrain.align_student", "data.num_sample", "model.overrides={init: map}")
    for key in (*released, *others):
        assert f"`{key}" in section, key
    defaults = load_config(None, ["task=vl"])
    for name in ("vl/videomamba_m_5m.yaml", "vl/videomamba_m_17m_unmasked.yaml", "vl/videomamba_m_25m.yaml"):
        cfg = cfg_of(name)
        for key, value in released.items():
            part, field_name = key.split(".")
            assert getattr(getattr(cfg, part), field_name) == value, (name, key)
            assert getattr(getattr(defaults, part), field_name) != value, key
        assert cfg.vl.eval_geometry == "full"
    for name in shipped("pretrain/"):
        cfg = cfg_of(name)
        assert cfg.train.decay_ssm_params
        assert cfg.pretrain.align_student == ("pre_last_block" if cfg.pretrain.objective == "video" else "output")
