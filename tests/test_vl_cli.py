"""The video-text commands end to end on tiny local models: ``vl-train`` (masked, resume, the
unmasked phase from ``vl.init_from``, mixed image and video corpora), ``retrieval-eval``, ``search``
(incremental, the recorded model), ``demo --vl --quick``, the ``vl`` job section and the paper
configs under ``configs/vl/``.

The text encoder is a random 2-layer BERT of width 32 over a WordPiece vocabulary made from the
captions used here (``videomap.vl.tiny``); the video encoder a random 2-block hybrid of width 32 on
4 frames of 32x32; clips are the generated videos of ``tests/conftest.py`` or flat-coloured clips
written here.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videomap.cli import main
from videomap.config import load_config
from videomap.data import SYNTHETIC_CLASSES
from videomap.data.synthetic import write_video
from videomap.engine import load_train_state
from videomap.tasks.demo import read_clip_list
from videomap.tasks.vl_demo import caption_items, captions, chance_recall, retrieval_items, vocabulary_texts
from videomap.vl.tiny import build_tiny_bert, build_wordpiece_vocab

ROOT = Path(__file__).resolve().parents[1]
VL_CONFIGS = ROOT / "configs" / "vl"
ENCODER = {"depth": 2, "embed_dim": 32, "attn_every": 2}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "white": (240, 240, 240), "purple": (150, 30, 170)}


def _dump(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def _tiny_bert(root: Path, texts: list[str]) -> str:
    tok = build_wordpiece_vocab(texts, root / "tokenizer")
    return build_tiny_bert(root / "bert", tok, hidden_size=32, num_layers=2, heads=2)


def _model_keys(bert: str) -> dict:
    return {"text_encoder": bert, "video_encoder": "videomap_tiny", "video_overrides": ENCODER, "num_frames": 4,
            "img_size": 32, "embed_dim": 16, "fusion_layers": 1, "max_text_len": 16}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_videos):
    """Captioned motion clips (12 train, 6 held out), a tiny BERT and a job file with the default
    losses and masks (VTC, VTM, MLM and UTA with the pixel teacher, attention masking)."""
    root = tmp_path_factory.mktemp("vl_cli")
    train_list, val_list = synthetic_videos(num_train=12, num_val=6)
    train, test = read_clip_list(train_list), read_clip_list(val_list)
    bert = _tiny_bert(root, vocabulary_texts())
    job = {
        "task": "vl",
        "vl": {**_model_keys(bert), "flip": False,
               "train_data": [{"file": _dump(root / "train.json", caption_items(train))}],
               "eval_json": _dump(root / "test.json", retrieval_items(test)), "rerank_k": 3, "eval_batch_size": 4},
        "train": {"batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.05, "num_workers": 0,
                  "log_every": 1, "tensorboard": False, "plot": False},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return {"root": root, "job": str(root / "job.yaml"), "bert": bert, "test": test, "train": train}


def _train(setup, out: Path, *overrides: str, resume: bool = False) -> int:
    argv = ["vl-train", "--config", setup["job"], f"train.output_dir={out}", *overrides]
    return main(argv + (["--resume"] if resume else []))


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


@pytest.fixture(scope="module")
def trained(setup) -> Path:
    out = setup["root"] / "masked"
    assert _train(setup, out, "train.epochs=2", "train.save_every_steps=1", "train.keep_last=null") == 0
    return out


# ---------------------------------------------------------------------------------------------- training
def test_vl_train_logs_every_loss_and_saves_a_loadable_model(trained):
    from videomap.vl import VideoTextModel

    assert [int(p.name.split("-")[1]) for p in _checkpoints(trained)] == list(range(1, 7))  # 12 clips / 4
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split") == "train"]
    assert train_rows and all(k in train_rows[0] for k in ("loss", "vtc", "vtm", "mlm", "uta", "temp"))
    evals = [r for r in rows if r.get("split") == "eval"]  # the held-out retrieval after every epoch
    assert [r["epoch"] for r in evals] == [1, 2] and 0 <= evals[-1]["t2v_r1"] <= 100
    cfg = load_config(trained / "config.yaml", command="vl-train")
    assert cfg.task == "vl" and cfg.vl.uta_teacher == "pixel"
    model = VideoTextModel.from_pretrained(trained / "final", teacher=False)
    reference, _ = load_train_state(_checkpoints(trained)[-1])
    state = model.state_dict()
    for k, v in reference.items():
        assert torch.equal(state[k], v), k  # final/ holds the weights of the last step


def test_vl_train_resumes_exactly(setup, trained, tmp_path):
    """Interrupted after step 4 (in epoch 2): the resumed run reaches the same weights."""
    run = tmp_path / "resumed"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("checkpoint-5", "checkpoint-6", "final"))
    assert _train(setup, run, "train.epochs=2", "train.save_every_steps=1", "train.keep_last=null",
                  resume=True) == 0
    reference, _ = load_train_state(trained / "checkpoint-6")
    resumed, state = load_train_state(run / "checkpoint-6")
    assert state["global_step"] == 6 and set(resumed) == set(reference)
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k
    assert (run / "final" / "videomap_vl.json").is_file()


def test_unmasked_phase_starts_from_the_masked_model(setup, trained, tmp_path, capsys):
    from videomap.vl import VideoTextModel

    out = tmp_path / "unmasked"
    assert _train(setup, out, f"vl.init_from={trained / 'final'}", "vl.masked=false", "vl.uta=0",
                  "vl.uta_teacher=none", "vl.video_mask_type=none", "vl.image_mask_type=none", "train.epochs=1",
                  "train.lr=1e-9") == 0
    saved = json.loads((out / "final" / "videomap_vl.json").read_text())["config"]
    assert saved["uta"] == 0 and saved["video_mask_type"] == "none"
    before = VideoTextModel.from_pretrained(trained / "final", teacher=False).state_dict()
    after = VideoTextModel.from_pretrained(out / "final", teacher=False).state_dict()
    assert not any(k.startswith("uta_head.") for k in after)
    # the tiny lr leaves every weight where the masked phase left it: the phase starts from it
    for k in after:
        assert torch.allclose(after[k], before[k], atol=1e-6), k
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any("uta" in r for r in rows if r.get("split") == "train")
    capsys.readouterr()
    # an architecture key that differs from the saved model is refused before training
    bad = tmp_path / "conflict"
    assert _train(setup, bad, f"vl.init_from={trained / 'final'}", "vl.embed_dim=32") == 2
    err = capsys.readouterr().err
    assert "vl.embed_dim is 32" in err and "holds 16" in err
    assert not bad.exists()


# ---------------------------------------------------------------------------------------------- evaluation
def test_retrieval_eval_scores_the_saved_model(setup, trained, tmp_path, capsys):
    from videomap.vl import RetrievalSet, VideoTextModel, retrieval_metrics

    out = tmp_path / "eval"
    assert main(["retrieval-eval", "--config", setup["job"], "--checkpoint", str(trained / "final"),
                 f"train.output_dir={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "retrieval_test.json").read_text())
    assert written["vtc"] == printed["vtc"] and written["rerank_k"] == 3 and "vtm" in written
    assert written["num_videos"] == 6 and written["num_texts"] == len(retrieval_items(setup["test"]))
    # the similarity ranking is the saved model's: recompute it by hand
    model = VideoTextModel.from_pretrained(trained / "final", teacher=False).eval()
    rs = RetrievalSet(setup["root"] / "test.json", num_frames=4, img_size=32, max_text_len=16)
    with torch.no_grad():
        _, v = model.encode_video(torch.stack([rs[i]["video"] for i in range(len(rs))]))
        ids, mask = rs.tokenize(model.tokenizer)
        _, t = model.encode_text(ids, mask)
    expected = retrieval_metrics(t @ v.T, rs.txt2vid, rs.vid2txt)
    for k, value in expected.items():
        assert written["vtc"][k] == pytest.approx(value, abs=1e-6), k


def test_retrieval_eval_needs_a_model_and_a_test_set(setup, trained, tmp_path, capsys):
    assert main(["retrieval-eval", "--config", setup["job"], f"train.output_dir={tmp_path}"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["retrieval-eval", "--config", setup["job"], "--checkpoint", str(trained / "final"),
                 "vl.eval_json=null"]) == 2
    assert "vl.eval_json" in capsys.readouterr().err
    assert main(["retrieval-eval", "--config", setup["job"], "--checkpoint", str(tmp_path)]) == 2
    assert "videomap_vl.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Six flat-coloured clips, one per colour, captioned with the colour, and a model trained on them."""
    root = tmp_path_factory.mktemp("vl_search")
    folder = root / "clips"
    folder.mkdir()
    items = []
    for name, rgb in COLOURS.items():
        frames = np.broadcast_to(np.array(rgb, dtype=np.uint8), (8, 32, 32, 3)).copy()
        path = write_video(folder / f"{name}.mp4", frames)
        items.append({"video": path, "caption": f"a {name} screen"})
    bert = _tiny_bert(root, [it["caption"] for it in items])
    job = {"task": "vl",
           "vl": {**_model_keys(bert), "vtm": 0.0, "mlm": 0.0, "uta": 0.0, "uta_teacher": "none",
                  "video_mask_type": "none", "image_mask_type": "none", "masked": False, "flip": False,
                  "crop_scale": [1.0, 1.0], "train_data": [{"file": _dump(root / "train.json", items)}]},
           "train": {"batch_size": 6, "epochs": 60, "lr": 5e-3, "weight_decay": 0.0, "num_workers": 0,
                     "log_every": 10, "tensorboard": False, "plot": False, "output_dir": str(root / "run")}}
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["vl-train", "--config", str(root / "job.yaml")]) == 0
    return {"root": root, "folder": folder, "model": root / "run" / "final"}


