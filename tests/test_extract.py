"""``videomap extract``: the model a checkpoint was saved with, unique output names, list parsing."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import real_video, tiny_model
from videomap import create_model
from videomap.cli import main
from videomap.config import load_config
from videomap.data import center_crop, normalize, open_video, resize_short_side
from videomap.data.annotations import read_video_paths
from videomap.models import from_pretrained
from videomap.tasks.common import build_model_from_checkpoint, resolve_checkpoint_model
from videomap.tasks.extract import feature_paths, run_extract, video_features

SMALL = dict(img_size=32, num_frames=4, embed_dim=32, depth=4, attn_every=2)


@pytest.fixture(scope="module")
def videos(synthetic_videos):
    return synthetic_videos(num_train=0, num_val=2)[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small classifier written with save_pretrained (96-d in the demo; 32-d here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "final"
    tiny_model("videomap_tiny", num_classes=3).save_pretrained(path)
    return str(path)


def test_extract_checkpoint_dir_without_config_builds_the_saved_model(tmp_path, videos, saved, capsys):
    out = tmp_path / "features"
    rc = main(["extract", "--checkpoint", saved, f"extract.list={videos}", f"extract.output_dir={out}"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == 2 and result["failed"] == [] and result["feature_dim"] == 32
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert files == ["videos/val_00000.safetensors", "videos/val_00001.safetensors"]
    feats = load_file(str(out / files[0]))["features"]
    assert feats.shape == (1, 32) and torch.isfinite(feats).all()  # 8 frames / stride 2 = one 4-frame window


def test_extract_a_real_mp4_in_windows(tmp_path, saved, capsys):
    """250 frames of a real 640x272 encode, every 25th sampled: windows of 4 start at 0, 4 and 6."""
    video = real_video("bikes.mp4")
    (tmp_path / "list.txt").write_text(video + "\n")
    out = tmp_path / "features"
    rc = main(["extract", "--checkpoint", saved, f"extract.list={tmp_path / 'list.txt'}", f"extract.output_dir={out}",
               "extract.frame_stride=25", "extract.window_stride=4"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["written"] == 1
    (path,) = out.rglob("bikes.safetensors")
    feats = load_file(str(path))["features"]
    assert feats.shape == (3, 32) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[2])  # different moments of the video


@pytest.mark.parametrize("override, named", [
    ("model.name=videomamba_tiny", "videomamba_tiny"),
    ("model.overrides={embed_dim: 48, depth: 4, attn_every: 2}", "embed_dim is 48"),
])
def test_extract_with_a_conflicting_model_is_an_error(tmp_path, videos, saved, capsys, override, named):
    out = tmp_path / "features"
    rc = main(["extract", "--checkpoint", saved, f"extract.list={videos}", f"extract.output_dir={out}", override])
    assert rc == 2
    err = capsys.readouterr().err
    progress, error = err[:err.find("videomap extract: error: ")], err[err.find("videomap extract: error: "):]
    assert all(line.startswith("[") for line in progress.splitlines()), progress  # only log lines before it
    assert error.startswith("videomap extract: error: model.name/model.overrides conflict with the checkpoint")
    assert named in error and "videomap_tiny" in error and "config.json" in error and len(error) < 600
    assert not out.exists()


def test_extract_layer_reads_a_chosen_block(tmp_path, videos, saved):
    """Default: the final normalised output, as forward_features gives it. ``extract.layer=2`` on
    the saved hybrid (blocks: 2 Mamba, attention, 2 Mamba, attention) is the output of a model cut
    after its first attention block; ``extract.norm=false`` leaves out the final norm."""
    video = read_video_paths(videos)[0]
    name = os.path.splitext(os.path.basename(video))[0]

    def extract(*over: str) -> torch.Tensor:
        out = tmp_path / "_".join(over).replace("=", "") if over else tmp_path / "default"
        run_extract(load_config(None, [f"extract.list={videos}", f"extract.output_dir={out}", *over]), saved)
        return load_file(str(next(out.rglob(f"{name}.safetensors"))))["features"]

    full = from_pretrained(saved, num_classes=0).eval()
    reader = open_video(video)
    try:
        clip = reader.get_frames([0, 2, 4, 6]).permute(3, 0, 1, 2)  # 8 frames, stride 2: one 4-frame window
        clip = normalize(center_crop(resize_short_side(clip, 32), 32))[None]
        cut = create_model("videomap_tiny", num_classes=0, img_size=32, num_frames=4, embed_dim=32, depth=2,
                           attn_every=2).eval()
        cut.load_state_dict({k: v for k, v in full.state_dict().items() if k in cut.state_dict()})
        expected_cut = video_features(cut, reader, num_frames=4, img_size=32, frame_stride=2, window_stride=None,
                                      pool="cls", device=torch.device("cpu"))
    finally:
        reader.close()
    with torch.no_grad():
        expected = full.forward_features(clip)[:, 0]
    default = extract()
    assert torch.allclose(default, expected, atol=1e-6)
    layer2 = extract("extract.layer=2")
    assert torch.allclose(layer2, expected_cut, atol=1e-5) and not torch.allclose(layer2, default, atol=1e-3)
    raw = extract("extract.layer=2", "extract.norm=false")
    assert not torch.allclose(raw, layer2, atol=1e-3)
    assert torch.allclose(extract("extract.layer=-4"), layer2)  # negative: counted from the end
    with pytest.raises(ValueError, match=r"extract.layer: expected a block index in \[-6, 6\).*got 6"):
        run_extract(load_config(None, [f"extract.list={videos}", f"extract.output_dir={tmp_path / 'bad'}",
                                       "extract.layer=6"]), saved)
    assert not (tmp_path / "bad").exists()


def test_matching_job_model_and_plain_weights_file(tmp_path, saved):
    base = ["model.name=videomap_tiny", "model.overrides={depth: 4, embed_dim: 32, attn_every: 2}"]
    # the job names the saved architecture: fine, and the saved clip size is kept unless given
    cfg = resolve_checkpoint_model(load_config(None, base), saved)
    assert (cfg.model.num_frames, cfg.model.img_size) == (4, 32)
    cfg = resolve_checkpoint_model(load_config(None, base + ["model.num_frames=8"]), saved)
    assert cfg.model.num_frames == 8
    model = build_model_from_checkpoint(cfg, saved, num_classes=0)
    assert model.temporal_pos_embedding.shape == (1, 8, 32) and model.num_classes == 0
    # a plain weights file has no config.json: the job's model, and a mismatch is the loading error
    weights = os.path.join(saved, "model.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatches.*and \d+ more") as e:
        build_model_from_checkpoint(load_config(None, ["model.img_size=32"]), weights, num_classes=0)
    assert len(str(e.value)) < 600


def test_checkpoint_classifier_for_evaluation(saved):
    cfg = load_config(None)
    model = build_model_from_checkpoint(cfg, saved, num_classes=2)  # a test list may lack the last class
    assert model.num_classes == 3
    expected = load_file(os.path.join(saved, "model.safetensors"))
    assert torch.equal(model.head.weight, expected["head.weight"])
    with pytest.raises(ValueError, match="has 3 outputs"):
        build_model_from_checkpoint(cfg, saved, num_classes=5)
    with pytest.raises(ValueError, match="model.num_classes is 7"):
        build_model_from_checkpoint(load_config(None, ["model.num_classes=7"]), saved, num_classes=3)
    # a plain file: the trained head must fit the classes asked for
    weights = os.path.join(saved, "model.safetensors")
    small = ["model.img_size=32", "model.num_frames=4", "model.overrides={depth: 4, embed_dim: 32, attn_every: 2}"]
    model = build_model_from_checkpoint(load_config(None, small), weights, num_classes=3)
    assert torch.equal(model.head.bias, expected["head.bias"])
    with pytest.raises(ValueError, match=r"head.weight \(3, 32\) vs model \(4, 32\)"):
        build_model_from_checkpoint(load_config(None, small), weights, num_classes=4)


def test_same_file_name_in_two_folders_gives_two_outputs(tmp_path, videos, saved):
    src = read_video_paths(videos)
    for folder, video in zip("ab", src):
        os.makedirs(tmp_path / "data" / folder)
        shutil.copy(video, tmp_path / "data" / folder / "x.mp4")
    lst = tmp_path / "list.txt"
    lst.write_text("a/x.mp4 0\n# a comment\n\nb/x.mp4\n")
    out = tmp_path / "features"
    over = [f"extract.list={lst}", f"extract.output_dir={out}", f"data.root={tmp_path / 'data'}"]
    res = run_extract(load_config(None, over), saved)
    assert res["written"] == 2 and res["existing"] == 0
    a, b = (load_file(str(out / f / "x.safetensors"))["features"] for f in "ab")
    assert a.shape == b.shape == (1, 32) and not torch.equal(a, b)  # two different videos
    res = run_extract(load_config(None, over), saved)  # resumable: nothing recomputed
    assert res["written"] == 2 and res["existing"] == 2


def test_colliding_outputs_are_an_error_before_any_work(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    lst = tmp_path / "list.txt"
    lst.write_text("a/x.mp4,0\na/x.avi,1\n")
    out = tmp_path / "features"
    rc = main(["extract", "--checkpoint", str(tmp_path / "no-such-checkpoint"), f"extract.list={lst}",
               f"extract.output_dir={out}", f"data.root={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "a/x.mp4 and" in err and "a/x.avi would both be written to" in err
    assert not out.exists()


def test_output_names_mirror_the_input_paths(tmp_path):
    lst = str(tmp_path / "lists" / "v.txt")
    videos = ["/data/k400/a/x.mp4", str(tmp_path / "lists" / "clips" / "y.avi"), "/elsewhere/z.webm", "/data/k400/f"]
    outs = feature_paths(videos, "feat", "npy", root="/data/k400", list_file=lst)
    assert outs == ["feat/a/x.npy", "feat/clips/y.npy", "feat/elsewhere/z.npy", "feat/f.npy"]
    with pytest.raises(ValueError, match="/data/k400/a/x.mp4 and /data/k400/a/x.mp4"):
        feature_paths(videos[:1] * 2, "feat", "npy", root="/data/k400")


def test_read_video_paths(tmp_path):
    lst = tmp_path / "v.txt"
    lst.write_text("a.mp4\n\n# skipped\nb.mp4,3\nc.mp4 1 12.5\n")
    assert read_video_paths(lst) == ["a.mp4", "b.mp4", "c.mp4"]
    assert read_video_paths(lst, root="/r") == ["/r/a.mp4", "/r/b.mp4", "/r/c.mp4"]
    lst.write_text("a.mp4\n,3\n")
    with pytest.raises(ValueError, match=r"v\.txt:2: expected a video path"):
        read_video_paths(lst)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_video_paths(tmp_path / "nope.txt")
