"""videomap models in transformers and on the Hub: ``export --format hf``, the video processor,
``pipeline("video-classification")``, the Auto classes with and without remote code,
``pretrained="hf-hub:..."`` and ``push_to_hub`` (all offline)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

pytest.importorskip("transformers")

from tests.helpers import real_video, tiny_model  # noqa: E402
from videomap.cli import main  # noqa: E402

LABELS = ["archery", "bowling", "cycling"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained-looking 3-class checkpoint and its transformers export (short side 40, 32px crops)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    model = tiny_model("videomap_tiny", num_classes=3).eval()
    model.save_pretrained(root / "ckpt")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    rc = main(["export", "--checkpoint", str(root / "ckpt"), "--format", "hf", "--out", str(root / "videomap-hf"),
               "--labels", str(root / "labels.txt"), "data.short_side=40"])
    assert rc == 0
    return root, model


def _eval_cfg(root, videos: list[tuple[str, int]]):
    """The job ``videomap evaluate --checkpoint ckpt`` runs (clip size from the checkpoint)."""
    from videomap.config import load_config
    from videomap.tasks.common import resolve_checkpoint_model

    lst = root / "test.csv"
    lst.write_text("".join(f"{v},{y}\n" for v, y in videos))
    cfg = load_config(None, [f"data.test_list={lst}", "data.short_side=40", "data.test_clips=1", "data.test_crops=1",
                             f"train.output_dir={root / 'eval'}"], command="evaluate")
    return resolve_checkpoint_model(cfg, root / "ckpt")


def test_export_writes_a_transformers_directory(exported):
    root, model = exported
    out = root / "videomap-hf"
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json", "configuration_videomap.py",
            "modeling_videomap.py", "video_processing_videomap.py"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "videomap" and config["backbone"] == "videomap_tiny"
    assert config["num_frames"] == 4 and config["image_size"] == 32 and config["backbone_kwargs"]["depth"] == 4
    assert config["id2label"] == {str(i): n for i, n in enumerate(LABELS)}
    assert config["label2id"] == {n: i for i, n in enumerate(LABELS)}
    assert config["auto_map"]["AutoModelForVideoClassification"] == "modeling_videomap.VideoMAPForVideoClassification"
    proc = json.loads((out / "video_preprocessor_config.json").read_text())
    assert proc["auto_map"] == {"AutoVideoProcessor": "video_processing_videomap.VideoMAPVideoProcessor"}
    assert (proc["num_frames"], proc["crop_size"], proc["short_side"], proc["sampling"]) == (4, 32, 40, "segment")
    # our own loaders read the export too (the backbone. prefix of the transformers weights is stripped)
    from videomap import from_pretrained

    again = from_pretrained(out).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


# ``transformers.AutoVideoProcessor`` is a placeholder where torchvision is missing; the class itself
# (what pipeline() uses) works without it
def test_processor_gives_the_single_view_of_evaluate(exported):
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from videomap.tasks.common import build_dataset

    root, _ = exported
    video = real_video("bikes.mp4")  # 640x272: the short-side resize and centre crop matter
    processor = AutoVideoProcessor.from_pretrained(root / "videomap-hf", trust_remote_code=True)
    got = processor(video, return_tensors="pt")["pixel_values"]
    view = build_dataset(_eval_cfg(root, [(video, 0)]), "test")[0][0]  # (V=1, C, T, H, W)
    assert got.shape == (1, 3, 4, 32, 32)
    assert torch.equal(got, view)
    # decoded frames (T, H, W, 3) go through the same sampling and transform
    from videomap.data import open_video

    with open_video(video) as reader:
        frames = reader.get_frames(range(reader.num_frames))
    assert torch.equal(processor(frames.numpy())["pixel_values"], got)
    with pytest.raises(ValueError, match="unsupported option"):
        processor(video, size=224)
    # dense sampling (Kinetics style) follows evaluate's centred clip as well
    from videomap.data.video_processor import VideoMAPVideoProcessor

    dense = VideoMAPVideoProcessor(num_frames=4, crop_size=32, short_side=40, sampling="dense", frame_stride=8)
    cfg = _eval_cfg(root, [(video, 0)])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampling="dense", frame_stride=8))
    want = build_dataset(cfg, "test")[0][0]
    assert torch.equal(dense(video)["pixel_values"], want) and not torch.equal(want, view)


def test_pipeline_top1_equals_evaluate_on_real_mp4s(exported, capsys):
    from transformers import pipeline

    from videomap.tasks.common import build_dataset

    root, model = exported
    videos = [real_video("bigbuckbunny.mp4"), real_video("bikes.mp4")]
    classify = pipeline("video-classification", model=str(root / "videomap-hf"), trust_remote_code=True)
    results = [classify(v, top_k=2) for v in videos]
    predicted = []
    for video, res in zip(videos, results):
        assert len(res) == 2 and {"label", "score"} == set(res[0]) and res[0]["score"] >= res[1]["score"]
        view = build_dataset(_eval_cfg(root, [(video, 0)]), "test")[0][0]
        with torch.no_grad():
            probs = model(view).softmax(-1)[0]
        top = probs.topk(2)
        assert [r["label"] for r in res] == [LABELS[i] for i in top.indices]
        assert [r["score"] for r in res] == pytest.approx(top.values.tolist(), abs=1e-5)
        predicted.append(LABELS.index(res[0]["label"]))
    # videomap evaluate agrees: labelled with the pipeline's top-1, its single-view accuracy is 100%
    capsys.readouterr()
    cfg_args = [f"data.test_list={_eval_cfg(root, list(zip(videos, predicted))).data.test_list}",
                "data.short_side=40", f"train.output_dir={root / 'eval'}"]
    assert main(["evaluate", "--checkpoint", str(root / "ckpt"), *cfg_args]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(100.0)
    wrong = [(p + 1) % 3 for p in predicted]
    cfg_args[0] = f"data.test_list={_eval_cfg(root, list(zip(videos, wrong))).data.test_list}"
    # (the exported directory is a checkpoint videomap evaluate reads too)
    assert main(["evaluate", "--checkpoint", str(root / "videomap-hf"), *cfg_args]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(0.0)


def test_automodel_remote_code_features_and_gradient_checkpointing(exported):
    from transformers import AutoModel

    root, model = exported
    encoder = AutoModel.from_pretrained(root / "videomap-hf", trust_remote_code=True).eval()
    assert type(encoder).__name__ == "VideoMAPModel" and encoder.supports_gradient_checkpointing
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        out = encoder(pixel_values=video, output_hidden_states=True)
        final, inter = model.forward_intermediates(video)
        torch.testing.assert_close(out.last_hidden_state, final)
        torch.testing.assert_close(out.pooler_output, final[:, 0])
        assert len(out.hidden_states) == len(model.block_names()) + 1
        for got, want in zip(out.hidden_states[1:], inter):
            torch.testing.assert_close(got, want)
        # VideoMAE's (B, T, C, H, W) is read as such: dim 1 is not the channel count
        torch.testing.assert_close(encoder(video.transpose(1, 2)).last_hidden_state, final)
        assert encoder(video).hidden_states is None
    encoder.train()
    x = video[:1].requires_grad_(True)
    encoder(x).last_hidden_state.square().mean().backward()
    plain = x.grad.clone()
    x.grad = None
    encoder.activation_checkpointing_enable()
    assert encoder.backbone.checkpoint_blocks == len(model.block_names())
    encoder(x).last_hidden_state.square().mean().backward()
    torch.testing.assert_close(x.grad, plain)
    encoder.activation_checkpointing_disable()
    assert encoder.backbone.checkpoint_blocks == 0


def test_register_with_transformers_loads_without_remote_code(exported):
    from transformers import AutoConfig, AutoModelForVideoClassification
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    import videomap
    from videomap.data.video_processor import VideoMAPVideoProcessor
    from videomap.models.hf import VideoMAPConfig, VideoMAPForVideoClassification

    root, model = exported
    videomap.register_with_transformers()
    videomap.register_with_transformers()  # idempotent
    out = root / "videomap-hf"
    assert type(AutoConfig.from_pretrained(out)) is VideoMAPConfig
    classifier = AutoModelForVideoClassification.from_pretrained(out).eval()
    assert type(classifier) is VideoMAPForVideoClassification
    assert type(AutoVideoProcessor.from_pretrained(out)) is VideoMAPVideoProcessor
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixel_values=x).logits, model(x))
    loss = classifier(pixel_values=x, labels=torch.tensor([0, 2])).loss
    with torch.no_grad():
        assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).item(),
                                            rel=1e-5)
    # the stock pipeline too, with the in-package classes
    from transformers import pipeline

    classify = pipeline("video-classification", model=str(out))
    assert type(classify.video_processor) is VideoMAPVideoProcessor
    assert classify(real_video("carphone_pristine.mp4"), top_k=1)[0]["label"] in LABELS


def test_config_and_export_errors(tmp_path, exported, capsys):
    from videomap.models.hf import VideoMAPConfig

    root, _ = exported
    with pytest.raises(ValueError, match="num_frames"):
        VideoMAPConfig(backbone="videomap_tiny", backbone_kwargs={"num_frames": 8})
    with pytest.raises(ValueError, match="unknown model"):
        VideoMAPConfig(backbone="no_such_model")
    (tmp_path / "two.txt").write_text("a\nb\n")
    rc = main(["export", "--checkpoint", str(root / "ckpt"), "--format", "hf", "--out", str(tmp_path / "x"),
               "--labels", str(tmp_path / "two.txt")])
    assert rc == 2 and "2 names but the classifier has 3 outputs" in capsys.readouterr().err
    rc = main(["export", "--checkpoint", str(root / "ckpt"), "--format", "pt2", "--labels", str(tmp_path / "two.txt")])
    assert rc == 2 and "only used with --format hf" in capsys.readouterr().err


def test_encoder_export_has_no_classifier(tmp_path, capsys):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = tiny_model("videomamba_tiny").eval()
    model.save_pretrained(tmp_path / "enc")
    assert main(["export", "--checkpoint", str(tmp_path / "enc"), "--format", "hf"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["path"] == str(tmp_path / "enc" / "hf") and res["max_abs_diff"] < 1e-5
    config = json.loads((tmp_path / "enc" / "hf" / "config.json").read_text())
    assert "AutoModelForVideoClassification" not in config["auto_map"] and config["id2label"] == {}
    encoder = AutoModel.from_pretrained(tmp_path / "enc" / "hf", trust_remote_code=True).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x).last_hidden_state, model.forward_features(x))


# ---------------------------------------------------------------------------------------- the Hub
def _fake_hub_cache(cache, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    """The layout huggingface_hub's cache has after a download: refs/main -> snapshots/<commit>/."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_create_model_from_the_hub_cache_offline(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    from videomap import create_model, from_pretrained

    torch.manual_seed(0)
    model = tiny_model("videomap_tiny", num_classes=3).eval()
    model.save_pretrained(tmp_path / "saved")
    files = {n: (tmp_path / "saved" / n).read_bytes() for n in ("config.json", "model.safetensors")}
    _fake_hub_cache(tmp_path / "cache", "org/tiny", files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    arch = {k: v for k, v in model.model_config.items() if k not in ("name", "num_classes")}
    loaded = create_model("videomap_tiny", num_classes=3, pretrained="hf-hub:org/tiny", **arch).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(from_pretrained("hf-hub:org/tiny").eval()(x), model(x))
    with pytest.raises(FileNotFoundError, match="hf-hub:org/missing"):
        create_model("videomap_tiny", pretrained="hf-hub:org/missing", **arch)
    with pytest.raises(ValueError, match="ORG/NAME"):
        create_model("videomap_tiny", pretrained="hf-hub:no-slash", **arch)


def test_push_to_hub_uploads_the_save_pretrained_files(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
            calls["files"] = sorted(os.listdir(folder_path))
            with open(os.path.join(folder_path, "config.json")) as f:
                calls["config"] = json.load(f)
            return type("Commit", (), {"commit_url": f"https://hub.test/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = tiny_model("videomamba_tiny", num_classes=2)
    url = model.push_to_hub("org/tiny", private=True, token="t")
    assert url == "https://hub.test/org/tiny/commit/1"
    assert calls["create"] == ("org/tiny", True, True) and calls["token"] == "t"
    assert calls["files"] == ["config.json", "model.safetensors"]
    assert calls["config"]["name"] == "videomamba_tiny" and calls["config"]["num_classes"] == 2


def test_models_and_data_do_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, videomap.models, videomap.data, videomap.data.media; "
            "print([m for m in ('transformers', 'huggingface_hub') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"