def _search(*args: str) -> int:
    return main(["search", *args])


def test_search_finds_the_right_clip_and_embeds_only_new_files(colours, trained, tmp_path, capsys):
    index, folder, model = tmp_path / "index", colours["folder"], colours["model"]
    capsys.readouterr()
    assert _search("--index", str(index), "--videos", str(folder), "--checkpoint", str(model),
                   "--query", "a blue screen", "-k", "3") == 0
    out = capsys.readouterr().out
    assert "6 new, 0 re-embedded, 0 unchanged" in out
    results = [line.split() for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(results) == 3 and results[0][2].endswith("blue.mp4"), out
    assert float(results[0][1]) > float(results[1][1])
    meta = json.loads((index / "index.json").read_text())

    # again over the same folder, without --checkpoint: the index's model, nothing re-embedded
    assert _search("--index", str(index), "--videos", str(folder), "--query", "a yellow screen", "-k", "1") == 0
    out = capsys.readouterr().out
    assert "0 new, 0 re-embedded, 6 unchanged" in out and out.strip().endswith("yellow.mp4")
    assert json.loads((index / "index.json").read_text())["entries"] == meta["entries"]

    # a new file is the only one embedded
    shutil.copy(folder / "red.mp4", folder / "red_copy.mp4")
    try:
        assert _search("--index", str(index), "--videos", str(folder)) == 0
        assert "1 new, 0 re-embedded, 6 unchanged" in capsys.readouterr().out
    finally:
        os.unlink(folder / "red_copy.mp4")

    # another model is refused, naming the arguments; --rebuild starts the index over for it
    assert _search("--index", str(index), "--checkpoint", str(trained / "final"), "--query", "a red screen") == 2
    err = capsys.readouterr().err
    assert "--checkpoint / --index" in err and "--rebuild" in err


def test_search_argument_errors(colours, tmp_path, capsys):
    assert _search("--index", str(tmp_path / "none"), "--query", "a red screen") == 2
    assert "--index: no video index" in capsys.readouterr().err
    assert _search("--index", str(tmp_path / "none"), "--videos", str(colours["folder"]), "--query", "x") == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert _search("--index", str(tmp_path / "i"), "--videos", str(tmp_path / "missing"),
                   "--checkpoint", str(colours["model"])) == 2
    assert "--videos" in capsys.readouterr().err
    assert _search("--index", str(tmp_path / "i"), "--checkpoint", str(colours["model"]), "--query", " ") == 2
    assert "--query" in capsys.readouterr().err
    assert _search("--index", str(tmp_path / "i"), "--videos", str(colours["folder"]),
                   "--checkpoint", str(colours["model"]), "-k", "0") == 2
    assert "-k" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- job files
def test_vl_section_is_validated_when_the_job_is_loaded(setup, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config key vl.fusion_layer;"):
        load_config(None, ["vl.fusion_layer=3"])
    with pytest.raises(ValueError, match=r"vl.video_mask_type: expected one of 'attention'.*got 'tubes'"):
        load_config(None, ["vl.video_mask_type=tubes"])
    with pytest.raises(ValueError, match=r"vl.train_data\[0\]: file: expected the caption JSON"):
        load_config(None, ["vl.train_data=[{media_root: x}]"])
    with pytest.raises(ValueError, match=r"video_mask_ratio: expected 0 <= ratio < 1, got 1.0"):
        load_config(None, ["vl.video_mask_ratio=1.0"])
    with pytest.raises(ValueError, match="rerank_k must be >= 0"):
        load_config(None, ["vl.rerank_k=-1"])
    out = tmp_path / "run"
    for overrides, expected in (
        (["vl.train_data=[{file: missing.json}]"], "vl.train_data[0].file: missing.json does not exist"),
        (["vl.text_encoder=null"], "vl.text_encoder is not set"),
        (["train.batch_size=1"], "train.batch_size is 1"),
        (["vl.uta_teacher=none"], "uta_teacher"),  # the uta loss needs a teacher
    ):
        assert _train(setup, out, *overrides) == 2, overrides
        assert expected in capsys.readouterr().err, overrides
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written
    pre = ROOT / "configs" / "pretrain" / "videomap_m_k400.yaml"
    assert main(["vl-train", "--config", str(pre)]) == 2
    assert "task is 'pretrain', but this is `videomap vl-train`" in capsys.readouterr().err


def _configs(prefix: str = "") -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(str(VL_CONFIGS / "*.yaml"))
                  if os.path.basename(p).startswith(prefix) and not os.path.basename(p).startswith("_"))


PRETRAIN = _configs("videomamba_m_")
ZERO_SHOT = _configs("zs_")


def test_paper_configs_are_shipped():
    assert [f"videomamba_m_{c}{s}.yaml" for c in ("17m", "25m", "5m") for s in ("", "_unmasked")] == PRETRAIN
    assert [f"zs_{d}.yaml" for d in ("anet", "didemo", "lsmdc", "msrvtt", "msvd")] == ZERO_SHOT
    assert set(_configs()) == set(PRETRAIN + ZERO_SHOT)


@pytest.mark.parametrize("name", PRETRAIN + ZERO_SHOT)
def test_paper_config_parses(name):
    command = "retrieval-eval" if name.startswith("zs_") else "vl-train"
    cfg = load_config(VL_CONFIGS / name, command=command)
    assert cfg.task == "vl" and cfg.train.output_dir.startswith("runs/vl/")
    with open(VL_CONFIGS / name) as f:
        assert f.readline().startswith("# "), "each config opens with a comment naming what it reproduces"


def test_paper_pretraining_values():
    """The authors' exp_pt configs: what the paper's §4.4 states and what the code fixes."""
    corpora = {"5m": 2, "17m": 6, "25m": 6}
    writes = set()
    for size, n in corpora.items():
        masked = load_config(VL_CONFIGS / f"videomamba_m_{size}.yaml", command="vl-train")
        v, t = masked.vl, masked.train
        assert len(v.train_data) == n and {c.media_type for c in v.train_data} == {"video", "image"}
        assert (v.video_mask_ratio, v.image_mask_ratio, v.video_mask_type) == (0.8, 0.5, "attention")
        assert (v.num_frames, v.img_size, v.max_text_len, v.fusion_layers, v.embed_dim) == (8, 224, 32, 3, 512)
        assert (v.vtc, v.vtm, v.mlm, v.uta, v.mlm_prob, v.temp_init) == (1, 1, 1, 1, 0.5, 0.07)
        assert v.text_encoder == "bert-base-uncased" and "clip" in v.uta_teacher and v.masked
        assert (t.epochs, t.warmup_epochs, t.batch_size, t.lr, t.min_lr, t.weight_decay) == (
            10, 1, 128, 4e-4, 4e-6, 0.05)
        unmasked = load_config(VL_CONFIGS / f"videomamba_m_{size}_unmasked.yaml", command="vl-train")
        u, t = unmasked.vl, unmasked.train
        assert u.init_from == f"{masked.train.output_dir}/final" and not u.masked
        assert (u.uta, u.uta_teacher, u.video_mask_type, u.image_mask_type) == (0, "none", "none", "none")
        assert (t.epochs, t.warmup_epochs, t.batch_size, t.lr) == (1, 0.2, 64, 8e-5)
        writes.add(f"{unmasked.train.output_dir}/final")
    webvid = load_config(VL_CONFIGS / "videomamba_m_25m.yaml").vl.train_data[0].file
    assert "webvid10m" in webvid
    outs = [load_config(VL_CONFIGS / n).train.output_dir for n in PRETRAIN + ZERO_SHOT]
    assert len(outs) == len(set(outs))
    for name in ZERO_SHOT:
        assert load_config(VL_CONFIGS / name).vl.init_from in writes  # a shipped run writes it


def test_paper_zero_shot_values():
    """The authors' exp_zs configs: 8 frames, their text lengths, paragraphs, VTM re-ranking of the top 128."""
    expected = {"msrvtt": (32, False), "didemo": (64, True), "anet": (150, True), "lsmdc": (96, False),
                "msvd": (64, False)}
    for name, (length, paragraph) in expected.items():
        v = load_config(VL_CONFIGS / f"zs_{name}.yaml", command="retrieval-eval").vl
        assert (v.num_frames, v.max_text_len, v.paragraph, v.rerank_k) == (8, length, paragraph, 128), name
        assert v.eval_json and v.eval_media_root


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory, synthetic_videos):
    """A tiny video corpus, a tiny image corpus (PNG stills) and a retrieval set."""
    from PIL import Image

    root = tmp_path_factory.mktemp("vl_mixed")
    train_list, val_list = synthetic_videos(num_train=12, num_val=6)
    videos = caption_items(read_clip_list(train_list))[:6]
    images = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        path = root / f"{name}.png"
        Image.fromarray(np.broadcast_to(np.array(rgb, dtype=np.uint8), (32, 32, 3)).copy()).save(path)
        images.append({"image": str(path), "caption": captions(SYNTHETIC_CLASSES[i])})
    return {"video": _dump(root / "videos.json", videos), "image": _dump(root / "images.json", images),
            "test": _dump(root / "test.json", retrieval_items(read_clip_list(val_list))), "root": root,
            "bert": _tiny_bert(root, vocabulary_texts())}


