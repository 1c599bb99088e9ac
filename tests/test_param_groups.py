"""The optimizer's parameter groups are decided by the models, and pinned.

``data/param_groups_v0.json`` holds, for every parameter, (weight decay, lr scale) as the engine
computed them when it still hard-coded VideoMamba tensor names. The policy now lives in the
models (``no_weight_decay()``, ``_no_weight_decay`` flags, ``lr_layer_id``); these tests prove the
effective groups did not move.
"""

from __future__ import annotations

import json
import os

import pytest

from videomap.engine import param_groups
from videomap.finetune.distill import FeatureDistiller
from videomap.models.registry import MODEL_DEFS
from videomap.pretrain import MaskedPretrainer, PixelTeacher

PINNED = os.path.join(os.path.dirname(__file__), "data", "param_groups_v0.json")


def _rows(model, layer_decay):
    out = {}
    for g in param_groups(model, 0.05, layer_decay):
        for n in g["param_names"]:
            out[n] = [g["weight_decay"], round(g["lr_scale"], 12)]
    return out


def _backbone(name, **kw):
    cls, arch = MODEL_DEFS[name]
    return cls(**{**arch, "img_size": 32, "num_frames": 4, **kw})


@pytest.fixture(scope="module")
def pinned():
    with open(PINNED) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["videomap_tiny", "videomamba_tiny"])
@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_backbone_groups_are_unchanged(pinned, name, layer_decay):
    got = _rows(_backbone(name, num_classes=10), layer_decay)
    assert got == pinned[f"{name}/layer_decay={layer_decay}"]


@pytest.mark.parametrize("objective", ["frame", "video"])
def test_pretrainer_groups_are_unchanged(pinned, objective):
    pre = MaskedPretrainer(_backbone("videomap_tiny", num_classes=0), PixelTeacher(16), objective=objective,
                           decoder_dim=64)
    assert _rows(pre, None) == pinned[f"videomap_tiny+{objective}_pretrainer/layer_decay=None"]


def test_wrappers_answer_for_their_backbone():
    """Layer decay through a wrapper gives the backbone's tensors the backbone's own scales; the
    wrapper's extra modules train at the full rate."""
    enc = _backbone("videomap_tiny", num_classes=0)
    alone = _rows(enc, 0.75)
    pre = _rows(MaskedPretrainer(enc, PixelTeacher(16), objective="frame", decoder_dim=64), 0.75)
    assert {n[len("encoder."):]: v for n, v in pre.items() if n.startswith("encoder.")} == alone
    assert all(v[1] == 1.0 for n, v in pre.items() if n.startswith("decoder."))
    assert pre["decoder.mask_token"][0] == 0.0 and pre["decoder.embed.weight"][0] == 0.05

    student = _backbone("videomap_tiny", num_classes=3)
    teacher = _backbone("videomamba_tiny", num_classes=0, embed_dim=96, depth=2)
    dist = _rows(FeatureDistiller(student, teacher), 0.75)
    assert {n[len("student."):]: v for n, v in dist.items() if n.startswith("student.")} == _rows(student, 0.75)
    assert dist["proj.weight"] == [0.05, 1.0]


def test_engine_names_no_model_tensor():
    import videomap.engine as engine

    src_dir = os.path.dirname(engine.__file__)
    for fname in os.listdir(src_dir):
        if fname.endswith(".py"):
            with open(os.path.join(src_dir, fname)) as f:
                text = f.read()
            for name in ("A_log", "pos_embed", "cls_token", "mask_token"):
                assert name not in text, f"engine/{fname} names the model tensor {name}"
