"""One rule to run a saved model under a job (``tasks.common.restore_config``), for every family:
architecture fields must match the saved model (the error names each conflicting field with both
values), runtime fields may differ (the job's value is used), weight sources are the saved ones."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.helpers import tiny_model
from videomap.config import load_config
from videomap.llm.model import CONFIG_FILE as LLM_CONFIG_FILE
from videomap.llm.model import VideoLLMConfig
from videomap.models.registry import read_model_config
from videomap.tasks.common import resolve_checkpoint_model, restore_config
from videomap.vl.model import CONFIG_FILE as VL_CONFIG_FILE
from videomap.vl.model import VideoTextConfig


def test_restore_config_names_every_conflict_and_returns_the_runtime_fields():
    saved = {"depth": 4, "width": 32, "frames": 8, "weights": "a.safetensors"}
    requested = {"depth": 6, "width": 48, "frames": 16, "weights": "b.safetensors"}
    with pytest.raises(ValueError) as e:
        restore_config(saved, requested, runtime={"frames"}, sources={"weights"}, checkpoint="/ckpt",
                       keys="job.model", advice="drop them", prefix="job.")
    msg = str(e.value)
    assert msg.startswith("job.model conflict with the checkpoint /ckpt: ")
    assert "job.depth is 6 but it holds 4" in msg and "job.width is 48 but it holds 32" in msg
    assert "frames" not in msg and "weights" not in msg and msg.endswith("drop them")
    same = {"depth": 4, "width": 32, "frames": 16, "weights": "b.safetensors"}
    out = restore_config(saved, same, runtime={"frames"}, sources={"weights"}, checkpoint="/ckpt", keys="k",
                         advice="a")
    assert out == {"frames": 16}  # the source is not used, equal architecture is no override
    # tuples and lists compare as JSON stores them
    assert restore_config({"size": [1, 2]}, {"size": (1, 2)}, runtime=(), checkpoint="c", keys="k", advice="a") == {}


# --------------------------------------------------------------------------- backbones
@pytest.fixture(scope="module")
def saved_backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "final"
    tiny_model("videomap_tiny", num_classes=3).save_pretrained(path)
    return str(path)


def test_backbone_architecture_conflict_names_the_field(saved_backbone):
    saved = read_model_config(saved_backbone)
    job = load_config(None, ["model.name=videomap_tiny",
                             f"model.overrides={{depth: {saved['depth'] + 2}, embed_dim: {saved['embed_dim']}, "
                             f"attn_every: {saved['attn_every']}}}"])
    with pytest.raises(ValueError, match=rf"depth is {saved['depth'] + 2} but it holds {saved['depth']}") as e:
        resolve_checkpoint_model(job, saved_backbone)
    assert "embed_dim" not in str(e.value)  # only the fields that differ are named


def test_backbone_runtime_field_is_overridden(saved_backbone):
    saved = read_model_config(saved_backbone)
    cfg = resolve_checkpoint_model(load_config(None, [f"model.num_frames={saved['num_frames'] * 2}"]), saved_backbone)
    assert cfg.model.num_frames == saved["num_frames"] * 2 and cfg.model.name == saved["name"]


# --------------------------------------------------------------------------- Video-LLM
def _saved_llm(tmp_path, **config) -> str:
    base = VideoLLMConfig(language_model=str(tmp_path / "lm"), video_encoder="videomap_tiny", **config).to_dict()
    (tmp_path / LLM_CONFIG_FILE).write_text(json.dumps({"config": base, "llm_weights": "source"}))
    return str(tmp_path)


@pytest.fixture
def captured(monkeypatch):
    """The overrides a saved model would be restored with (no model is built)."""
    from videomap.llm import VideoLLM
    from videomap.vl import VideoTextModel

    calls = []

    def record(directory, **kwargs):
        calls.append(kwargs)
        return kwargs

    monkeypatch.setattr(VideoLLM, "from_pretrained", record)
    monkeypatch.setattr(VideoTextModel, "from_pretrained", record)
    return calls


def test_video_llm_architecture_conflict_names_the_field(tmp_path, captured):
    from videomap.tasks.llm import load_video_llm

    directory = _saved_llm(tmp_path, feature_layer=-1, projector="mlp2x_gelu")
    job = load_config(None, ["task=llm", f"llm.init_from={directory}", "llm.video_encoder=videomap_tiny",
                             "llm.feature_layer=-2", "llm.projector=linear"])
    with pytest.raises(ValueError) as e:
        load_video_llm(job, directory)
    assert "llm.feature_layer is -2 but it holds -1" in str(e.value)
    assert "llm.projector is 'linear' but it holds 'mlp2x_gelu'" in str(e.value)
    assert not captured


def test_video_llm_runtime_fields_are_overridden(tmp_path, captured):
    from videomap.tasks.llm import load_video_llm

    directory = _saved_llm(tmp_path, num_frames=8, llm_dtype="float32")
    job = load_config(None, ["task=llm", f"llm.init_from={directory}", "llm.num_frames=4",
                             "llm.llm_dtype=bfloat16", "llm.video_checkpoint=elsewhere.safetensors",
                             "llm.video_encoder=videomap_tiny"])
    assert load_video_llm(job, directory) == {"num_frames": 4, "llm_dtype": "bfloat16"}


def test_video_llm_saved_before_the_rename_still_loads(tmp_path, captured):
    from videomap.tasks.llm import load_video_llm

    config = VideoLLMConfig(language_model=str(tmp_path / "lm"), video_encoder="videomap_tiny").to_dict()
    config["llm"] = config.pop("language_model")  # the key of earlier versions
    (tmp_path / LLM_CONFIG_FILE).write_text(json.dumps({"config": config, "llm_weights": "source"}))
    moved = str(tmp_path / "moved_lm")
    job = load_config(None, ["task=llm", f"llm.language_model={moved}"])
    assert load_video_llm(job, str(tmp_path)) == {"language_model": moved}
    with pytest.raises(ValueError, match="llm.llm was renamed to llm.language_model"):
        load_config(None, ["task=llm", f"llm.llm={moved}"])


# --------------------------------------------------------------------------- video-text model
def _saved_vl(tmp_path, **config) -> str:
    base = VideoTextConfig(text_encoder=str(tmp_path / "bert"), video_encoder="videomap_tiny", **config).to_dict()
    (tmp_path / VL_CONFIG_FILE).write_text(json.dumps({"config": base}))
    return str(tmp_path)


def test_video_text_architecture_conflict_names_the_field(tmp_path, captured):
    from videomap.tasks.vl import load_video_text_model

    directory = _saved_vl(tmp_path, embed_dim=16, fusion_layers=2)
    job = load_config(None, ["task=vl", f"vl.init_from={directory}", "vl.video_encoder=videomap_tiny",
                             "vl.embed_dim=32", "vl.fusion_layers=1"])
    with pytest.raises(ValueError) as e:
        load_video_text_model(job, directory)
    assert "vl.embed_dim is 32 but it holds 16" in str(e.value)
    assert "vl.fusion_layers is 1 but it holds 2" in str(e.value)
    assert not captured


def test_video_text_runtime_fields_are_overridden(tmp_path, captured):
    from videomap.tasks.vl import load_video_text_model

    directory = _saved_vl(tmp_path, max_text_len=32, uta=1.0)
    job = load_config(None, ["task=vl", f"vl.init_from={directory}", "vl.max_text_len=16", "vl.uta=0",
                             "vl.text_encoder=elsewhere", "vl.video_encoder=videomap_tiny"])
    assert load_video_text_model(job, directory) == {"max_text_len": 16, "uta": 0.0, "teacher": True}


def test_a_field_not_declared_runtime_counts_as_architecture():
    """The safe default: a new model field must be listed as runtime before a job may change it on a
    saved model, so it never silently overrides what the weights were trained with."""
    for cls in (VideoLLMConfig, VideoTextConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert names > cls.RUNTIME_FIELDS and names > cls.SOURCE_FIELDS
        assert not cls.RUNTIME_FIELDS & cls.SOURCE_FIELDS
    assert {"embed_dim", "fusion_layers", "video_encoder", "video_overrides"}.isdisjoint(VideoTextConfig.RUNTIME_FIELDS)
    assert {"projector", "feature_layer", "video_encoder"}.isdisjoint(VideoLLMConfig.RUNTIME_FIELDS)


def test_video_text_training_and_evaluation_choices_are_runtime():
    """The released-run options change how a saved model is trained or evaluated (the gradient through
    the VTC gather, which stream UTA aligns, per-frame pooling, the temporal position on images, the
    test geometry), never a saved tensor, so a job may set them on a saved model."""
    assert {"vtc_gather", "uta_student", "keep_temporal", "image_temporal_pos",
            "eval_geometry"} <= VideoTextConfig.RUNTIME_FIELDS


def test_job_sections_take_the_model_fields_and_defaults_from_the_model():
    """A job's llm / vl block is the model's own config: same keys, same defaults, nothing to keep in step."""
    from videomap.config import LlmSection, VlSection

    for section, model_cls, key, source in ((LlmSection, VideoLLMConfig, "llm", "language_model"),
                                            (VlSection, VideoTextConfig, "vl", "text_encoder")):
        block = getattr(load_config(None, [f"{key}.{source}=some/dir"]), key)
        assert isinstance(block, section) and block.model_config() == model_cls(**{source: "some/dir"})
        model_keys = {f.name for f in dataclasses.fields(model_cls)}
        assert model_keys < {f.name for f in dataclasses.fields(section)} and set(block.to_dict()) == model_keys