def _shrunk(cfg, data, out: Path) -> list[str]:
    """The paper config at test size: tiny models, the pixel teacher, generated data, one step."""
    v = cfg.vl
    corpora = ", ".join(f"{{file: {data[c.media_type]}, media_type: {c.media_type}}}" for c in v.train_data[:2])
    ov = [f"train.output_dir={out}", "train.batch_size=2", "train.max_steps=1", "train.amp=none",
          "train.num_workers=0", "train.tensorboard=false", "train.plot=false", "train.save_every_steps=null",
          f"vl.train_data=[{corpora}]", f"vl.eval_json={data['test']}", "vl.eval_media_root=''",
          "vl.rerank_k=2", "vl.eval_batch_size=4", "vl.num_frames=4", "vl.img_size=32", "vl.max_text_len=16"]
    ov += ["vl.video_overrides={depth: 2, embed_dim: 32}", "vl.embed_dim=16", "vl.fusion_layers=1"]
    if v.init_from:
        return ov + [f"vl.init_from={data['root'] / 'masked' / 'final'}"]
    return ov + [f"vl.text_encoder={data['bert']}", "vl.video_checkpoint=null", "vl.uta_teacher=pixel"]


def test_paper_pretraining_runs_a_step_on_mixed_images_and_videos(mixed_data):
    """videomamba_m_5m (WebVid videos + CC3M images) then its unmasked phase, shrunk."""
    from videomap.tasks.vl import run_vl_train

    for name in ("videomamba_m_5m.yaml", "videomamba_m_5m_unmasked.yaml"):
        cfg = load_config(VL_CONFIGS / name)
        out = mixed_data["root"] / ("masked" if not cfg.vl.init_from else "unmasked")
        shrunk = load_config(VL_CONFIGS / name, _shrunk(cfg, mixed_data, out), command="vl-train")
        assert (shrunk.vl.masked, shrunk.vl.uta, shrunk.vl.video_mask_ratio) == (
            cfg.vl.masked, cfg.vl.uta, cfg.vl.video_mask_ratio)
        result = run_vl_train(shrunk)
        assert result["global_step"] == 1 and os.path.isfile(os.path.join(result["final"], "videomap_vl.json"))
        assert torch.isfinite(torch.tensor(result["train"]["loss"]))
        assert set(result["eval"]) >= {"t2v_r1", "v2t_r1", "mean_r"}


def test_caption_batches_keep_one_kind_per_batch(mixed_data):
    """Mixed corpora: every batch is all images or all videos, each sample at most once per epoch,
    the same batches for the same (seed, epoch)."""
    from videomap.vl import VideoCaptionDataset
    from videomap.vl.data import CaptionBatches, CaptionMix
    from videomap.vl.tiny import build_wordpiece_vocab

    tok_dir = build_wordpiece_vocab(vocabulary_texts(), mixed_data["root"] / "tok_batches")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    mix = CaptionMix([VideoCaptionDataset(mixed_data[k], tok, num_frames=2, img_size=32, max_text_len=16)
                      for k in ("video", "image")])
    batches = CaptionBatches(mix, batch_size=4, seed=0)
    assert len(batches) == 2 and batches.counts == {"video": 1, "image": 1}  # 6 + 6 samples, rests dropped
    seen = []
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        got = [batches[i] for i in range(len(batches))]
        assert sorted(b["videos"].shape[2] for b in got) == [1, 2]  # one image batch, one video batch
        seen.append([b["index"].tolist() for b in got])
        for b in got:
            assert len(set(b["index"].tolist())) == 4
            assert len(set(b["video_ids"].tolist())) == 4  # distinct ids across the two corpora
    assert seen[0] != seen[1]
    batches.set_epoch(0)
    assert [batches[i]["index"].tolist() for i in range(len(batches))] == seen[0]


# ---------------------------------------------------------------------------------------------- toy run
def test_chance_levels():
    assert chance_recall(150, 25, 1) == pytest.approx(100 / 6)
    assert chance_recall(6, 1, 5) == pytest.approx(100 * 5 / 6)
    assert chance_recall(10, 6, 5) == 100.0  # fewer than 5 wrong candidates: a match is always shown


def test_demo_vl_quick(tmp_path, capsys):
    out = tmp_path / "vl-demo"
    assert main(["demo", "--vl", "--quick", "--out", str(out), "--demo-dir", str(tmp_path / "no-demo")]) == 0
    printed = capsys.readouterr().out
    assert "chance R@1" in printed and "trained from scratch" in printed
    summary = json.loads((out / "results.json").read_text())
    assert summary["num_test_clips"] == 24 and summary["chance"]["t2v"]["1"] == pytest.approx(100 / 6)
    assert len(summary["search"]["hits"]) == 5
    for phase in ("train_masked", "train_unmasked"):  # the paper's two phases, the second from the first
        assert (out / phase / "final" / "videomap_vl.json").is_file()
    unmasked = load_config(out / "train_unmasked" / "config.yaml", command="vl-train").vl
    assert unmasked.init_from == str(out / "train_masked" / "final") and not unmasked.masked
    assert main(["demo", "--llm", "--vl", "--quick", "--out", str(out)]) == 2
